"""Side-by-side comparison: figures from MLflow's histories, a table that matches them, seed groups."""

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from src.analysis.compare import main
from src.experiments.train import train
from tests.helpers import expected_stats


@pytest.mark.slow  # three seeds trained (~7 s): the default suite keeps its 150 s budget
def test_seed_groups_show_mean_and_std(make_cfg, tracking_uri, tmp_path, capsys):
    client = MlflowClient(tracking_uri)
    client.search_experiments()  # creates the store
    experiment = client.create_experiment("overfit-and-underfit", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep": "true", "sweep_overrides": "seed=0,1 reg=none"})
    parent_id = parent.info.run_id
    runs = [train(make_cfg(f"seed={s}", "train.epochs=3"), parent_run_id=parent_id).run_id for s in (0, 1)]
    single = train(make_cfg("seed=0", "reg=l2", "train.epochs=3"), parent_run_id=parent_id).run_id
    client.set_terminated(parent_id)
    capsys.readouterr()

    out, table_json = tmp_path / "report", tmp_path / "table.json"
    assert main([parent_id, "--tracking-uri", tracking_uri, "--out", str(out), "--json", str(table_json)]) == 0
    printed = capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads(table_json.read_text())["groups"]}
    assert set(rows) == {"fit-none-tiny", "fit-l2-tiny"}
    group = rows["fit-none-tiny"]
    assert group["n_seeds"] == 2 and group["run_ids"] == runs and group["seeds"] == ["0", "1"]
    expected = [expected_stats(client, r) for r in runs]
    for key in expected[0]:
        stat, values = group[key], [e[key] for e in expected]
        assert stat["values"] == values
        assert stat["mean"] == pytest.approx(np.mean(values), abs=1e-15)
        assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
        assert stat["ci95"] is None  # two seeds: too few for an interval
    assert rows["fit-l2-tiny"]["run_ids"] == [single] and rows["fit-l2-tiny"]["best_epoch"]["std"] is None
    line = next(line for line in printed.splitlines() if line.startswith("fit-none-tiny"))
    mean, std = group["final_val_binary_crossentropy"]["mean"], group["final_val_binary_crossentropy"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in line
    assert all(p.stat().st_size > 1000 for p in out.rglob("*.png")) and len(list(out.rglob("*.png"))) == 1 + 1 + 2 * 2  # overlay, pairs, panels

    # A list of runs (no sweep) is compared too, and logged nowhere.
    assert main([runs[0], single, "--tracking-uri", tracking_uri, "--out", str(tmp_path / "list")]) == 0
    assert "fit-none-tiny" in capsys.readouterr().out and (tmp_path / "list" / "overlay_val_binary_crossentropy.png").exists()
    assert not any(a.path == "compare" for a in client.list_artifacts(runs[0]))


def test_bad_input_is_one_line_error(tracking_uri, tmp_path, capsys):
    client = MlflowClient(tracking_uri)
    client.search_experiments()
    capsys.readouterr()
    assert main(["--tracking-uri", tracking_uri, "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --experiment overfit-and-underfit: no such experiment in {tracking_uri}"
    assert main(["0123456789abcdef0123456789abcdef", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 0123456789abcdef0123456789abcdef: no such run" in err[0]


def test_a_zoomed_axis_that_cuts_the_first_epochs_off_says_so():
    from src.analysis import plots

    spike = {"loss": [3.0] + [0.7 - 0.01 * i for i in range(19)], "val_loss": [2.5] + [0.72] * 19,
             "accuracy": [0.5 + 0.01 * i for i in range(20)], "val_accuracy": [0.5 + 0.005 * i for i in range(20)]}
    figures = plots.curve_figures([spike], "t")
    assert "(clipped: first epochs reach 3)" in figures["loss"].axes[0].get_ylabel()
    assert "clipped" not in figures["accuracy"].axes[0].get_ylabel()
    plots.close(figures)


def test_run_figures_log_as_artifacts(tracking_uri):
    from src.analysis import plots

    history = {"loss": [0.8, 0.7, 0.65], "val_loss": [0.82, 0.75, 0.74], "accuracy": [0.5, 0.6, 0.62], "val_accuracy": [0.5, 0.58, 0.6]}
    figures = plots.run_figures(history, "fit-none-tiny")
    assert set(figures) == {"curves/loss.png", "curves/accuracy.png", "curves_loss.png", "curves_accuracy.png"}
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    for path, figure in figures.items():  # what src/train.py does at the end of a run
        client.log_figure(run_id, figure, path)
    plots.close(figures)
    client.set_terminated(run_id)
    logged = {a.path for a in client.list_artifacts(run_id, "curves")} | {a.path for a in client.list_artifacts(run_id)}
    assert set(figures) <= logged
    # a one-epoch history still draws (a marker, not an invisible line)
    plots.close(plots.run_figures({k: v[:1] for k, v in history.items()}, "one epoch"))


def test_a_deleted_run_is_refused_by_compare_evaluate_and_reproduce(tracking_uri, capsys):
    from src.analysis.evaluate import main as evaluate
    from src.experiments.reproduce import main as reproduce

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("overfit-and-underfit")).info.run_id
    client.delete_run(run_id)
    capsys.readouterr()
    for command in (main, evaluate, reproduce):
        assert command([run_id, "--tracking-uri", tracking_uri]) != 0
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and f"run {run_id}: deleted in {tracking_uri}" in err[0], (command, err)


def test_a_run_that_is_not_finished_is_marked_in_the_table(make_cfg, tracking_uri, tmp_path, capsys):
    run_id = train(make_cfg("train.epochs=2")).run_id
    MlflowClient(tracking_uri).update_run(run_id, "RUNNING")  # still training, as far as the store knows
    capsys.readouterr()
    assert main([run_id, "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r")]) == 0
    assert any(line.startswith("fit-none-tiny (RUNNING) ") for line in capsys.readouterr().out.splitlines())
