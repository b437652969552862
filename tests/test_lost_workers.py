"""Launchers that lose jobs (slow, real processes and real signals): a joblib or submitit_local worker (a search
trial's too) killed from outside fails its own job only; SIGHUP, SIGTERM or SIGINT to a joblib or submitit_local
sweep stops every job process with it."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import all_runs, cli, error_lines


def _sweep(tmp_path, higgs_file, launcher, seeds, epochs):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", *launcher, f"seed={seeds}", "model=tiny", f"train.epochs={epochs}", f"data.path={higgs_file}",
            "data.n_validation=500", "data.n_train=1000", "quiet=true", "mlflow.log_models=false",
            "mlflow.system_metrics=false", f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.Popen(cli(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return uri, proc


def _running_children(uri, proc, n, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        running = [r for r in all_runs(uri) if r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags]
        if len(running) >= n:
            return running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)


def _no_process_left(proc, seconds=30):
    deadline = time.monotonic() + seconds
    while subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "job processes outlived their sweep"
        time.sleep(0.5)


def _children_statuses(uri):
    return sorted(r.info.status for r in all_runs(uri) if r.data.tags.get("sweep") != "true")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, seeds, how", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "0,1,2", "was ended by SIGKILL(-9)"),
    (["hydra/launcher=submitit_local"], "0,1", "ended without a result"),
], ids=["joblib", "submitit_local"])
def test_a_worker_killed_from_outside_fails_its_own_job_and_the_sweep_goes_on(tmp_path, higgs_file, launcher,
                                                                              seeds, how):
    uri, proc = _sweep(tmp_path, higgs_file, launcher, seeds, 30)
    try:
        victim, healthy = _running_children(uri, proc, 2)[:2]
        os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)  # what the out-of-memory killer does
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    runs = {r.info.run_id: r for r in all_runs(uri)}
    lost = runs[victim.info.run_id]
    assert lost.info.status == "FAILED" and f"{how} (killed from outside" in lost.data.tags["error"]
    assert runs[healthy.info.run_id].info.status == "FINISHED"  # the job running beside it went on
    n = len(seeds.split(","))
    assert _children_statuses(uri) == ["FAILED"] + ["FINISHED"] * (n - 1)  # and a job after it ran
    [parent] = [r for r in runs.values() if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FAILED" and f"1 FAILED, {n - 1} FINISHED" in stderr
    [line] = [line for line in error_lines(stderr) if line.startswith("job ") and "from outside" in line]
    assert f"its worker process {victim.data.tags['pid']} {how}" in line and line.endswith("the other jobs go on")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, signum", [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], signal.SIGHUP),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], signal.SIGINT),
    (["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2"], signal.SIGTERM),
    (["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2"], signal.SIGHUP),
], ids=["joblib-sighup", "joblib-sigint", "submitit_local-sigterm", "submitit_local-sighup"])
def test_a_signal_to_a_parallel_sweep_stops_its_job_processes_and_ends_every_run_killed(tmp_path, higgs_file,
                                                                                      launcher, signum):
    uri, proc = _sweep(tmp_path, higgs_file, launcher, "0,1", 100000)
    try:
        _running_children(uri, proc, 2)
        proc.send_signal(signum)  # to the sweep's main process only: its job processes are its to stop
        _, stderr = proc.communicate(timeout=120)
        _no_process_left(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    statuses = sorted((r.data.tags.get("sweep") == "true", r.info.status) for r in all_runs(uri))
    assert statuses == [(False, "KILLED"), (False, "KILLED"), (True, "KILLED")], stderr[-3000:]
    assert "2 KILLED" in stderr


@pytest.mark.slow
def test_a_search_trial_whose_joblib_worker_is_killed_fails_in_the_study_and_the_search_goes_on(tmp_path, higgs_file):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    uri, proc = _sweep(tmp_path, higgs_file, [
        "hydra/launcher=joblib", "hydra/sweeper=optuna", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=s", f"hydra.sweeper.storage={storage}", "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.pruner=null", "reg=l2", "reg.l2=tag(log, interval(1e-5, 1e-2))"], "0", 30)
    try:
        victim, _ = _running_children(uri, proc, 2)
        os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"], stderr[-3000:]  # the next batch still ran
    [failed] = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["run_id"] == victim.info.run_id
    assert "1 of 4 trials failed" in stderr
    assert _children_statuses(uri) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]


@pytest.mark.slow
def test_joblib_workers_of_a_sweep_killed_with_sigkill_stop_themselves_and_end_their_runs_killed(tmp_path, higgs_file):
    from src.tracking.liveness import dead_reason

    uri, proc = _sweep(tmp_path, higgs_file, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "0,1", 100000)
    try:
        _running_children(uri, proc, 2)
        proc.kill()  # the sweep's process can end nothing; its workers must not train on, orphaned
        proc.communicate(timeout=30)
        _no_process_left(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _children_statuses(uri) == ["KILLED", "KILLED"]
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("sweep") == "true"]
    assert dead_reason(parent) is not None  # the next command marks it FAILED (dead)


@pytest.mark.slow
def test_a_joblib_worker_runs_job_after_job_keeping_its_imports_and_compiled_graphs(tmp_path, higgs_file):
    # a worker of its own per job *running at once*, not per job: a fresh process per job paid ~5 s of imports
    # and traced every graph again
    uri, proc = _sweep(tmp_path, higgs_file, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"], "0,1,2", 2)
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    children = [r for r in all_runs(uri) if r.data.tags.get("sweep") != "true"]
    assert len(children) == 3 and len({r.data.tags["pid"] for r in children}) == 1
    logs = [(tmp_path / "sweep" / str(job) / "train.log").read_text() for job in range(3)]
    assert ["the compiled model an earlier job" in log for log in logs] == [False, True, True]
    _no_process_left(proc)
