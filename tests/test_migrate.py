"""`src.migrate` between two SQLite stores: a run's logged models (kept by MLflow 3 outside the run's artifacts) go
with it, load as `runs:/<copy>/model` and score as the originals; no half copy is ever left; nothing is copied twice.
(The same through a server on PostgreSQL, for a sweep: tests/test_server.py, slow.)"""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from src.analysis import evaluate
from src.experiments.train import train
from src.ops.migrate import MIGRATED_FROM_TAG, MigrationError, migrate


def _predict(tracking_uri: str, uri: str, rows: np.ndarray) -> np.ndarray:
    mlflow.set_tracking_uri(tracking_uri)
    return np.asarray(mlflow.pyfunc.load_model(uri).predict(rows))


def _models(client, experiment_id: str) -> list:
    return list(client.search_logged_models([experiment_id]))


def _fail_on_call(monkeypatch, method: str, n: int) -> None:
    """MlflowClient.`method` raises from its n-th call on (the calls before go through)."""
    original, calls = getattr(MlflowClient, method), []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise RuntimeError(f"{method} failed on purpose")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, failing)


@pytest.mark.slow  # the default suite's budget; the PostgreSQL migration test checks logged models too
def test_a_runs_logged_models_move_with_it_and_score_as_before(make_cfg, tracking_uri, tmp_path, monkeypatch,
                                                                capsys):
    run_id = train(make_cfg("mlflow.log_models=true", "train.epochs=1")).run_id
    source = MlflowClient(tracking_uri)
    experiment = source.get_experiment(source.get_run(run_id).info.experiment_id)
    destination_uri = f"sqlite:///{tmp_path}/destination/mlflow.db"
    (tmp_path / "destination").mkdir()
    destination = MlflowClient(destination_uri)
    target_id = destination.create_experiment(experiment.name, artifact_location=f"{tmp_path}/destination/artifacts")

    # the second model's files fail to upload: neither the run nor either model is kept (no READY half model)
    with monkeypatch.context() as patch:
        _fail_on_call(patch, "log_model_artifacts", 2)
        with pytest.raises(MigrationError, match=f"run {run_id} .* could not be copied, nothing of it kept: "
                                                 "log_model_artifacts failed on purpose") as failed:
            migrate(tracking_uri, destination_uri)
    assert "\n" not in str(failed.value)
    assert destination.search_runs([target_id]) == [] and _models(destination, target_id) == []

    # killed while linking the second model (no clean-up ran): the next migration deletes the leftovers first
    with monkeypatch.context() as patch:
        _fail_on_call(patch, "log_outputs", 2)
        patch.setattr("src.ops.migrate._discard_model", lambda *args: None)
        patch.setattr(MlflowClient, "delete_run", lambda *args: None)
        with pytest.raises(MigrationError):
            migrate(tracking_uri, destination_uri)
    [half] = destination.search_runs([target_id])
    assert MIGRATED_FROM_TAG not in half.data.tags
    assert sorted(str(m.status) for m in _models(destination, target_id)) == ["PENDING", "READY"]

    copied = migrate(tracking_uri, destination_uri)
    assert list(copied) == [run_id] and migrate(tracking_uri, destination_uri) == {}  # again: nothing new
    copy = copied[run_id]
    [run] = destination.search_runs([target_id])
    assert run.info.run_id == copy and run.data.tags[MIGRATED_FROM_TAG] == run_id
    originals = {m.name: m for m in _models(source, experiment.experiment_id)}
    copies = {m.name: m for m in _models(destination, target_id)}
    assert sorted(copies) == sorted(originals) == ["fit-none-tiny", "fit-none-tiny-best"]  # named after the run
    steps = {o.model_id: o.step for o in source.get_run(run_id).outputs.model_outputs}
    assert {o.model_id: o.step for o in run.outputs.model_outputs} == \
        {copies[name].model_id: steps[m.model_id] for name, m in originals.items()}  # the UI's "Logged models"
    for name, original in originals.items():
        new = copies[name]
        assert new.source_run_id == copy and str(new.status) == str(original.status) == "READY"
        assert (new.params, new.model_type) == (original.params, original.model_type)
        assert {k: v for k, v in new.tags.items() if not k.startswith(("migrat", "mlflow.note"))} == \
            {k: v for k, v in original.tags.items() if k != "mlflow.note.content"}
        # its description links the run's copy, not the original
        assert new.tags["mlflow.note.content"] == original.tags["mlflow.note.content"].replace(
            f"/experiments/{experiment.experiment_id}/runs/{run_id}", f"/experiments/{target_id}/runs/{copy}").replace(
            run_id, copy) and run_id not in new.tags["mlflow.note.content"]
        assert new.tags[MIGRATED_FROM_TAG] == original.model_id
        assert sorted((m.key, m.value, m.step) for m in new.metrics) == \
            sorted((m.key, m.value, m.step) for m in original.metrics) != []
        assert {m.run_id for m in new.metrics} == {copy}
        mlflow.set_tracking_uri(destination_uri)
        info = mlflow.models.get_model_info(f"models:/{new.model_id}")  # the copied MLmodel names the copy
        assert (info.model_uuid, info.run_id) == (new.model_id, copy)

    # each model loads by the copy's run ID and predicts exactly as the original
    rows = np.random.default_rng(0).normal(size=(64, 28)).astype(np.float32)
    for name in ("fit-none-tiny", "fit-none-tiny-best"):
        expected = _predict(tracking_uri, f"runs:/{run_id}/{name}", rows)
        assert np.array_equal(_predict(destination_uri, f"runs:/{copy}/{name}", rows), expected)
    capsys.readouterr()
    assert evaluate.main([run_id, "--tracking-uri", tracking_uri, "--no-log"]) == 0
    scored = capsys.readouterr().out.splitlines()[1:]  # the scores, without the first line's run name
    assert evaluate.main([copy, "--tracking-uri", destination_uri, "--no-log"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == scored and scored

    # a run copied before models were copied (here: its models deleted) gets them on the next migration
    for model in copies.values():
        destination.delete_logged_model(model.model_id)
    assert migrate(tracking_uri, destination_uri) == {}
    assert sorted(m.name for m in _models(destination, target_id)) == ["fit-none-tiny", "fit-none-tiny-best"]
    assert np.array_equal(_predict(destination_uri, f"runs:/{copy}/fit-none-tiny", rows),
                          _predict(tracking_uri, f"runs:/{run_id}/fit-none-tiny", rows))


def test_migration_is_idempotent_in_every_direction_and_never_into_its_own_store(make_cfg, tracking_uri, tmp_path):
    train(make_cfg("mlflow.log_models=false", "train.epochs=1"))
    other = f"sqlite:///{tmp_path}/other/mlflow.db"
    (tmp_path / "other").mkdir()
    assert len(migrate(tracking_uri, other)) == 1
    assert migrate(tracking_uri, other) == {}  # copied before: nothing again
    assert migrate(other, tracking_uri) == {}  # the copy goes home, where its original is: nothing is doubled
    assert len(MlflowClient(tracking_uri).search_runs(["1"])) == 1
    db = tracking_uri[len("sqlite:///"):]
    same = f"sqlite:///{Path(db).parent}/../{Path(db).parent.name}/{Path(db).name}"  # another spelling of it
    with pytest.raises(MigrationError, match=r"the same store as --from; a store is never its own destination"):
        migrate(tracking_uri, same)
    with pytest.raises(MigrationError, match=r"^--experiment nope: no such experiment in sqlite:///\S+ \(it has: "):
        migrate(tracking_uri, other, ["nope"])


def test_migrated_artifacts_land_beside_the_destination_store_never_in_the_working_directory(
        make_cfg, tracking_uri, tmp_path, monkeypatch):
    train(make_cfg("mlflow.log_models=false", "train.epochs=1"))
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a scratch folder: artifacts under ./mlruns would turn hollow once it is deleted
    (tmp_path / "dest").mkdir()
    (copy_id,) = migrate(tracking_uri, f"sqlite:///{tmp_path}/dest/mlflow.db").values()
    copy = MlflowClient(f"sqlite:///{tmp_path}/dest/mlflow.db").get_run(copy_id)
    assert copy.info.artifact_uri.startswith((tmp_path / "dest" / "artifacts").as_uri())
    assert not (elsewhere / "mlruns").exists()


@pytest.mark.parametrize("to_case", [False, pytest.param(True, marks=pytest.mark.slow)])  # --to: a source store made
def test_a_store_that_cannot_be_used_is_named_by_the_option_that_gave_it(tmp_path, capsys, to_case):
    """migrate's stores are --from and --to; it once named src.train's mlflow.tracking_uri and evaluate's --tracking-uri."""
    from src.ops.migrate import main

    (tmp_path / "a_file").write_text("not a folder\n")
    cases = [
        (["--from", f"sqlite:///{tmp_path}/none.db", "--to", str(tmp_path / "d")],
         f"--from: no MLflow store at {tmp_path}/none.db"),
        (["--from", "notascheme://x", "--to", str(tmp_path / "d")], "--from notascheme://x: unsupported scheme"),
    ]
    if to_case:
        MlflowClient(f"sqlite:///{tmp_path}/src.db").search_experiments()  # the source store exists
        capsys.readouterr()  # MLflow's lines as it made it
        cases = [(["--from", f"sqlite:///{tmp_path}/src.db", "--to", f"sqlite:///{tmp_path}/a_file/x/mlflow.db"],
                  f"--to: cannot create {tmp_path}/a_file/x: Not a directory")]
    for args, start in cases:
        assert main(args) == 1
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert line.startswith(start), line
