"""Is the difference real? Intervals over seeds and paired tests, equal to scipy's on the runs' own numbers."""

import json

import numpy as np
import pytest
import scipy.stats
from mlflow import MlflowClient

from src.analysis.compare import main
from src.analysis.pairs import pair_rows, verdict_line
from src.analysis.report import Group, RunData, table_rows
from src.analysis.statistics import BOOTSTRAP_RESAMPLES, RANDOM_STATE, paired_difference
from src.experiments.sweep_parent import summarize_on_parent
from src.experiments.train import train
from tests.helpers import expected_stats


def _run(name, seed, val, train_loss=None, params=None):
    history = {"val_binary_crossentropy": list(val), "binary_crossentropy": list(train_loss or val),
               "val_accuracy": [0.5] * len(val), "loss": list(val), "val_loss": list(val)}
    return RunData(f"{name}-{seed}", name, {"seed": str(seed), **(params or {})}, history)


def _group(name, values, params, epochs=3):
    """A group of one run per seed whose best validation loss is each value."""
    return Group(name, [_run(name, s, [v + 0.1] * (epochs - 1) + [v], params=params) for s, v in enumerate(values)])


def test_a_pair_differing_in_one_key_gets_scipys_interval_p_value_and_probability_of_improvement():
    none = _group("fit-none", [0.61, 0.63, 0.60, 0.64, 0.62], {"reg.name": "none", "reg.l2": "0.0"})
    l2 = _group("fit-l2", [0.60, 0.61, 0.595, 0.62, 0.611], {"reg.name": "l2", "reg.l2": "0.001"})
    rows = {r["summary"]: r for r in pair_rows([none, l2], "binary")}
    best = rows["best_val_binary_crossentropy"]
    a, b = np.array([0.60, 0.61, 0.595, 0.62, 0.611]), np.array([0.61, 0.63, 0.60, 0.64, 0.62])
    diffs = a - b
    ci = scipy.stats.bootstrap((diffs,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, method="BCa",
                               random_state=RANDOM_STATE).confidence_interval
    p = scipy.stats.permutation_test((diffs,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert best["key"] == "reg.name" and (best["a"], best["b"]) == ("l2", "none") and best["n_seeds"] == 5
    assert best["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert best["ci95"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    assert best["p_value"] == pytest.approx(p) and best["p_value"] == pytest.approx(0.0625)  # 5 seeds: 2/32 at best
    assert best["p_improvement"] == scipy.stats.mannwhitneyu(b, a).statistic / 25
    assert best["verdict"] == "a better"
    line = verdict_line(best)
    assert line == (f"reg=l2 vs none: best val_bce −0.0128 [−{-ci.low:.4f}, −{-ci.high:.4f}], p=0.0625, "
                    "P(better)=0.74 (5 seeds)")


def test_groups_carry_scipys_interval_of_the_mean_from_three_seeds():
    group = _group("fit-none", [0.61, 0.63, 0.60], {"reg.name": "none"})
    (row,) = table_rows([group], "binary")
    ci = scipy.stats.bootstrap((np.array([0.61, 0.63, 0.60]),), np.mean, n_resamples=BOOTSTRAP_RESAMPLES,
                               method="BCa", random_state=RANDOM_STATE).confidence_interval
    assert row["n_seeds"] == 3 and row["best_val_binary_crossentropy"]["ci95"] == pytest.approx([ci.low, ci.high])
    assert table_rows([_group("two", [0.61, 0.63], {})], "binary")[0]["best_val_binary_crossentropy"]["ci95"] is None


def test_identical_twins_not_enough_seeds_and_unequal_groups_are_said_so():
    assert paired_difference([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], False).verdict == "identical"
    twins = pair_rows([_group("fit-none", [0.6, 0.7], {"loop.name": "fit"}),
                       _group("tape-none", [0.6, 0.7], {"loop.name": "tape"})], "binary")
    assert {r["verdict"] for r in twins} == {"identical"} and twins[0]["p_value"] is None
    assert verdict_line(twins[0]) == "loop=tape vs fit: final val_bce identical, bit for bit (2 seeds)"
    few = pair_rows([_group("a", [0.6, 0.7], {"reg.name": "none"}), _group("b", [0.5, 0.8], {"reg.name": "l2"})],
                    "binary")
    few = {r["summary"]: r for r in few}["best_val_binary_crossentropy"]
    assert few["verdict"] == "not enough seeds" and few["mean_diff"] is None
    unequal = pair_rows([_group("a", [0.6, 0.7, 0.8], {"reg.name": "none"}),
                         _group("b", [0.5, 0.8], {"reg.name": "l2"})], "binary")
    assert unequal[0]["verdict"].startswith("refused: b has seeds ['0', '1'], a has seeds ['0', '1', '2']")
    epochs = pair_rows([_group("a", [0.6, 0.7, 0.8], {"reg.name": "none"}, epochs=3),
                        _group("b", [0.5, 0.8, 0.6], {"reg.name": "l2"}, epochs=4)], "binary")
    assert epochs[0]["verdict"] == "refused: b and a ran different numbers of epochs ([3, 4])"
    # groups that differ in two keys are no pair
    assert pair_rows([_group("a", [0.6] * 3, {"reg.name": "none", "loop.name": "fit"}),
                      _group("b", [0.5] * 3, {"reg.name": "l2", "loop.name": "tape"})], "binary") == []


def test_a_three_seed_sweep_states_its_verdicts_on_its_parent_and_in_compares_json(make_cfg, tracking_uri, tmp_path,
                                                                                   capsys):
    client = MlflowClient(tracking_uri)
    client.search_experiments()
    experiment = client.create_experiment("overfit-and-underfit", artifact_location=(tmp_path / "art").as_uri())
    parent_id = client.create_run(experiment, run_name="sweep", tags={
        "sweep": "true", "sweep_overrides": "seed=0,1,2 reg=none,l2", "mlflow.note.content": "**sweep**"}).info.run_id
    runs = {(reg, seed): train(make_cfg(f"seed={seed}", f"reg={reg}", "model=tiny", "train.epochs=3"),
                               parent_run_id=parent_id).run_id for reg in ("none", "l2") for seed in (0, 1, 2)}
    summarize_on_parent(tracking_uri, parent_id, tmp_path / "sweep", "http://127.0.0.1:5000")
    note = client.get_run(parent_id).data.tags["mlflow.note.content"]
    (line,) = [line for line in note.splitlines() if line.startswith("- reg=l2 vs none: best val_bce ")]
    assert line.endswith("(3 seeds)") and "p=" in line and "P(better)=" in line

    capsys.readouterr()
    assert main([parent_id, "--tracking-uri", tracking_uri, "--out", str(tmp_path / "out"),
                 "--json", str(tmp_path / "t.json"), "--no-log"]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    (pair,) = [p for p in report["pairs"] if p["summary"] == "best_val_binary_crossentropy"]
    a = [expected_stats(client, runs["l2", s])["best_val_binary_crossentropy"] for s in (0, 1, 2)]
    b = [expected_stats(client, runs["none", s])["best_val_binary_crossentropy"] for s in (0, 1, 2)]
    diffs = np.array(a) - np.array(b)
    assert pair["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert pair["p_value"] == pytest.approx(scipy.stats.permutation_test(
        (diffs,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue)
    group = next(g for g in report["groups"] if g["label"] == "fit-l2-tiny")
    assert group["n_seeds"] == 3 and len(group["best_val_binary_crossentropy"]["ci95"]) == 2
    err = capsys.readouterr().err
    assert "statistics of 6 runs in " in err
    assert (tmp_path / "out" / "pairs_best_val_binary_crossentropy.png").stat().st_size > 1000


def test_a_seed_changes_both_the_initial_weights_and_the_shuffle(make_cfg):
    """What makes seeds a sweep axis worth pooling: each one is another draw of the weights and of the data order."""
    from src.data.loading import load_data
    from src.data.pipeline import make_datasets
    from src.training.models import build_model
    from src.training.runtime import seed_everything

    cfg = make_cfg("model=tiny")
    splits = load_data(cfg.data)

    def draw(seed):
        seed_everything(seed)
        weights = build_model(cfg.model, cfg.reg, splits.x_train.shape[1:]).get_weights()[0]
        first_batch = next(iter(make_datasets(splits, 100, seed)[0]))[1].numpy()
        return weights, first_batch

    (w0, b0), (w0_again, b0_again), (w1, b1) = draw(0), draw(0), draw(1)
    assert np.array_equal(w0, w0_again) and np.array_equal(b0, b0_again)
    assert not np.array_equal(w0, w1) and not np.array_equal(b0, b1)
