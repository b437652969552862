"""Parallel sweeps (Hydra's joblib launcher) against one SQLite store, and a real MLflow tracking server."""


import pytest
from mlflow import MlflowClient

from tests.helpers import run_cli, split_runs

EPOCH_KEYS = ("loss", "val_loss", "accuracy", "val_accuracy", "reg_loss")


def _sweep_args(higgs_file, tmp_path, store):
    return [
        f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000", "model=tiny",
        "quiet=true", f"hydra.sweep.dir={tmp_path}/sweep", *store,
    ]


def _assert_complete(tracking_uri, n_children, epochs):
    parents, children = split_runs(tracking_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == n_children
    client = MlflowClient(tracking_uri)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(epochs))
    return children


@pytest.mark.slow  # the 8-job test below covers the same ground at scale
def test_joblib_launcher_runs_jobs_in_parallel_processes(higgs_file, tmp_path, store_overrides, tracking_uri):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loop=fit,tape", "train.epochs=3"]
    proc = run_cli([*args, *_sweep_args(higgs_file, tmp_path, store_overrides)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = _assert_complete(tracking_uri, 2, 3)
    # Each of the 2 parallel jobs gets its share of the cores, not all of them.
    cores = len(__import__("os").sched_getaffinity(0))
    assert {r.data.params["train.threads"] for r in children} == {str(max(1, cores // 2))}


@pytest.mark.slow
def test_eight_parallel_jobs_finish_with_complete_histories(higgs_file, tmp_path, store_overrides, tracking_uri):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", "seed=0,1,2,3", "loop=fit,tape", "train.epochs=5"]
    proc = run_cli([*args, *_sweep_args(higgs_file, tmp_path, store_overrides)], tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_complete(tracking_uri, 8, 5)


@pytest.mark.slow  # about a minute: the server's own start-up is most of it
def test_sweep_against_a_real_tracking_server(higgs_file, tmp_path, mlflow_server):
    # credentials in the URI, as a server behind an authenticating proxy needs: they work, and are written nowhere
    secret = "s3cret-" + "y" * 8
    uri = mlflow_server.url.replace("http://", f"http://alice:{secret}@")
    store = [f"mlflow.tracking_uri={uri}", f"data.cache_dir={tmp_path}/cache"]
    proc = run_cli(["-m", "reg=none,l2", "train.epochs=2", *_sweep_args(higgs_file, tmp_path, store)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = _assert_complete(mlflow_server.url, 2, 2)
    client = MlflowClient(mlflow_server.url)
    assert "config.yaml" in {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert secret not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
