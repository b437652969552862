"""One real `python -m src.train -m reg=none,l2 loop=fit,tape` sweep, checked by what train and compare promise."""

import fcntl
import json
import os
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from src.analysis.compare import main
from src.core.metrics import EPOCH_METRICS
from src.tracking.store import PARENT_TAG
from tests.helpers import expected_stats, history, run_module, split_runs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, higgs_file):
    """The article's 2x2 sweep on the tiny model, 2 epochs, in its own store; (tracking URI, folder, process).

    Run once per test session: pytest-xdist workers that get these tests share it through a lock (worksteal would
    otherwise run it on each worker, ~22 s apiece)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, above the workers' own
    folder = shared / "cli-sweep"
    with open(shared / "cli-sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "proc.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            proc = run_module("src.train", [
                "-m", "reg=none,l2", "loop=fit,tape", "model=tiny", "train.epochs=2", f"data.path={higgs_file}",
                "data.n_validation=500", "data.n_train=1000", "quiet=true", "mlflow.log_models=false",
                f"hydra.sweep.dir={folder}/sweep", f"mlflow.tracking_uri=sqlite:///{folder}/mlruns/mlflow.db",
                f"mlflow.artifact_location={folder}/mlruns/artifacts",
            ], cwd=folder)
            (folder / "proc.json").write_text(json.dumps({"returncode": proc.returncode, "stderr": proc.stderr}))
    proc = SimpleNamespace(**json.loads((folder / "proc.json").read_text()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return f"sqlite:///{folder}/mlruns/mlflow.db", folder, proc


def test_a_sweep_is_one_parent_with_a_finished_child_per_combination(sweep):
    uri, _, proc = sweep
    [parent], children = split_runs(uri)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["fit-l2-tiny", "fit-none-tiny", "tape-l2-tiny", "tape-none-tiny"]
    client = MlflowClient(uri)
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[PARENT_TAG] == parent.info.run_id
        for key, values in history(client, child.info.run_id, EPOCH_METRICS).items():
            assert len(values) == 2, key
    assert "4 FINISHED" in proc.stderr


def test_a_sweep_parent_explains_itself_and_holds_the_comparison_when_the_sweep_ends(sweep):
    uri, folder, _ = sweep
    [parent], children = split_runs(uri)
    client = MlflowClient(uri)
    assert parent.info.run_name == "sweep 4× tiny 2ep reg×loop"
    note = parent.data.tags["mlflow.note.content"]
    assert "python -m src.train -m " in note and "- `reg`: none, l2" in note and "- `loop`: fit, tape" in note
    params = parent.data.params  # the config every child shares; the swept keys are the children's
    assert params["model.name"] == "tiny" and params["train.epochs"] == "2" and "reg.name" not in params
    assert "loop.name" not in params and "mlflow.tracking_uri" not in params
    assert parent.data.tags["mlflow.source.name"] == "src.train" and parent.data.tags["mlflow.user"]
    best = {c.info.run_id: min(history(client, c.info.run_id, ["val_binary_crossentropy"])["val_binary_crossentropy"])
            for c in children}
    assert parent.data.metrics["best_val_binary_crossentropy"] == min(best.values())
    assert parent.data.tags["best_run_id"] == min(best, key=best.get)
    # its twin logged the same curve: both are named, said to be bit-identical
    best_loop = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"]).info.run_name
    for child in children:  # each child says which job of which sweep it is, and its values
        note = child.data.tags["mlflow.note.content"]
        assert note.startswith("Job ") and f"of the sweep run `{parent.info.run_id}`" in note
        assert f"`reg={child.data.params['reg.name']}`" in note and f"`loop={child.data.params['loop.name']}`" in note
    from urllib.parse import parse_qs, urlsplit

    final_note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    link = final_note.split("[Its runs side by side](", 1)[1].split(")", 1)[0]  # MLflow's compare page, its children
    query = parse_qs(urlsplit(link.replace("#/", "")).query)
    assert link.startswith("http://127.0.0.1:5000/#/compare-runs?") and query["workflowType"] == ["machine_learning"]
    assert sorted(json.loads(query["runs"][0])) == sorted(c.info.run_id for c in children)
    fit, tape = best_loop.replace("tape-", "fit-", 1), best_loop.replace("fit-", "tape-", 1)
    assert parent.data.tags["best_run_name"] == f"{fit} = {tape}, bit-identical"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/overlay_val_binary_crossentropy.png", "compare/table.txt"} <= logged  # before any src.compare


def test_compare_draws_and_tables_the_latest_sweep_and_logs_it_on_the_parent(sweep):
    uri, folder, _ = sweep
    out, table_json = folder / "report", folder / "table.json"
    proc = run_module("src.compare", ["--tracking-uri", uri, "--out", str(out), "--json", str(table_json)], cwd=folder)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "overlay_val_binary_crossentropy.png" in pngs and "pairs_best_val_binary_crossentropy.png" in pngs
    assert len(pngs) == 2 + 4 * 2  # the overlay, the pairs' forest plot, two panels a run
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    client = MlflowClient(uri)
    [parent], _ = split_runs(uri)
    parent_id = parent.info.run_id
    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert "compare/overlay_val_binary_crossentropy.png" in logged and "compare/table.json" in logged
    assert len(client.list_artifacts(parent_id, "compare/runs")) == 4

    report = json.loads(table_json.read_text())
    assert report["sweep_run_id"] == parent_id
    rows = report["groups"]
    assert sorted(r["label"] for r in rows) == ["fit-l2-tiny", "fit-none-tiny", "tape-l2-tiny", "tape-none-tiny"]
    for row in rows:
        assert row["n_seeds"] == 1 and row["epochs"] == [2]
        [run_id] = row["run_ids"]
        for key, value in expected_stats(client, run_id).items():
            assert row[key]["mean"] == value and row[key]["values"] == [value], key
            assert row[key]["std"] is None and row[key]["ci95"] is None
        # the printed table shows the same numbers, rounded
        line = next(line for line in proc.stdout.splitlines() if line.startswith(row["label"] + " "))
        assert f"{row['final_val_binary_crossentropy']['mean']:.4f}" in line
        assert f"{row['final_val_accuracy']['mean']:.4f}" in line

    # one sweep in the store: asking for the two latest is a one-line error
    assert main(["--latest", "2", "--tracking-uri", uri]) == 2


@pytest.mark.slow  # ~40 s (85 s on a busy machine): a sweep and a search of their own, logging models
def test_register_best_puts_a_sweeps_and_a_searchs_best_model_in_the_registry_as_alias_best(tmp_path, higgs_file):
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    common = ["model=tiny", "train.epochs=2", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
              "quiet=true", "mlflow.log_models=true", "mlflow.register_best=true", f"mlflow.tracking_uri={uri}",
              f"mlflow.artifact_location={tmp_path}/mlruns/artifacts"]
    runs = {
        "swept": ["-m", "reg=none,l2", f"hydra.sweep.dir={tmp_path}/sweep"],
        "searched": ["-m", "hydra/sweeper=optuna", "reg=l2", "reg.l2=tag(log, interval(1e-5, 1e-2))",
                     "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={tmp_path}/search",
                     f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db"],
    }
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    rows = np.random.default_rng(0).normal(size=(16, 28)).astype(np.float32)
    for experiment, args in runs.items():
        proc = run_module("src.train", [*args, *common, f"mlflow.experiment_name={experiment}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"best model registered: models:/{experiment}@best" in proc.stderr
        [parent] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                      filter_string="tags.sweep = 'true'")
        best_run = parent.data.tags.get("best_run_id") or parent.data.tags["optuna.best_run_id"]
        version = client.get_model_version_by_alias(experiment, "best")
        assert version.run_id == best_run and parent.data.tags["registered_best"] == f"models:/{experiment}@best"
        [best_model] = [m for m in client.search_logged_models([parent.info.experiment_id])
                        if m.source_run_id == best_run and m.tags["logged_as"] == "best_model"]
        assert version.source == f"models:/{best_model.model_id}"  # the best epoch's weights of the best run
        registered = mlflow.pyfunc.load_model(f"models:/{experiment}@best").predict(rows)
        assert np.array_equal(registered, mlflow.pyfunc.load_model(f"models:/{best_model.model_id}").predict(rows))
