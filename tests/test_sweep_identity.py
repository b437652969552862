"""What a sweep is, whatever its folder: concurrent sweeps never share one (or each other's jobs), a resumed sweep
stays one sweep under one parent, and a launcher that cannot start a job is one line before any parent run."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf

from src.core.errors import ConfigError
from src.core.schema import CONFIG_DIR
from src.experiments.launch_checks import check_launcher
from tests.helpers import cli, error_lines, free_port, history, run_module, split_runs

TINY = ["model=tiny", "data.n_validation=500", "data.n_train=1000", "quiet=true", "mlflow.log_models=false",
        "mlflow.system_metrics=false"]


def _store(tmp_path):
    return [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_location={tmp_path}/art"]


def _default_sweep_dir() -> str:
    """conf/config.yaml's hydra.sweep.dir as written (unresolved)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))["hydra"]["sweep"]["dir"]


def _composed(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_a_joblib_pool_of_no_workers_and_a_ray_cluster_that_is_not_there_are_refused(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"^hydra.launcher.n_jobs=0: no worker to run a job"):
        check_launcher(_composed("hydra/launcher=joblib", "hydra.launcher.n_jobs=0"))
    check_launcher(_composed("hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"))
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ConfigError, match=r"^hydra/launcher=ray: no Ray cluster at RAY_ADDRESS=127.0.0.1:\d+ \(.*\); "
                                          r"start one with `ray start --head` .*, or unset RAY_ADDRESS$"):
        check_launcher(_composed("hydra/launcher=ray"))
    monkeypatch.delenv("RAY_ADDRESS")  # `auto`: the cluster `ray start --head` left its address for, in RAY_TMPDIR
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^hydra/launcher=ray: no Ray cluster running on this machine; start one "
                                          r"with `ray start --head` \(then RAY_ADDRESS=[^)]*\)$"):
        check_launcher(_composed("hydra/launcher=ray"))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # a cluster that stopped
    with pytest.raises(ConfigError, match=r"no Ray cluster at \S+/ray/ray_current_cluster=127.0.0.1:\d+ "):
        check_launcher(_composed("hydra/launcher=ray"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=ray"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"]],
                         ids=["ray-without-cluster", "joblib-n_jobs-0"])
def test_a_launcher_that_cannot_start_a_job_is_one_line_and_no_parent_run(tmp_path, launcher):
    server = ["mlflow.tracking_uri=http://127.0.0.1:1", "data.path=/d.csv.gz", f"hydra.sweep.dir={tmp_path}/s"] \
        if "ray" in launcher[0] else [*_store(tmp_path), f"hydra.sweep.dir={tmp_path}/s"]
    proc = run_module("src.train", ["-m", *launcher, "seed=0,1", *server], cwd=tmp_path,
                      env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith(("hydra/launcher=ray: no Ray cluster at RAY_ADDRESS=", "hydra.launcher.n_jobs=0:")), line
    assert not (tmp_path / "s").exists() and split_runs(f"sqlite:///{tmp_path}/mlflow.db") == ([], [])


def test_the_default_folders_are_unique_per_command_and_the_same_for_each_of_its_jobs():
    assert _default_sweep_dir().endswith("${now:%H-%M-%S}-${unique:}")
    first, second = (_composed() for _ in range(2))
    assert first.hydra.sweep.dir != second.hydra.sweep.dir and first.hydra.run.dir != second.hydra.run.dir
    job = OmegaConf.create({"hydra": {"sweep": {"dir": "${unique:}"}}})
    OmegaConf.copy_cache(from_config=first, to_config=job)  # as Hydra's load_sweep_config does for every job
    assert str(first.hydra.sweep.dir).endswith(job.hydra.sweep.dir)


@pytest.mark.slow
def test_two_sweeps_started_at_once_keep_their_own_folders_and_children(tmp_path, higgs_file):
    folder = _default_sweep_dir().replace("${project_root:}", str(tmp_path))
    args = cli("-m", "seed=0,1", "train.epochs=2", f"data.path={higgs_file}", *TINY, *_store(tmp_path),
               f"hydra.sweep.dir={folder}")  # the same command twice, into the default folders' pattern
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    parents, children = split_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(parents) == 2 and len(children) == 4
    folders = {p.data.tags["sweep_dir"] for p in parents}
    assert len(folders) == 2
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(c.data.params["seed"] for c in mine) == ["0", "1"]
        results = [json.loads(p.read_text()) for p in Path(parent.data.tags["sweep_dir"]).glob("*/job_result.json")]
        assert sorted(r["run_id"] for r in results) == sorted(c.info.run_id for c in mine)
    assert all("2 FINISHED" in out for out in outs)


@pytest.mark.slow
def test_a_second_sweep_into_a_folder_a_sweep_is_running_in_is_one_line(tmp_path):
    from src.experiments.sweep import lock_sweep_dir

    held = lock_sweep_dir(tmp_path / "sweep")  # this test process is the running sweep
    try:
        proc = run_module("src.train", ["-m", "seed=0,1", *_store(tmp_path), f"hydra.sweep.dir={tmp_path}/sweep"],
                          cwd=tmp_path)
    finally:
        held.close()
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line == (f"hydra.sweep.dir={tmp_path}/sweep: another sweep (process {os.getpid()} on {os.uname().nodename}) "
                    "is running in this folder; give another one, or leave hydra.sweep.dir unset (its default is "
                    "unique per sweep)")
    assert split_runs(f"sqlite:///{tmp_path}/mlflow.db") == ([], [])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_sweep_killed_mid_job_and_resumed_stays_one_sweep_under_one_parent(tmp_path, higgs_file, signum):
    # kill -9 leaves no interruption checkpoint: one every 2 epochs is what the resumed job continues from
    sweep = ["-m", "seed=0,1,2", "train.epochs=40", "train.checkpoint_every=2", f"data.path={higgs_file}", *TINY,
             *_store(tmp_path)]
    proc = subprocess.Popen(cli(*sweep, f"hydra.sweep.dir={tmp_path}/first"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    epoch_log, deadline = tmp_path / "first" / "1" / "train.log", time.monotonic() + 300
    try:
        while not (epoch_log.exists() and "epoch 3:" in epoch_log.read_text()):  # job 1 is training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.1)
        proc.send_signal(signum)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == (130 if signum == signal.SIGINT else -9), out[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [parent], killed = split_runs(uri)
    stopped = "KILLED" if signum == signal.SIGINT else "RUNNING"  # a process killed -9 ends nothing: left dead
    assert parent.info.status == stopped and sorted(r.info.status for r in killed) == ["FINISHED", stopped]

    # the same command with resume=true, into a folder of its own (the default: a new one)
    resumed = run_module("src.train", [*sweep, "resume=true", f"hydra.sweep.dir={tmp_path}/second"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [again], children = split_runs(uri)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert f"sweep continues under its parent run {parent.info.run_id}" in resumed.stderr
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.run_id for c in killed} <= {c.info.run_id for c in children}  # the stopped job's run continued
    assert f"sweep {parent.info.run_id} FINISHED: 2 FINISHED, 1 SKIPPED" in resumed.stderr
    client = MlflowClient(uri)
    best = {c.info.run_id: min(history(client, c.info.run_id, ["val_binary_crossentropy"])["val_binary_crossentropy"])
            for c in children}  # the best child over every job of the sweep, the skipped one included
    assert again.data.metrics["best_val_binary_crossentropy"] == min(best.values())
    assert again.data.tags["best_run_id"] == min(best, key=best.get)
    assert "dead" not in again.data.tags and "error" not in again.data.tags
