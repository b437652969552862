"""Launchers beyond one machine: the guard rails a remote launch passes before any job starts, SLURM's defaults,
and (slow) a real `submitit_local` sweep with a cap on the jobs running at once, and one whose job is preempted,
requeued by submitit and resumed."""

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from src.core.errors import ConfigError
from src.core.metrics import is_system_metric
from src.core.schema import CONFIG_DIR
from src.experiments.train import train
from src.experiments.sweep import check_remote_launch
from src.tracking.store import is_sweep_parent
from tests.helpers import cli, error_lines, run_module, split_runs

SERVER = "mlflow.tracking_uri=http://127.0.0.1:5000"
ABSOLUTE = ["data.path=/data/HIGGS.csv.gz", "hydra.sweep.dir=/shared/multirun/x"]


def _composed(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("overrides, message", [
    ([], r"^mlflow.tracking_uri=sqlite:///\S+: hydra/launcher=SlurmLauncher runs jobs on other machines, which "
         r"cannot reach this machine's store; start a tracking server \(`make server`\)"),
    ([SERVER, "data.path=HIGGS.csv.gz", "hydra.sweep.dir=/x"], r"^data.path=HIGGS.csv.gz: .* give an absolute path"),
    ([SERVER, "data.path=/d", "hydra.sweep.dir=multirun/x"], r"^hydra.sweep.dir=multirun/x: .* give an absolute path"),
    ([SERVER, *ABSOLUTE, "hydra/sweeper=optuna"], r"^hydra.sweeper.storage=sqlite:///\S+optuna.db: .* cannot share "
                                                  r"a SQLite file; use a database server"),
])
def test_a_remote_launch_that_could_not_reach_the_store_or_the_files_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_remote_launch(_composed("hydra/launcher=submitit_slurm", *overrides))


def test_a_remote_launch_with_a_server_and_absolute_paths_passes_and_local_launchers_are_not_checked():
    check_remote_launch(_composed("hydra/launcher=submitit_slurm", SERVER, *ABSOLUTE))
    check_remote_launch(_composed("hydra/launcher=submitit_slurm", SERVER, *ABSOLUTE, "hydra/sweeper=optuna",
                                  "hydra.sweeper.storage=postgresql+psycopg2://u@db/optuna"))
    for launcher in ("basic", "joblib", "submitit_local"):  # jobs on this machine reach its files and store
        check_remote_launch(_composed(f"hydra/launcher={launcher}", "data.path=relative.csv.gz"))


def test_the_slurm_launcher_has_the_projects_defaults_over_submitits():
    launcher = _composed("hydra/launcher=submitit_slurm").hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.max_num_timeout) == (240, 4, 3)


@pytest.mark.slow
def test_a_refused_remote_launch_is_one_line_and_creates_nothing(tmp_path):
    proc = run_module("src.train", ["-m", "hydra/launcher=submitit_slurm", "reg=none,l2", f"hydra.sweep.dir={tmp_path}/sweep",
                                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith("mlflow.tracking_uri=sqlite:///") and "`make server`" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_every_job_in_its_own_process_at_most_two_at_once(tmp_path, higgs_file):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_module("src.train", [
        "-m", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2", "reg=none,l2", "loop=fit,tape",
        "model=tiny", "train.epochs=2", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
        "quiet=true", "mlflow.log_models=false", f"hydra.sweep.dir={tmp_path}/sweep", f"mlflow.tracking_uri={uri}",
        f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [parent], children = split_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["pid"] for r in children}) == 4  # a fresh process per job: no state shared
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    for start, _ in spans:  # never more than two running at once
        assert sum(s <= start < e for s, e in spans) <= 2
    assert "4 FINISHED" in proc.stderr
    client = MlflowClient(uri)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in children)


def _epoch_histories(client, run_id):
    """Every epoch metric as (step, value) pairs in step order: a step logged twice shows."""
    keys = [k for k in client.get_run(run_id).data.metrics if not is_system_metric(k)]
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys}


def _job_runs(client, experiment_name):
    """The runs of an experiment but its sweep's parent."""
    runs = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    return [r for r in runs if not is_sweep_parent(r)]


@pytest.mark.slow
def test_a_submitit_job_preempted_mid_training_ends_killed_is_requeued_and_resumes_its_run_bit_identically(
        tmp_path, higgs_file, make_cfg, store_overrides, tracking_uri):
    import psutil

    # SLURM signals a job step with USR2 (--signal=USR2@N, or at preemption): sent here to submitit_local's job.
    # train.checkpoint_every=0: the only checkpoint is the one the interrupt saves
    tiny = ["model=tiny", "reg=l2_dropout", "train.epochs=30", "train.batch_size=100", "train.checkpoint_every=0",
            "data.n_validation=500", "data.n_train=6000"]
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen(cli(
        "-m", "hydra/launcher=submitit_local", *tiny, "resume=true", f"data.path={higgs_file}", "quiet=true",
        "mlflow.log_models=false", *store_overrides, "mlflow.experiment_name=preempted",
        f"hydra.sweep.dir={tmp_path}/sweep"), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        epoch_log, deadline = tmp_path / "sweep" / "0" / "train.log", time.monotonic() + 300

        def wait_for(text):
            while not (epoch_log.exists() and text in epoch_log.read_text()):
                assert sweep.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.02)

        wait_for("")  # the job's log: its process is running
        [job] = [p for p in psutil.Process(sweep.pid).children(recursive=True)
                 if "submitit.core._submit" in " ".join(p.cmdline())]
        controller = job.parent()  # submitit_local's stand-in for SLURM: it starts the job again when it is requeued
        wait_for("epoch 3:")
        controller.suspend()  # holds the requeue until the stopped run has been looked at
        job.send_signal(signal.SIGUSR2)
        while job.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the preempted job did not end"
            time.sleep(0.02)
        client = MlflowClient(tracking_uri)
        [run] = _job_runs(client, "preempted")
        assert run.info.status == "KILLED" and run.data.tags["pid"] == str(job.pid)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/a"]
        stopped_after = json.loads((Path(urlparse(run.info.artifact_uri).path) / "checkpoint/a/state.json")
                                   .read_text())["epoch"]
        assert 3 <= stopped_after < 29  # mid-training
        controller.resume()
        assert sweep.wait(300) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
        log.close()

    # submitit requeued the same job (same overrides, resume=true): the same run continued from its checkpoint
    assert any("Requeued job" in f.read_text() for f in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert f"continues run {run.info.run_id} from its checkpoint after epoch {stopped_after}" in epoch_log.read_text()
    [resumed] = _job_runs(client, "preempted")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed"] == "1" and resumed.data.tags["pid"] != str(job.pid)
    assert "error" not in resumed.data.tags
    whole = train(make_cfg(*tiny, "mlflow.experiment_name=whole"))
    assert _epoch_histories(client, resumed.info.run_id) == _epoch_histories(client, whole.run_id)


def test_a_job_on_a_machine_without_the_sweep_folder_finds_its_parent_through_the_store(tmp_path, tracking_uri):
    from src.experiments.sweep_parent import create_parent_run, find_parent_run_id
    from src.tracking.store import experiment_id

    folder = tmp_path / "multirun" / "x"  # never created here, as on another machine
    exp = experiment_id(tracking_uri, "e", str(tmp_path / "artifacts"))
    create_parent_run(tracking_uri, exp, name="sweep old", overrides=[], tags={"sweep_dir": str(tmp_path / "other")})
    parent = create_parent_run(tracking_uri, exp, name="sweep a", overrides=[], tags={"sweep_dir": str(folder)})
    assert find_parent_run_id(folder, tracking_uri, "e") == parent
    assert find_parent_run_id(tmp_path / "elsewhere", tracking_uri, "e") is None


@pytest.fixture
def ray_cluster(tmp_path):
    """A real local Ray cluster (`ray start --head` on 127.0.0.1, a free port), stopped after the test; its address."""
    import shutil
    import subprocess
    import sys

    from tests.helpers import free_port

    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray is None:
        pytest.skip("the `ray` command is not installed next to this Python")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    started = subprocess.run(
        [ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_ray_sweep_runs_each_job_in_a_fresh_worker_under_one_parent_and_reports_failures_alike(
        tmp_path, higgs_file, ray_cluster, mlflow_server):
    proc = run_module("src.train", [
        "-m", "hydra/launcher=ray", "reg=none,l2", "train.learning_rate=1e30,0.001", "model=tiny", "train.epochs=2",
        f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000", "quiet=true",
        "mlflow.log_models=false", f"hydra.sweep.dir={tmp_path}/sweep", f"mlflow.tracking_uri={mlflow_server.url}",
    ], cwd=tmp_path, env={"RAY_ADDRESS": ray_cluster, "RAY_USAGE_STATS_ENABLED": "0"})
    # at learning rate 1e30 two jobs diverge in their first epoch, as they would with any launcher
    assert proc.returncode == 1, proc.stderr[-3000:]
    [parent], children = split_runs(mlflow_server.url)
    assert parent.info.status == "FAILED" and len(children) == 4, proc.stderr[-3000:]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    status = sorted((r.data.params["train.learning_rate"], r.info.status) for r in children)
    assert status == [("0.001", "FINISHED")] * 2 + [("1e+30", "FAILED")] * 2, status
    assert all("diverged" in r.data.tags["error"] for r in children if r.info.status == "FAILED")
    assert len({r.data.tags["pid"] for r in children}) == 4  # max_calls=1: a fresh worker process per job
    assert "2 FAILED, 2 FINISHED" in proc.stderr and "training diverged" in proc.stderr


def test_a_multi_worker_sweep_is_refused_before_anything_starts(tmp_path):
    proc = run_module("src.train", ["-m", "reg=none,l2", "loop=tape", "train.strategy=multi_worker",
                                    f"hydra.sweep.dir={tmp_path}/s", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"],
                      cwd=tmp_path)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith("train.strategy=multi_worker: one run across the workers, not a sweep")
    assert not (tmp_path / "m.db").exists()


@pytest.mark.slow
def test_ctrl_c_on_a_ray_sweep_ends_its_running_job_and_the_sweep_killed(tmp_path, higgs_file, ray_cluster,
                                                                          mlflow_server):
    import sys

    sweep = subprocess.Popen(
        [sys.executable, "-m", "src.train", "-m", "hydra/launcher=ray", "reg=none,l2", "model=large", "train.epochs=100",
         f"data.path={higgs_file}", "data.n_train=9984", "quiet=true", "mlflow.log_models=false",
         f"hydra.sweep.dir={tmp_path}/sweep", f"mlflow.tracking_uri={mlflow_server.url}"],
        cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": ray_cluster, "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    epoch_log, deadline = tmp_path / "sweep" / "0" / "train.log", time.monotonic() + 300
    try:
        while not (epoch_log.exists() and "epoch 3:" in epoch_log.read_text()):  # the first job is training
            assert sweep.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        sweep.send_signal(signal.SIGINT)
        out, _ = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert sweep.returncode == 130, out[-3000:]
    [parent], [job] = split_runs(mlflow_server.url)  # the second job never started
    assert parent.info.status == job.info.status == "KILLED", out[-3000:]
    assert "1 KILLED" in out
    import psutil

    worker, until = int(job.data.tags["pid"]), time.monotonic() + 30
    while psutil.pid_exists(worker):  # Ray ends the job's worker with its driver: nothing trains on
        assert time.monotonic() < until, "the job's Ray worker outlived its sweep"
        time.sleep(0.2)
