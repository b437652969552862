"""Checkpoints and resume: an interrupted or killed run continues into the same MLflow run, bit-identical."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from src.config import PROJECT_ROOT, is_system_metric
from src.errors import RunInterrupted, TrackingError
from src.store import client as store_client
from src.tracking import _claim
from src.train import train



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
        _claim(client, run.info.run_id, {})


def _kill_after_epochs(jobs, tmp_path, kill_after):
    """SIGKILL each job's process group once its log shows its epoch done (no handler runs, no checkpoint is
    added), watching all of them at once."""
    deadline, left = time.monotonic() + 600, dict(jobs)
    while left:
        for name, job in list(left.items()):
            epoch_log = tmp_path / name / "train.log"
            if epoch_log.exists() and f"epoch {kill_after[name]}:" in epoch_log.read_text():
                os.killpg(job.pid, signal.SIGKILL)
                assert job.wait(30) == -signal.SIGKILL, f"{name} ended before it was killed"
                del left[name]
            else:
                assert job.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-2000:]
        time.sleep(0.05)


def test_a_tiny_run_killed_or_interrupted_resumes_into_the_same_run_bit_identically(
        make_cfg, store_overrides, higgs_file, tmp_path, tracking_uri, caplog):
    # both loops killed with SIGKILL in processes of their own, and a tape run interrupted here (Ctrl-C) whose newest
    # checkpoint is then damaged; each resumed here. fit and tape are twins: one reference serves all three.
    tiny = ["model=tiny", "reg=l2_dropout", "train.epochs=9", "train.checkpoint_every=1", "data.n_validation=500",
            "data.n_train=6000"]
    kill_after = {f"cut-{loop}": random.Random(loop).randint(2, 4) for loop in ("fit", "tape")}
    jobs = {name: _job(tmp_path, name, f"loop={name[4:]}", *tiny, f"data.path={higgs_file}", "quiet=true",
                       "mlflow.log_models=false", *store_overrides, f"mlflow.experiment_name={name}")
            for name in kill_after}
    _kill_after_epochs(jobs, tmp_path, kill_after)
    whole = train(make_cfg("loop=fit", *tiny, "mlflow.experiment_name=whole"))
    client = MlflowClient(tracking_uri)

    stop_at = random.Random("ctrl-c").randint(2, 4)

    def interrupt(epoch, metrics):  # as a Ctrl-C during the next epoch would, after this one's checkpoint
        if epoch == stop_at:
            raise KeyboardInterrupt("test")

    with pytest.raises(RunInterrupted) as stopped:
        train(make_cfg("loop=tape", *tiny, "mlflow.experiment_name=ctrl-c"), on_epoch_end=[interrupt])
    assert client.get_run(stopped.value.run_id).info.status == "KILLED"
    assert [a.path for a in client.list_artifacts(stopped.value.run_id, "checkpoint")] == [
        "checkpoint/a", "checkpoint/b"]
    assert _damage_newest_slot(client.get_run(stopped.value.run_id)) == (stop_at, stop_at - 1)

    for name, loop in [*((name, name[4:]) for name in jobs), ("ctrl-c", "tape")]:
        resumed = train(make_cfg(f"loop={loop}", *tiny, f"mlflow.experiment_name={name}", "resume=true"))
        run = client.get_run(resumed.run_id)
        assert run.data.tags.get("resumed") == "1" and run.info.status == "FINISHED", name
        assert "error" not in run.data.tags, name
        assert _history(client, resumed.run_id) == _history(client, whole.run_id), name
    assert resumed.run_id == stopped.value.run_id
    assert f"is damaged; resuming from slot {'ab'[(stop_at - 1) % 2]} (after epoch {stop_at - 1})" in caplog.text


def _job(tmp_path, name, *overrides):
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "src.train", *overrides, f"hydra.run.dir={tmp_path}/{name}"],
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_a_run_killed_with_sigkill_at_a_random_epoch_resumes_bit_identically(tmp_path, higgs_file, loop):
    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_location={tmp_path}/art",
             f"data.cache_dir={tmp_path}/cache"]
    common = [f"loop={loop}", "model=large", "reg=l2_dropout", "train.epochs=8", "train.checkpoint_every=1",
              f"data.path={higgs_file}", "data.n_train=9984", "quiet=true", "mlflow.log_models=false", *store]
    whole = _job(tmp_path, "whole", *common, "mlflow.experiment_name=whole")
    assert whole.wait(600) == 0, (tmp_path / "whole.log").read_text()[-2000:]

    _kill_after_epochs({"cut": _job(tmp_path, "cut", *common, "mlflow.experiment_name=cut")}, tmp_path,
                       {"cut": random.Random(loop).randint(2, 5)})

    again = _job(tmp_path, "again", *common, "mlflow.experiment_name=cut", "resume=true")
    assert again.wait(600) == 0, (tmp_path / "again.log").read_text()[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (cut,) = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    (reference,) = client.search_runs([client.get_experiment_by_name("whole").experiment_id])
    assert cut.info.status == "FINISHED" and cut.data.tags["resumed"] == "1"
    assert _history(client, cut.info.run_id) == _history(client, reference.info.run_id)
