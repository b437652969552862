"""Side-by-side comparison: figures from MLflow's histories, a table that matches them, seed groups."""

import json
import subprocess
import sys

import numpy as np
import pytest
from mlflow import MlflowClient

from src.compare import main
from src.train import train


def _history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _expected_stats(client, run_id):
    """The table's numbers, recomputed here straight from the metric histories."""
    val = _history(client, run_id, "val_binary_crossentropy")
    train_bce = _history(client, run_id, "binary_crossentropy")
    return {
        "final_val_binary_crossentropy": val[-1],
        "best_val_binary_crossentropy": min(val),
        "best_epoch": int(np.argmin(val)),
        "final_train_val_gap": val[-1] - train_bce[-1],
        "final_val_accuracy": _history(client, run_id, "val_accuracy")[-1],
        "val_bce_wobble": float(np.mean(np.abs(np.diff(val[(len(val) - 1) // 2 :])))),
    }


def test_compare_latest_sweep(higgs_file, store_overrides, tracking_uri, tmp_path, capsys):
    sweep = subprocess.run(
        [
            sys.executable, "-m", "src.train", "-m", "reg=none,l2", "loop=fit,tape",
            f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000", "train.epochs=2",
            "model=tiny", "quiet=true", f"hydra.sweep.dir={tmp_path}/sweep", *store_overrides,
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("overfit-and-underfit").experiment_id
    [parent] = client.search_runs([experiment], filter_string="tags.sweep = 'true'")
    parent_id = parent.info.run_id

    out, table_json = tmp_path / "report", tmp_path / "table.json"
    proc = subprocess.run(
        [sys.executable, "-m", "src.compare", "--tracking-uri", tracking_uri, "--out", str(out), "--json", str(table_json)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "overlay_val_binary_crossentropy.png" in pngs and len(pngs) == 1 + 4 * 2
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert "compare/overlay_val_binary_crossentropy.png" in logged and "compare/table.json" in logged
    assert len(client.list_artifacts(parent_id, "compare/runs")) == 4

    report = json.loads(table_json.read_text())
    assert report["sweep_run_id"] == parent_id
    rows = report["groups"]
    assert sorted(r["label"] for r in rows) == ["fit-l2-tiny", "fit-none-tiny", "tape-l2-tiny", "tape-none-tiny"]
    for row in rows:
        assert row["n"] == 1 and row["epochs"] == [2]
        [run_id] = row["run_ids"]
        for key, value in _expected_stats(client, run_id).items():
            assert row["stats"][key]["mean"] == value and row["stats"][key]["values"] == [value], key
            assert row["stats"][key]["std"] is None
        # the printed table shows the same numbers, rounded
        line = next(line for line in proc.stdout.splitlines() if line.startswith(row["label"] + " "))
        assert f"{row['stats']['final_val_binary_crossentropy']['mean']:.4f}" in line
        assert f"{row['stats']['final_val_accuracy']['mean']:.4f}" in line

    # one sweep in the store: asking for the two latest is a one-line error
    assert main(["--latest", "2", "--tracking-uri", tracking_uri]) == 2


def test_seed_groups_show_mean_and_std(make_cfg, tracking_uri, tmp_path, capsys):
    client = MlflowClient(tracking_uri)
    client.search_experiments()  # creates the store
    experiment = client.create_experiment("overfit-and-underfit", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep": "true", "sweep_overrides": "seed=0,1 reg=none"})
    parent_id = parent.info.run_id
    runs = [train(make_cfg(f"seed={s}", "train.epochs=3"), parent_run_id=parent_id)["run_id"] for s in (0, 1)]
    single = train(make_cfg("seed=0", "reg=l2", "train.epochs=3"), parent_run_id=parent_id)["run_id"]
    client.set_terminated(parent_id)
    capsys.readouterr()

    out, table_json = tmp_path / "report", tmp_path / "table.json"
    assert main([parent_id, "--tracking-uri", tracking_uri, "--out", str(out), "--json", str(table_json)]) == 0
    printed = capsys.readouterr().out
    rows = {r["label"]: r for r in json.loads(table_json.read_text())["groups"]}
    assert set(rows) == {"fit-none-tiny", "fit-l2-tiny"}
    group = rows["fit-none-tiny"]
    assert group["n"] == 2 and group["run_ids"] == runs and group["seeds"] == ["0", "1"]
    expected = [_expected_stats(client, r) for r in runs]
    for key, stat in group["stats"].items():
        values = [e[key] for e in expected]
        assert stat["values"] == values
        assert stat["mean"] == pytest.approx(np.mean(values), abs=1e-15)
        assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert rows["fit-l2-tiny"]["run_ids"] == [single] and rows["fit-l2-tiny"]["stats"]["best_epoch"]["std"] is None
    line = next(line for line in printed.splitlines() if line.startswith("fit-none-tiny"))
    mean, std = group["stats"]["final_val_binary_crossentropy"]["mean"], group["stats"]["final_val_binary_crossentropy"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in line
    assert all(p.stat().st_size > 1000 for p in out.rglob("*.png")) and len(list(out.rglob("*.png"))) == 1 + 2 * 2

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


def test_run_figures_log_as_artifacts(tracking_uri):
    from src import plots

    history = {"loss": [0.8, 0.7, 0.65], "val_loss": [0.82, 0.75, 0.74], "accuracy": [0.5, 0.6, 0.62], "val_accuracy": [0.5, 0.58, 0.6]}
    figures = plots.run_figures(history, "fit-none-tiny")
    assert set(figures) == {"curves/loss.png", "curves/accuracy.png"}
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    for path, figure in figures.items():  # what src/train.py does at the end of a run
        client.log_figure(run_id, figure, path)
    plots.close(figures)
    client.set_terminated(run_id)
    assert {a.path for a in client.list_artifacts(run_id, "curves")} == set(figures)
    # a one-epoch history still draws (a marker, not an invisible line)
    plots.close(plots.run_figures({k: v[:1] for k, v in history.items()}, "one epoch"))
