"""`python -m src.evaluate`: a run's logged model scored on rows of its data, printed or logged as a linked run."""

import numpy as np
from mlflow import MlflowClient

from src.analysis import evaluate
from src.analysis.evaluate import EVALUATED_RUN_TAG
from src.analysis.scores import scores
from src.experiments.train import train


def test_scores_are_the_textbook_ones():
    y = np.array([0, 0, 1, 1], dtype=np.float32)
    p = np.array([0.1, 0.6, 0.4, 0.9], dtype=np.float32)
    values, (fpr, tpr) = scores(y, p)
    assert values["accuracy"] == 0.5 and values["auc"] == 0.75 and values["rows"] == 4
    expected = -np.mean([np.log(0.9), np.log(0.4), np.log(0.4), np.log(0.9)])
    assert abs(values["binary_crossentropy"] - expected) < 1e-6
    assert fpr[-1] == tpr[-1] == 1


def test_evaluate_scores_the_run_and_logs_a_linked_run(make_cfg, tracking_uri, capsys, tmp_path):
    cfg = make_cfg("mlflow.log_models=true", "train.epochs=1")
    result = train(cfg)
    history = MlflowClient(tracking_uri).get_metric_history(result.run_id, "val_accuracy")

    assert evaluate.main([result.run_id, "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "validation rows 0:500 of" in out
    client = MlflowClient(tracking_uri)
    (evaluation,) = [r for r in client.search_runs([client.get_run(result.run_id).info.experiment_id])
                     if r.data.tags.get(EVALUATED_RUN_TAG) == result.run_id]
    # the model scores the run's validation rows exactly as the run's own last epoch did (float32 there)
    # under names of its own (eval_...), never the training runs' own: the charts keep them apart
    assert np.float32(evaluation.data.metrics["eval_accuracy"]) == np.float32(history[-1].value)
    assert 0 <= evaluation.data.metrics["eval_auc"] <= 1 and evaluation.data.metrics["eval_rows"] == 500
    assert "accuracy" not in evaluation.data.metrics
    assert [a.path for a in client.list_artifacts(evaluation.info.run_id)] == ["roc.png"]
    # nested under the run it scored, which points back; the scored rows are its dataset; the model shows the scores
    scored = client.get_run(result.run_id)
    assert evaluation.data.tags["mlflow.parentRunId"] == result.run_id and evaluation.info.status == "FINISHED"
    assert scored.data.tags["last_evaluation_run_id"] == evaluation.info.run_id
    assert [i.dataset.name for i in evaluation.inputs.dataset_inputs] == ["evaluation-validation rows 0:500"]
    (model,) = [m for m in client.search_logged_models([scored.info.experiment_id])
                if m.tags["logged_as"] == "model" and m.source_run_id == result.run_id]
    assert model.name == scored.info.run_name  # named after its run
    assert {m.key for m in model.metrics} >= {"eval_accuracy", "eval_auc", "eval_binary_crossentropy"}

    # another slice, printed only; then the errors, one line each
    assert evaluate.main([result.run_id, "--tracking-uri", tracking_uri, "--rows", "600:900", "--no-log"]) == 0
    assert "rows 600:900 of" in capsys.readouterr().out
    assert evaluate.main([result.run_id, "--tracking-uri", tracking_uri, "data.n_validation=abc"]) == 2
    assert capsys.readouterr().err.startswith("error: data.n_validation=abc: ")
    assert evaluate.main([result.run_id, "--tracking-uri", tracking_uri, "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: run {result.run_id}: no logged model 'nope'") and err.count("\n") == 1


def test_evaluate_on_a_sweep_parent_says_to_evaluate_a_child(tracking_uri, capsys):
    """evaluate has no --sweep: it once said "reproduce its children with --sweep"."""
    client = MlflowClient(tracking_uri)
    parent = client.create_run(client.create_experiment("sweeps"), tags={"sweep": "true"}).info.run_id
    assert evaluate.main([parent, "--tracking-uri", tracking_uri]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run {parent} is a sweep parent; it has no model of its own: evaluate one of its children (the runs "
        f"tagged mlflow.parentRunId={parent})"]
