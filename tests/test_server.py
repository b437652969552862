"""A tracking server for several machines: a real PostgreSQL (started here), `mlflow server` on it, a parallel sweep
and a search through it with nothing lost, and the default store's runs moved into it (their logged models with them)
and reproduced and scored there."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from src.bench.store import measure
from src.core.metrics import EPOCH_METRICS
from src.ops.migrate import MIGRATED_FROM_TAG, migrate
from src.tracking.store import PARENT_TAG
from tests.conftest import serve_mlflow
from tests.helpers import history, run_module, split_runs

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_server(tmp_path, postgres):
    """`mlflow server` over the PostgreSQL cluster's `mlflow` database."""
    yield from serve_mlflow(tmp_path, postgres.uri("mlflow"))


def _tiny(higgs_file, tmp_path, uri, *extra, log_models=False):
    return ["model=tiny", "train.epochs=2", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
            "quiet=true", f"mlflow.log_models={str(log_models).lower()}", f"mlflow.tracking_uri={uri}",
            f"data.cache_dir={tmp_path}/cache", *extra]


def test_a_parallel_sweep_and_a_search_through_a_server_on_postgresql_lose_nothing(tmp_path, higgs_file, postgres,
                                                                                    pg_server):
    proc = run_module("src.train", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                    "reg=none,l2,dropout,l2_dropout", "loop=fit,tape", f"hydra.sweep.dir={tmp_path}/s",
                                    *_tiny(higgs_file, tmp_path, pg_server.url)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(pg_server.url)
    [parent], children = split_runs(pg_server.url)
    assert parent.info.status == "FINISHED" and len(children) == 8
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[PARENT_TAG] == parent.info.run_id
        assert all(len(v) == 2 for v in history(client, child.info.run_id, EPOCH_METRICS).values())
        assert [a.path for a in client.list_artifacts(child.info.run_id, "curves")]  # artifacts through the server

    child = children[0].info.run_id
    reproduced = run_module("src.reproduce", [child, "--tracking-uri", pg_server.url, "--quiet"], cwd=tmp_path)
    assert reproduced.returncode == 0 and ": identical:" in reproduced.stdout, reproduced.stderr[-2000:]
    compared = run_module("src.compare", ["--tracking-uri", pg_server.url, "--out", str(tmp_path / "cmp")], cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert (tmp_path / "cmp" / "overlay_val_binary_crossentropy.png").stat().st_size > 1000

    # a search whose study lives in PostgreSQL too, as workers on several machines would share it
    searched = run_module("src.train", [
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=pg", "reg=l2",
        "reg.l2=tag(log, interval(1e-5, 1e-2))", f"hydra.sweeper.storage={postgres.uri('optuna')}",
        f"hydra.sweep.dir={tmp_path}/search", *_tiny(higgs_file, tmp_path, pg_server.url)], cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr[-3000:]
    import optuna

    assert len(optuna.load_study(study_name="pg", storage=postgres.uri("optuna")).trials) == 2


def test_the_default_stores_runs_move_into_the_server_whole_and_reproduce_there(tmp_path, higgs_file, pg_server):
    local = f"sqlite:///{tmp_path}/local/mlflow.db"
    proc = run_module("src.train", ["-m", "reg=none,l2", f"hydra.sweep.dir={tmp_path}/s",
                                    f"mlflow.artifact_location={tmp_path}/local/artifacts",
                                    *_tiny(higgs_file, tmp_path, local, log_models=True)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copied = migrate(local, pg_server.url)
    assert len(copied) == 3 and migrate(local, pg_server.url) == {}  # again: nothing new to copy

    source, destination = MlflowClient(local), MlflowClient(pg_server.url)
    [old_parent], old_children = split_runs(local)
    [new_parent], new_children = split_runs(pg_server.url)
    assert new_parent.data.tags[MIGRATED_FROM_TAG] == old_parent.info.run_id
    for old in old_children:
        new = destination.get_run(copied[old.info.run_id])
        assert new.data.tags[PARENT_TAG] == new_parent.info.run_id  # children point at the parent's copy
        assert (new.info.run_name, new.info.status, new.data.params) == (old.info.run_name, old.info.status,
                                                                         old.data.params)
        assert (new.info.start_time, new.info.end_time) == (old.info.start_time, old.info.end_time)
        keys = list(EPOCH_METRICS)
        assert history(destination, new.info.run_id, keys) == history(source, old.info.run_id, keys)
        assert {a.path for a in destination.list_artifacts(new.info.run_id)} == \
            {a.path for a in source.list_artifacts(old.info.run_id)}
        assert len(new.inputs.dataset_inputs) == len(old.inputs.dataset_inputs) == 2
        # its logged models (outside the run's artifacts in MLflow 3), linked to the copy as its outputs
        assert len(new.outputs.model_outputs) == len(old.outputs.model_outputs) == 2
    assert not new_parent.outputs.model_outputs

    old = old_children[0].info.run_id
    copy = copied[old]
    reproduced = run_module("src.reproduce", [copy, "--tracking-uri", pg_server.url, "--quiet"], cwd=tmp_path)
    assert reproduced.returncode == 0 and ": identical:" in reproduced.stdout, reproduced.stderr[-2000:]

    # the copy's models load by its run ID, through the server, and predict exactly as the originals
    rows = np.random.default_rng(0).normal(size=(64, 28)).astype(np.float32)
    for name in (old_children[0].info.run_name, f"{old_children[0].info.run_name}-best"):  # named after the run
        mlflow.set_tracking_uri(local)
        expected = np.asarray(mlflow.pyfunc.load_model(f"runs:/{old}/{name}").predict(rows))
        mlflow.set_tracking_uri(pg_server.url)
        assert np.array_equal(np.asarray(mlflow.pyfunc.load_model(f"runs:/{copy}/{name}").predict(rows)), expected)
    scored = [run_module("src.evaluate", [run, "--tracking-uri", uri, "--no-log"], cwd=tmp_path)
              for run, uri in ((old, local), (copy, pg_server.url))]
    assert all(proc.returncode == 0 for proc in scored), scored[-1].stderr[-2000:]
    assert scored[0].stdout.splitlines()[1:] == scored[1].stdout.splitlines()[1:]  # the same scores


def test_the_store_bench_measures_both_stores(tmp_path, pg_server):
    for uri in (f"sqlite:///{tmp_path}/bench.db", pg_server.url):
        figures = measure(uri, calls=10, clients=2)
        assert figures["calls"] == 18 and 0 < figures["median_ms"] <= figures["p90_ms"]
