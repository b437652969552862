"""Checkpoints and resume: an interrupted or killed run continues into the same MLflow run, bit-identical; of two
processes resuming one run at once, one does and the other stops."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from src.core.errors import DataError, RunInterrupted, TrackingError
from src.core.metrics import is_system_metric
from src.core.schema import PROJECT_ROOT
from src.experiments.train import train
from src.tracking.claims import claim_run
from src.tracking.store import client as store_client
from tests.helpers import all_runs, error_lines

# What a job's stderr carries besides its error: MLflow's download bars, TensorFlow's C++ log (its clock as absl
# prints it before initialising, which the helpers' pattern does not take)
CHATTER = re.compile(r"^(Downloading artifacts: |[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")

# `python -m src.train` with a hook that makes two resumers meet where a claim can go wrong: the second one's first
# read of the run waits until the first is about to mark it RUNNING, and the first waits there until the second has
# decided (marked it RUNNING too, or exited). RESUME_RACE_ROOM is a folder the racers share; RESUME_RACE_ROLE is
# first or second.
RACE_HOOK = r"""
import atexit, os, runpy, sys, time
from pathlib import Path
from mlflow import MlflowClient

room, me, role = Path(os.environ["RESUME_RACE_ROOM"]), str(os.getpid()), os.environ["RESUME_RACE_ROLE"]
atexit.register(lambda: (room / f"exited-{me}").touch())

def wait_for_the_other():
    deadline = time.monotonic() + 300
    while not any(p.name.rsplit("-", 1)[1] != me for p in room.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)

get_run, update_run, first_read = MlflowClient.get_run, MlflowClient.update_run, []

def held_get_run(self, run_id):
    if role == "second" and not first_read:
        first_read.append(run_id)
        wait_for_the_other()
    return get_run(self, run_id)

def held_update_run(self, run_id, status=None, name=None):
    if status == "RUNNING" and not (room / f"running-{me}").exists():
        (room / f"running-{me}").touch()
        if role == "first":
            wait_for_the_other()
    return update_run(self, run_id, status=status, name=name)

MlflowClient.get_run, MlflowClient.update_run = held_get_run, held_update_run
runpy.run_module("src.train", run_name="__main__", alter_sys=True)
"""


def _history(client, run_id):
    keys = [k for k in client.get_run(run_id).data.metrics if not is_system_metric(k)]
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys}


def _damage_newest_slot(run):
    """Cut the newest slot's state.npz short, as a job killed while uploading it leaves it."""
    folder = Path(urlparse(run.info.artifact_uri).path) / "checkpoint"
    metas = {slot: json.loads((folder / slot / "state.json").read_text())["epoch"] for slot in ("a", "b")}
    newest = max(metas, key=metas.get)
    npz = folder / newest / "state.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    return metas[newest], metas[min(metas, key=metas.get)]


def test_a_run_another_process_holds_is_not_resumed(tracking_uri, make_cfg):
    client = store_client(tracking_uri)
    experiment = client.create_experiment("held")
    run = client.create_run(experiment)  # RUNNING, as a live job's run is
    with pytest.raises(TrackingError, match=r"is RUNNING in process .*: another process is training or resuming it"):
        claim_run(client, run.info.run_id, {})


@pytest.fixture
def live_process():
    """A process that lives until the test ends: (pid, its start as src.tracking.liveness records it)."""
    from src.tracking.liveness import _process_start

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield sleeper.pid, _process_start(sleeper.pid)
    sleeper.kill()
    sleeper.wait()


def _gone_process():
    """A PID whose process has ended."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.mark.parametrize("holder, void", [
    pytest.param("alive", False, id="alive"),  # a process on this host between its claim and marking the run RUNNING
    pytest.param("gone", True, id="gone"),  # killed in between: its claim is void
    pytest.param("elsewhere, seconds ago", False, id="elsewhere-recent"),
    pytest.param("elsewhere, an hour ago", True, id="elsewhere-old"),  # a claim is taken up in seconds: not this one
])
def test_a_resume_another_process_claimed_first_is_refused_unless_that_process_died(
        tracking_uri, live_process, holder, void):
    client = store_client(tracking_uri)
    run_id = client.create_run(client.create_experiment("held")).info.run_id
    client.set_terminated(run_id, "KILLED")
    pid, start = {"alive": live_process, "gone": (_gone_process(), "x")}.get(holder, (4242, "x"))
    host = socket.gethostname() if holder in ("alive", "gone") else "elsewhere"
    at = time.time() - (3600 if "hour" in holder else 2)
    client.log_param(run_id, "resume.claim.1", f"host={host} pid={pid} start={start} at={at:.3f} id=theirs")
    if not void:
        with pytest.raises(TrackingError, match=rf"^run {run_id} is being resumed by another process "
                                                rf"\(process {pid} on {host}\)$"):
            claim_run(client, run_id, {})
        assert client.get_run(run_id).info.status == "KILLED"
        return
    claim = claim_run(client, run_id, {})
    run = client.get_run(run_id)
    assert run.data.params["resume.claim.1.2"] == claim == run.data.tags["resume_claim"]
    assert run.info.status == "RUNNING" and run.data.tags["resumed"] == "1"


def test_a_process_whose_run_another_process_took_over_stops_and_writes_no_more_to_it(make_cfg, tracking_uri):
    # a process the others took for dead (its host froze past the heartbeat's limit) comes back after another
    # process resumed its run: its next checkpoint finds the other's claim, and it stops at the next epoch's end
    client = MlflowClient(tracking_uri)
    theirs = "host=elsewhere pid=4242 start=x at=0 id=theirs"

    def taken_over(epoch, metrics):
        if epoch == 1:
            run_id = client.search_runs([client.get_experiment_by_name("frozen").experiment_id])[0].info.run_id
            client.set_tag(run_id, "resume_claim", theirs)

    result = train(make_cfg("train.epochs=8", "train.checkpoint_every=1", "mlflow.experiment_name=frozen"),
                   on_epoch_end=[taken_over])
    assert result.status == "FAILED" and result.error == (
        f"run {result.run_id} was resumed by process 4242 on elsewhere meanwhile: this process stops and leaves the "
        "run to it")
    run = client.get_run(result.run_id)
    assert run.info.status == "RUNNING" and "error" not in run.data.tags  # the other process's to end
    assert len(_history(client, result.run_id)["loss"]) < 8


def _kill_after_epochs(jobs, tmp_path, kill_after, signum=signal.SIGKILL, delay=0.0):
    """Send `signum` to each job's process group `delay` s after its log shows its epoch done, watching all of them
    at once. SIGINT (Ctrl-C) and SIGTERM end the job with 130, its checkpoint saved on the way. SIGKILL: no handler
    runs, no checkpoint is added, so it waits for one to be whole too: checkpoints are written by a thread of their
    own, which a busy machine can hold back for a few tiny epochs, and a job killed before its first one is whole
    rightly starts a new run on resume."""
    deadline, left = time.monotonic() + 600, dict(jobs)
    while left:
        for name, job in list(left.items()):
            epoch_log = tmp_path / name / "train.log"
            text = epoch_log.read_text() if epoch_log.exists() else ""
            if f"epoch {kill_after[name]}:" in text and (signum != signal.SIGKILL or "checkpoint after epoch" in text):
                time.sleep(delay)
                os.killpg(job.pid, signum)
                assert job.wait(60) == (-signum if signum == signal.SIGKILL else 130), _output(tmp_path, name)
                del left[name]
            else:
                assert job.poll() is None and time.monotonic() < deadline, _output(tmp_path, name)
        time.sleep(0.02)


def _output(tmp_path, name):
    """The end of a job's stdout and stderr, for an assertion's message."""
    return "\n".join((tmp_path / f"{name}.{kind}").read_text()[-2000:] for kind in ("log", "err"))


def _epochs_done(tmp_path, name):
    """The epochs a job's log says it finished."""
    lines = (tmp_path / name / "train.log").read_text().splitlines()
    return [int(line.split("epoch ")[1].split(":")[0]) for line in lines if "[src.epochs]" in line]


@pytest.mark.parametrize("loop", ["tape", pytest.param("fit", marks=pytest.mark.slow)])
def test_a_tiny_run_killed_or_interrupted_resumes_into_the_same_run_bit_identically(
        make_cfg, store_overrides, higgs_file, tmp_path, tracking_uri, caplog, loop):
    # a run killed with SIGKILL in a process of its own, and one interrupted here at an epoch's end (a Ctrl-C that
    # a callback swallowed) whose newest checkpoint is then damaged; each resumed here. Signals that land mid-epoch
    # in a process of its own: test_a_signal_mid_epoch_then_two_resumers_at_once_leave_one_run_bit_identical.
    tiny = [f"loop={loop}", "model=tiny", "reg=l2_dropout", "train.epochs=9", "train.checkpoint_every=1",
            "data.n_validation=500", "data.n_train=6000"]
    _kill_after_epochs({"cut": _job(tmp_path, "cut", *tiny, f"data.path={higgs_file}", "quiet=true",
                                    "mlflow.log_models=false", *store_overrides, "mlflow.experiment_name=cut")},
                       tmp_path, {"cut": random.Random(loop).randint(2, 4)})
    whole = train(make_cfg(*tiny, "mlflow.experiment_name=whole"))
    client = MlflowClient(tracking_uri)

    stop_at = random.Random("ctrl-c").randint(2, 4)

    def interrupt(epoch, metrics):  # as a Ctrl-C during the next epoch would, after this one's checkpoint
        if epoch == stop_at:
            raise KeyboardInterrupt("test")

    with pytest.raises(RunInterrupted) as stopped:
        train(make_cfg(*tiny, "mlflow.experiment_name=ctrl-c"), on_epoch_end=[interrupt])
    assert client.get_run(stopped.value.run_id).info.status == "KILLED"
    assert [a.path for a in client.list_artifacts(stopped.value.run_id, "checkpoint")] == [
        "checkpoint/a", "checkpoint/b"]
    assert _damage_newest_slot(client.get_run(stopped.value.run_id)) == (stop_at, stop_at - 1)

    for name in ("cut", "ctrl-c"):
        resumed = train(make_cfg(*tiny, f"mlflow.experiment_name={name}", "resume=true"))
        run = client.get_run(resumed.run_id)
        assert run.data.tags.get("resumed") == "1" and run.info.status == "FINISHED", name
        assert "error" not in run.data.tags, name
        assert _history(client, resumed.run_id) == _history(client, whole.run_id), name
    assert resumed.run_id == stopped.value.run_id
    assert f"is damaged; resuming from slot {'ab'[(stop_at - 1) % 2]} (after epoch {stop_at - 1})" in caplog.text


def _job(tmp_path, name, *overrides, race=None):
    """`python -m src.train OVERRIDES` in a session of its own (stdout in NAME.log, stderr in NAME.err); `race`:
    (room, role) runs it under RACE_HOOK."""
    command = ["-c", RACE_HOOK] if race else ["-m", "src.train"]
    env = {**os.environ, **({"RESUME_RACE_ROOM": str(race[0]), "RESUME_RACE_ROLE": race[1]} if race else {})}
    with open(tmp_path / f"{name}.log", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen([sys.executable, *command, *overrides, f"hydra.run.dir={tmp_path}/{name}"],
                                cwd=PROJECT_ROOT, stdout=out, stderr=err, env=env, start_new_session=True)


@pytest.mark.parametrize("loop, reg, signum", [
    pytest.param("fit", "none", signal.SIGINT, marks=pytest.mark.slow),  # 21-37 s each: the default suite's
    pytest.param("tape", "none", signal.SIGTERM, marks=pytest.mark.slow),  # budget keeps the claim's unit tests
    pytest.param("fit", "dropout", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("tape", "dropout", signal.SIGINT, marks=pytest.mark.slow),
], ids=lambda value: getattr(value, "name", value))
def test_a_signal_mid_epoch_then_two_resumers_at_once_leave_one_run_bit_identical(
        make_cfg, store_overrides, higgs_file, tmp_path, tracking_uri, loop, reg, signum):
    # a job stopped by Ctrl-C or SIGTERM in the middle of its last epoch (its only checkpoint is the one the signal
    # makes it save), resumed by two processes started at once (a job requeued twice): one continues the run to its
    # end, bit-identical to a run never stopped; the other stops
    config = [f"loop={loop}", f"reg={reg}", "model=tiny", "train.epochs=3", "train.checkpoint_every=0",
              "train.batch_size=4", "data.n_train=6000", "data.n_validation=500",  # 1,500 steps: ~0.4 s epochs
              "mlflow.system_metrics=false"]
    job = [*config, f"data.path={higgs_file}", "quiet=true", "mlflow.log_models=false", *store_overrides,
           "mlflow.experiment_name=cut"]
    _kill_after_epochs({"cut": _job(tmp_path, "cut", *job)}, tmp_path, {"cut": 1}, signum, delay=0.1)
    assert _epochs_done(tmp_path, "cut") == [0, 1], "the signal came after the last epoch had ended"
    client = MlflowClient(tracking_uri)
    (cut,) = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    assert cut.info.status == "KILLED" and cut.data.tags["error"] == "interrupted (SIGINT/SIGTERM)"

    room = tmp_path / "room"
    room.mkdir()
    racers = {role: _job(tmp_path, role, *job, "resume=true", race=(room, role)) for role in ("first", "second")}
    whole = train(make_cfg(*config, "mlflow.experiment_name=whole"))  # while they start up
    codes = {role: racer.wait(600) for role, racer in racers.items()}
    # the hook lets the first take the run before the second reads it: the second must see it is taken
    assert codes == {"first": 0, "second": 1}, "\n".join(_output(tmp_path, role) for role in racers)
    assert [line for line in error_lines((tmp_path / "second.err").read_text()) if not CHATTER.match(line)] == [
        f"run {cut.info.run_id} is being resumed by another process (process {racers['first'].pid} on "
        f"{socket.gethostname()})"]
    resumed_from = f"continues run {cut.info.run_id} from its checkpoint after epoch 1"
    assert resumed_from in (tmp_path / "first" / "train.log").read_text()
    assert _epochs_done(tmp_path, "first") == [2] and _epochs_done(tmp_path, "second") == []
    (run,) = client.search_runs([cut.info.experiment_id])
    assert run.info.run_id == cut.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "1" and f"pid={racers['first'].pid} " in run.data.tags["resume_claim"]
    assert "error" not in run.data.tags
    assert _history(client, run.info.run_id) == _history(client, whole.run_id)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_a_run_killed_with_sigkill_at_a_random_epoch_resumes_bit_identically(tmp_path, higgs_file, loop):
    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_location={tmp_path}/art",
             f"data.cache_dir={tmp_path}/cache"]
    common = [f"loop={loop}", "model=large", "reg=l2_dropout", "train.epochs=8", "train.checkpoint_every=1",
              f"data.path={higgs_file}", "data.n_train=9984", "quiet=true", "mlflow.log_models=false", *store]
    whole = _job(tmp_path, "whole", *common, "mlflow.experiment_name=whole")
    assert whole.wait(600) == 0, _output(tmp_path, "whole")

    _kill_after_epochs({"cut": _job(tmp_path, "cut", *common, "mlflow.experiment_name=cut")}, tmp_path,
                       {"cut": random.Random(loop).randint(2, 5)})

    again = _job(tmp_path, "again", *common, "mlflow.experiment_name=cut", "resume=true")
    assert again.wait(600) == 0, _output(tmp_path, "again")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (cut,) = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    (reference,) = client.search_runs([client.get_experiment_by_name("whole").experiment_id])
    assert cut.info.status == "FINISHED" and cut.data.tags["resumed"] == "1"
    assert _history(client, cut.info.run_id) == _history(client, reference.info.run_id)


def test_resume_after_the_data_changed_is_refused_instead_of_splicing(make_cfg, tmp_path, tracking_uri):
    """A run continued on other rows would hold a history spliced from two data sets under the first one's digest."""
    from tests.conftest import write_uci_file

    data = write_uci_file(tmp_path / "rows.csv.gz", 3000, seed=1)
    tiny = ["model=tiny", f"data.path={data}", "train.epochs=4", "train.checkpoint_every=1"]

    def interrupt(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt("test")

    with pytest.raises(RunInterrupted) as stopped:
        train(make_cfg(*tiny), on_epoch_end=[interrupt])
    write_uci_file(data, 3000, seed=2)  # the same file name, other rows
    with pytest.raises(DataError, match=rf"^resume: the data changed since run {stopped.value.run_id} trained on it "
                                        r"\(data_sha256 \w{12}\.\.\. then, \w{12}\.\.\. now\); restore the data"):
        train(make_cfg(*tiny, "resume=true"))
    client = MlflowClient(tracking_uri)
    assert client.get_run(stopped.value.run_id).info.status == "KILLED" and len(all_runs(tracking_uri)) == 1
    write_uci_file(data, 3000, seed=1)  # restored: the same rows, so the run goes on
    assert train(make_cfg(*tiny, "resume=true")).run_id == stopped.value.run_id


def test_a_checkpoint_of_other_shapes_is_one_line_naming_both(make_cfg, tracking_uri, monkeypatch):
    """The builder changed since the run stopped (the same config, so the same digest): resume names the variable
    and its two shapes instead of Keras's multi-line ValueError dumping the values."""
    import functools

    import src.training.models as models

    tiny = ["train.epochs=3", "train.checkpoint_every=1"]

    def interrupt(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt("test")

    with pytest.raises(RunInterrupted) as stopped:
        train(make_cfg(*tiny), on_epoch_end=[interrupt])
    dense = models.dense

    @functools.wraps(dense)
    def wider(*args, hidden_units, **kwargs):  # the user's builder edited since: twice the units
        return dense(*args, hidden_units=[2 * u for u in hidden_units], **kwargs)

    monkeypatch.setattr(models, "dense", wider)
    result = train(make_cfg(*tiny, "resume=true"))
    run_id = stopped.value.run_id
    assert result.status == "FAILED" and result.run_id == run_id
    assert re.fullmatch(rf"resume: run {run_id}'s checkpoint does not fit the model: model variable \S+/kernel is "
                        r"\(28, 16\) in it, \(28, 32\) in the model \(the model's builder or option changed since; "
                        r"start a new run with resume=false\)", result.error), result.error
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FAILED"
