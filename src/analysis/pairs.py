"""Pairs of groups that differ in one config key (l2 vs none, tape vs fit, ...): their paired differences over
matching seeds, summary by summary, as rows, a table and the one-line verdicts a sweep parent's description holds."""

import math
from typing import Dict, List, Sequence

from src.analysis.report import Group, ignored_in_groups, run_stats, stats_columns
from src.analysis.statistics import IDENTICAL, NOT_ENOUGH_SEEDS, one_key_pairs, paired_difference
from src.core.metrics import HIGHER_IS_BETTER, data_loss


def _higher_is_better(summary: str) -> bool:
    """Whether a larger value of a summary is the better one (final accuracy, AUC); losses, gaps: lower is."""
    return any(summary == f"final_{metric}" for metric in HIGHER_IS_BETTER)


def _value_of(group: Group, key: str) -> str:
    return group.runs[0].params.get(key, "?")


def _key_name(key: str) -> str:
    """`reg.name` -> `reg`: an option's name stands for the option."""
    return key[: -len(".name")] if key.endswith(".name") else key


def pair_rows(groups: Sequence[Group], task: str) -> List[Dict]:
    """One row per pair of groups differing in one key and per summary: a is the later group (the sweep's second
    value), b the earlier. Pairs whose seeds or epoch counts differ are refused, by name, never mixed."""
    params = [g.runs[0].params for g in groups]
    rows = []
    for i, j, key in one_key_pairs(params, ignored_in_groups):
        b, a = groups[i], groups[j]
        names = {json_key: column for column, (json_key, _) in stats_columns(task).items()}
        seeds_a = {r.params.get("seed"): r for r in a.runs}
        seeds_b = {r.params.get("seed"): r for r in b.runs}
        epochs = {len(r.history[f"val_{data_loss(task)}"]) for r in [*a.runs, *b.runs]}
        refused = None
        if set(seeds_a) != set(seeds_b) or len(seeds_a) != len(a.runs) or len(seeds_b) != len(b.runs):
            refused = (f"refused: {a.label} has seeds {sorted(seeds_a)}, {b.label} has seeds {sorted(seeds_b)}; "
                       "only matching seeds are paired")
        elif len(epochs) > 1:
            refused = f"refused: {a.label} and {b.label} ran different numbers of epochs ({sorted(epochs)})"
        seeds = sorted(seeds_a, key=str)
        stats_a = [run_stats(seeds_a[s].history, task) for s in seeds] if not refused else []
        stats_b = [run_stats(seeds_b[s].history, task) for s in seeds] if not refused else []
        for summary in run_stats(a.runs[0].history, task):
            base = {"key": key, "a": _value_of(a, key), "b": _value_of(b, key), "a_label": a.label,
                    "b_label": b.label, "summary": summary, "summary_name": names.get(summary, summary),
                    "label": f"{_key_name(key)}={_value_of(a, key)} vs {_value_of(b, key)}"}
            if refused:
                rows.append({**base, "n_seeds": 0, "mean_diff": None, "ci95": None, "p_value": None,
                             "p_improvement": None, "verdict": refused})
                continue
            difference = paired_difference([s[summary] for s in stats_a], [s[summary] for s in stats_b],
                                           _higher_is_better(summary)).as_json()
            if summary == "best_epoch" and difference["p_improvement"] is not None:  # later is neither better nor worse
                difference["p_improvement"] = None
                difference["verdict"] = {"a better": "a later", "b better": "a earlier"}.get(difference["verdict"],
                                                                                          difference["verdict"])
            rows.append({**base, **difference})
    return rows


def verdict_line(row: Dict) -> str:
    """One pair's verdict on one summary, e.g. `reg=dropout vs none: best val_bce −0.0076 [−0.0118, −0.0042],
    p=0.0625, P(better)=0.92 (5 seeds)`."""
    head = f"{row['label']}: {row['summary_name']}"
    if row["verdict"] == IDENTICAL:
        return f"{head} identical, bit for bit ({row['n_seeds']} seeds)"
    if row["verdict"] == NOT_ENOUGH_SEEDS:
        return f"{head}: not enough seeds ({row['n_seeds']}; a number needs 3 or more)"
    if row["verdict"].startswith("refused"):
        return f"{head}: {row['verdict']}"
    low, high = row["ci95"]
    better = "" if row["p_improvement"] is None else f", P(better)={row['p_improvement']:.2f}"
    return (f"{head} {_signed(row['mean_diff'])} [{_signed(low)}, {_signed(high)}], p={row['p_value']:.3g}{better} "
            f"({row['n_seeds']} seeds)")


def _signed(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:+.4f}".replace("-", "−")


def headline_lines(rows: Sequence[Dict], task: str) -> List[str]:
    """The verdict of every pair on its best validation data loss: what a sweep parent's description states."""
    return [verdict_line(r) for r in rows if r["summary"] == f"best_val_{data_loss(task)}"]


def format_pairs(rows: Sequence[Dict], task: str) -> str:
    """The paired differences as text: each pair's verdict line for every summary, grouped by pair."""
    if not rows:
        return ""
    lines, last = ["paired differences a − b over matching seeds (95 % bootstrap CI; p: sign-flip permutation "
                   "test, Wilcoxon beyond 10 seeds; P(better): P(a better than b))"], None
    for row in rows:
        pair = (row["label"], row["a_label"], row["b_label"])
        if pair != last:
            lines.append(f"  {row['label']}  (a: {row['a_label']}, b: {row['b_label']})")
            last = pair
        lines.append("    " + verdict_line(row).split(": ", 1)[1])
    return "\n".join(lines) + "\n"
