"""Whatever goes wrong, every run ends in a true state and the rest of the sweep carries on."""

import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from src.experiments.train import train
from tests.helpers import all_runs, cli, run_cli, split_runs


@pytest.fixture
def small_slice(higgs_file, store_overrides, tmp_path):
    return [
        f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
        "quiet=true", "mlflow.log_models=false", f"hydra.sweep.dir={tmp_path}/sweep", *store_overrides,
    ]


@pytest.mark.slow  # ~17 s: a two-job sweep in subprocesses
def test_diverging_job_fails_with_nan_tag_and_the_sweep_carries_on(small_slice, tracking_uri, tmp_path):
    proc = run_cli(["-m", "train.learning_rate=1e6,0.001", "model=large", "train.epochs=2", *small_slice], tmp_path)
    assert proc.returncode != 0
    parents, children = split_runs(tracking_uri)
    by_lr = {r.data.params["train.learning_rate"]: r for r in children}
    diverged, healthy = by_lr["1000000.0"], by_lr["0.001"]
    assert diverged.info.status == "FAILED"
    losses = MlflowClient(tracking_uri).get_metric_history(diverged.info.run_id, "loss")
    assert int(diverged.data.tags["nan_at_epoch"]) == max(m.step for m in losses)  # stopped at that epoch
    assert "diverged" in diverged.data.tags["error"]
    assert healthy.info.status == "FINISHED"
    assert len(MlflowClient(tracking_uri).get_metric_history(healthy.info.run_id, "loss")) == 2
    assert parents[0].info.status == "FAILED"
    # The summary names the failed job and its run; the error itself is one line.
    assert "1 FAILED" in proc.stderr and "1 FINISHED" in proc.stderr
    assert diverged.info.run_id in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
            pytest.param(signal.SIGHUP, marks=pytest.mark.slow)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)  # the same handler takes all three (SIGHUP: a closed terminal, a dropped ssh); a subprocess sweep each (~15 s): slow
def test_signal_ends_the_run_and_the_sweep_killed(small_slice, tracking_uri, tmp_path, sig):
    proc = subprocess.Popen(
        cli("-m", "loop=fit,tape", "model=tiny", "train.epochs=100000", *small_slice),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(r.info.status == "RUNNING" and r.data.tags.get("sweep") != "true" for r in all_runs(tracking_uri)):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.5)
        time.sleep(2)  # a few epochs in
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    parents, children = split_runs(tracking_uri)
    assert [r.info.status for r in children] == ["KILLED"]  # the second job never started
    assert parents[0].info.status == "KILLED"
    assert "interrupted" in stderr and "Traceback" not in stderr
    # The store is still readable and the killed run kept its history.
    assert MlflowClient(tracking_uri).get_metric_history(children[0].info.run_id, "loss")


def test_resume_skips_finished_configs_and_reruns_failed_ones(make_cfg, tracking_uri):
    first = train(make_cfg("model=tiny", "train.epochs=1"))
    failed = train(make_cfg("model=large", "train.epochs=1", "train.learning_rate=1e6"))
    assert failed.status == "FAILED" and "diverged" in failed.error and failed.run_id
    runs_before = len(all_runs(tracking_uri))

    again = train(make_cfg("model=tiny", "train.epochs=1", "resume=true"))
    assert again.status == "SKIPPED" and again.run_id == first.run_id
    assert len(all_runs(tracking_uri)) == runs_before

    changed = train(make_cfg("model=tiny", "train.epochs=1", "seed=1", "resume=true"))
    assert changed.status == "FINISHED" and changed.run_id != first.run_id

    again_failed = train(make_cfg("model=large", "train.epochs=1", "train.learning_rate=1e6", "resume=true"))
    assert again_failed.status == "FAILED" and again_failed.run_id != failed.run_id
    assert len(all_runs(tracking_uri)) == runs_before + 2  # the failed config ran again
