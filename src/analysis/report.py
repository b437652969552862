"""A comparison's numbers: runs grouped by config (seeds pooled), each group's statistics, and the table."""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from src.analysis.statistics import mean_interval
from src.core.config import is_semantic
from src.core.metrics import HEADLINE_METRIC, LEGACY_TASK, data_loss


# Params that do not make runs different experiments: runs differing only in these form one group.
def ignored_in_groups(key: str) -> bool:
    return key == "seed" or not is_semantic(key)

# Params already spelled out by a run's name (e.g. `tape-l2-large-no_reg_loss`), left out of labels.
NAMED_PARAMS = ("loop.name", "reg.name", "model.name", "loop.include_reg_loss")
SHORT = {"binary_crossentropy": "bce", "sparse_categorical_crossentropy": "sce", "mean_squared_error": "mse",
         "accuracy": "acc", "mean_absolute_error": "mae"}  # the table's short names of the metrics


def stats_columns(task: str) -> Dict[str, Tuple[str, int]]:
    """The table's columns for a task: column -> (JSON key, decimals); for binary, the tutorial's."""
    loss, headline = data_loss(task), HEADLINE_METRIC[task]
    short, short_headline = SHORT.get(loss, loss), SHORT.get(headline, headline)
    return {
        f"final val_{short}": (f"final_val_{loss}", 4),
        f"best val_{short}": (f"best_val_{loss}", 4),
        "best@epoch": ("best_epoch", 1),
        "train-val gap": ("final_train_val_gap", 4),
        f"final val_{short_headline}": (f"final_val_{headline}", 4),
        f"val_{short} wobble": (f"val_{short}_wobble", 4),
    }


History = Dict[str, List[float]]


@dataclass
class RunData:
    """One run's identity, params and metric histories (per epoch, from step 0)."""

    run_id: str
    name: str
    params: Dict[str, str]
    history: History


@dataclass
class Group:
    """Runs that differ only in seed (or a single run)."""

    label: str
    runs: List[RunData] = field(default_factory=list)

    @property
    def histories(self) -> List[History]:
        return [r.history for r in self.runs]


def group_runs(runs: Sequence[RunData]) -> List[Group]:
    """Runs whose params are equal except for the seed, in order of first appearance, with readable labels."""
    groups: Dict[Tuple, Group] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.params.items() if not ignored_in_groups(k)))
        groups.setdefault(key, Group(run.name)).runs.append(run)
    result = list(groups.values())
    # Groups whose run names collide (e.g. two learning rates) are told apart by the params that differ.
    by_name: Dict[str, List[Group]] = {}
    for group in result:
        by_name.setdefault(group.label, []).append(group)
    for same in by_name.values():
        if len(same) < 2:
            continue
        params = [g.runs[0].params for g in same]
        keys = sorted({k for p in params for k in p} - set(NAMED_PARAMS))
        differing = [
            k for k in keys if not ignored_in_groups(k) and len({p.get(k) for p in params}) > 1
        ]
        for group, p in zip(same, params):
            group.label += " " + " ".join(f"{k}={p.get(k)}" for k in differing)
    return result


def run_stats(history: History, task: str = LEGACY_TASK) -> Dict[str, float]:
    """The table's numbers for one run (epochs count from 0, as MLflow steps)."""
    loss, headline = data_loss(task), HEADLINE_METRIC[task]
    val = history[f"val_{loss}"]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    best, best_epoch = min(finite) if finite else (math.nan, math.nan)
    train = history[loss]
    score = history.get(f"val_{headline}", [])
    return {
        f"final_val_{loss}": val[-1],
        f"best_val_{loss}": best,
        "best_epoch": best_epoch,
        # positive = validation loss above training loss: overfitting
        "final_train_val_gap": val[-1] - train[-1] if train else math.nan,
        f"final_val_{headline}": score[-1] if score else math.nan,
        # how much the validation loss jumps between epochs late in training: the
        # article's "dropout steadies the loss" as a number
        f"val_{SHORT.get(loss, loss)}_wobble": _mean_abs_step(val[(len(val) - 1) // 2 :]),
    }


def _mean_abs_step(values: Sequence[float]) -> float:
    """Mean |v[i+1] - v[i]|; NaN with fewer than two values."""
    steps = [abs(b - a) for a, b in zip(values, values[1:])]
    return sum(steps) / len(steps) if steps else math.nan


def group_stats(group: Group, task: str = LEGACY_TASK) -> Dict[str, Dict[str, Optional[float]]]:
    """Each statistic's per-run values, mean, sample std (None for a single run) and the mean's 95 % bootstrap
    interval over seeds (None below 3 seeds)."""
    per_run = [run_stats(h, task) for h in group.histories]
    out = {}
    for key in per_run[0]:
        values = [s[key] for s in per_run]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        out[key] = {"mean": mean, "std": std, "ci95": mean_interval(values), "values": values}
    return out


def table_rows(groups: Sequence[Group], task: str = LEGACY_TASK) -> List[Dict]:
    """One JSON-ready row per group: label, runs, seeds and each summary's statistics."""
    loss = data_loss(task)
    return [
        {
            "label": g.label,
            "n_seeds": len(g.runs),
            "run_ids": [r.run_id for r in g.runs],
            "seeds": [r.params.get("seed") for r in g.runs],
            "epochs": [len(r.history[f"val_{loss}"]) for r in g.runs],
            **group_stats(g, task),
        }
        for g in groups
    ]


def format_table(rows: Sequence[Dict], task: str = LEGACY_TASK) -> str:
    """The table as aligned text; groups of 3 seeds or more show the mean [95 % CI], of two mean ± std."""

    def cell(stat: Dict, decimals: int) -> str:
        if stat["std"] is None:
            return f"{stat['mean']:.{decimals if decimals > 1 else 0}f}"
        if stat["ci95"] is not None:  # 3 seeds or more: the mean and its 95 % bootstrap interval
            low, high = stat["ci95"]
            return f"{stat['mean']:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"
        return f"{stat['mean']:.{decimals}f} ± {stat['std']:.{decimals}f}"

    columns = stats_columns(task)
    header = ["run", "seeds", *columns]
    mixed = [len(set(row["epochs"])) > 1 for row in rows]  # a group whose runs ran different numbers of epochs
    body = [
        [row["label"] + ("*" if odd else ""), str(row["n_seeds"]), *(cell(row[key], d) for key, d in columns.values())]
        for row, odd in zip(rows, mixed)
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths)))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    loss = data_loss(task)
    short = SHORT.get(loss, loss)
    note = (
        f"val_{short} = val_{loss}; gap = val_{short} - train {short} at the last epoch; "
        f"wobble = mean |epoch-to-epoch change| of val_{short} over the second half of the epochs; epochs count from 0"
    )
    if any(mixed):
        note += "\n* the group's runs have different numbers of epochs: its statistics mix different epochs"
    return "\n".join(lines) + "\n" + note + "\n"
