"""`python -m src.compare`: the article's figures and a summary table for a sweep or a list of runs."""

import argparse
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from src.config import PROJECT_ROOT
from src.errors import UserError
from src.tracking import (
    NON_SEMANTIC_KEYS,
    PARENT_TAG,
    default_tracking_uri,
    get_run,
    open_store,
    project_mlflow_defaults,
    redact_uri,
    sweep_children,
)

# The histories the figures and the table need (epoch_seconds and reg_loss are not plotted).
METRICS = ("loss", "val_loss", "binary_crossentropy", "val_binary_crossentropy", "accuracy", "val_accuracy")
# Params that do not make runs different experiments: runs differing only in these form one group.
GROUP_IGNORED = ("seed", *NON_SEMANTIC_KEYS)
# Params already spelled out by a run's name (e.g. `tape-l2-large-no_reg_loss`), left out of labels.
NAMED_PARAMS = ("loop.name", "reg.name", "model.name", "loop.include_reg_loss")
STATS = {  # table column -> (JSON key, decimals)
    "final val_bce": ("final_val_binary_crossentropy", 4),
    "best val_bce": ("best_val_binary_crossentropy", 4),
    "best@epoch": ("best_epoch", 1),
    "train-val gap": ("final_train_val_gap", 4),
    "final val_acc": ("final_val_accuracy", 4),
    "val_bce wobble": ("val_bce_wobble", 4),
}
ARTIFACT_DIR = "compare"

History = Dict[str, List[float]]


class CompareError(UserError):
    """Runs or sweeps that cannot be compared."""


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


# --- which runs ---------------------------------------------------------------


def latest_sweeps(client, experiment_name: str, tracking_uri: str, count: int = 1) -> list:
    """The `count` most recently started runs tagged sweep=true in the experiment, oldest first."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise CompareError(f"--experiment {experiment_name}: no such experiment in {redact_uri(tracking_uri)}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.sweep = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=count,
    )
    if not runs:
        raise CompareError(f"--experiment {experiment_name}: no sweep yet; run one (make sweep) or pass run IDs")
    if len(runs) < count:
        raise CompareError(f"--latest {count}: --experiment {experiment_name} has only {len(runs)} sweeps")
    return runs[::-1]


def select_runs(
    client, tracking_uri: str, run_ids: Sequence[str], experiment_name: str, latest: int = 1
) -> Tuple[list, list, Optional[object]]:
    """The runs to compare, the sweeps among them, and the sweep to log on (when it is all that is compared)."""
    if not run_ids:
        given = latest_sweeps(client, experiment_name, tracking_uri, latest)
    else:
        given = [get_run(client, run_id, tracking_uri) for run_id in dict.fromkeys(run_ids)]
    parents = [r for r in given if r.data.tags.get("sweep") == "true"]
    runs = []
    for run in given:
        if run.data.tags.get("sweep") != "true":
            runs.append(run)
            continue
        children = sweep_children(client, run)
        finished = [c for c in children if c.info.status == "FINISHED"]
        for child in children:
            if child.info.status != "FINISHED":
                print(f"note: skipped {child.info.run_name} {child.info.run_id} of sweep {run.info.run_id}: "
                      f"{child.info.status}", file=sys.stderr)
        if not finished:
            raise CompareError(f"sweep {run.info.run_id}: no FINISHED child runs to compare")
        runs.extend(finished)
    runs = list({r.info.run_id: r for r in runs}.values())  # a run named and also in a named sweep
    return runs, parents, parents[0] if len(given) == 1 and len(parents) == 1 else None


def load_run(client, run) -> RunData:
    """A run's params and per-epoch histories of METRICS (a step logged twice keeps its last value)."""
    history: History = {}
    for key in METRICS:
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        by_step = {m.step: m.value for m in points}
        history[key] = [by_step[s] for s in sorted(by_step)]
    if not history["val_binary_crossentropy"]:
        raise CompareError(
            f"run {run.info.run_id}: no val_binary_crossentropy history (not a training run of this project?)"
        )
    return RunData(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params), history)


# --- grouping and statistics --------------------------------------------------


def group_runs(runs: Sequence[RunData]) -> List[Group]:
    """Runs whose params are equal except for the seed, in order of first appearance, with readable labels."""
    groups: Dict[Tuple, Group] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.params.items() if k.split(".")[0] not in GROUP_IGNORED))
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
            k for k in keys if k.split(".")[0] not in GROUP_IGNORED and len({p.get(k) for p in params}) > 1
        ]
        for group, p in zip(same, params):
            group.label += " " + " ".join(f"{k}={p.get(k)}" for k in differing)
    return result


def run_stats(history: History) -> Dict[str, float]:
    """The table's numbers for one run (epochs count from 0, as MLflow steps)."""
    val = history["val_binary_crossentropy"]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    best, best_epoch = min(finite) if finite else (math.nan, math.nan)
    train = history["binary_crossentropy"]
    acc = history["val_accuracy"]
    return {
        "final_val_binary_crossentropy": val[-1],
        "best_val_binary_crossentropy": best,
        "best_epoch": best_epoch,
        # positive = validation loss above training loss: overfitting
        "final_train_val_gap": val[-1] - train[-1] if train else math.nan,
        "final_val_accuracy": acc[-1] if acc else math.nan,
        # how much the validation loss jumps between epochs late in training: the
        # article's "dropout steadies the loss" as a number
        "val_bce_wobble": _mean_abs_step(val[(len(val) - 1) // 2 :]),
    }


def _mean_abs_step(values: Sequence[float]) -> float:
    """Mean |v[i+1] - v[i]|; NaN with fewer than two values."""
    steps = [abs(b - a) for a, b in zip(values, values[1:])]
    return sum(steps) / len(steps) if steps else math.nan


def group_stats(group: Group) -> Dict[str, Dict[str, Optional[float]]]:
    """Each statistic's per-run values, mean and sample std (None for a single run)."""
    per_run = [run_stats(h) for h in group.histories]
    out = {}
    for key in per_run[0]:
        values = [s[key] for s in per_run]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def table_rows(groups: Sequence[Group]) -> List[Dict]:
    """One JSON-ready row per group: label, runs, seeds and statistics."""
    return [
        {
            "label": g.label,
            "n": len(g.runs),
            "run_ids": [r.run_id for r in g.runs],
            "seeds": [r.params.get("seed") for r in g.runs],
            "epochs": [len(r.history["val_binary_crossentropy"]) for r in g.runs],
            "stats": group_stats(g),
        }
        for g in groups
    ]


def format_table(rows: Sequence[Dict]) -> str:
    """The table as aligned text; groups of several seeds show mean ± std."""

    def cell(stat: Dict, decimals: int) -> str:
        if stat["std"] is None:
            return f"{stat['mean']:.{decimals if decimals > 1 else 0}f}"
        return f"{stat['mean']:.{decimals}f} ± {stat['std']:.{decimals}f}"

    header = ["run", "n", *STATS]
    body = [
        [row["label"], str(row["n"]), *(cell(row["stats"][key], d) for key, d in STATS.values())] for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths)))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (
        "val_bce = val_binary_crossentropy; gap = val_bce - train bce at the last epoch; "
        "wobble = mean |epoch-to-epoch change| of val_bce over the second half of the epochs; epochs count from 0"
    )
    return "\n".join(lines) + "\n" + note + "\n"


# --- figures ------------------------------------------------------------------


def write_figures(groups: Sequence[Group], out_dir: Path, title: str) -> List[Path]:
    """The overlay of every group's val_binary_crossentropy, then each group's loss and accuracy panels."""
    from src import plots

    overlay = plots.overlay_figure({g.label: g.histories for g in groups}, title)
    figures = {"overlay_val_binary_crossentropy.png": overlay}
    written = [Path(p) for p in plots.save(figures, out_dir)]
    for i, group in enumerate(groups, start=1):
        panels = plots.curve_figures(group.histories, group.label)
        folder = f"runs/{i:02d}-{_slug(group.label)}"
        written += [Path(p) for p in plots.save({f"{folder}/{name}.png": fig for name, fig in panels.items()}, out_dir)]
    return written


def _sweep_title(parent) -> str:
    """`sweep reg=none,l2 loop=fit,tape`: the swept overrides only, not the fixed ones."""
    overrides = parent.data.tags.get("sweep_overrides", "").split()
    swept = [o for o in overrides if "," in o.split("=", 1)[-1]]
    return f"sweep {' '.join(swept) or parent.info.run_id}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "run"


# --- command line -------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = project_mlflow_defaults()
    parser = argparse.ArgumentParser(
        prog="python -m src.compare",
        description=(
            "Compare runs side by side from MLflow's metric histories: one overlay of every run's "
            "val_binary_crossentropy (the tutorial's plot; train dashed), loss and accuracy panels per run, and a "
            "table (final and best val_binary_crossentropy, epoch of best, final train-val gap, final val_accuracy). "
            "Runs whose params differ only in `seed` (and quiet/resume) form one group, drawn as mean ± std bands "
            "and tabled as mean ± std (sample std). Curves bit-identical to an earlier run's are marked (= that run)."
        ),
    )
    parser.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="a sweep parent run (its FINISHED children are compared) or runs to compare; sweep parents in a "
        "list are expanded too (default: the latest run tagged sweep=true in --experiment)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow store (default: $MLFLOW_TRACKING_URI, else the project's store "
        "sqlite:///<project>/mlruns/mlflow.db)",
    )
    parser.add_argument(
        "--experiment",
        default=defaults.experiment_name,
        help="experiment searched for the latest sweep when no RUN_ID is given (default: %(default)s)",
    )
    parser.add_argument(
        "--latest",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with no RUN_ID: compare the N most recent sweeps of --experiment together, e.g. two sweeps that "
        "together make the article's comparison (default: 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the PNGs and table.txt/table.json (default: <project>/reports/<sweep parent run ID>, "
        "or <project>/reports/runs-<hash of the IDs> for a list of runs)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the table as JSON to FILE (default: none)"
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help=f"do not log the files as artifacts under {ARTIFACT_DIR}/ of the sweep parent run (default: log them "
        "when a single sweep is compared; a list of runs or several sweeps are logged nowhere)",
    )
    args = parser.parse_args(argv)
    if args.latest is not None and args.run_ids:
        parser.error("--latest: only without RUN_ID")
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        client = open_store(tracking_uri)
        selected, parents, parent = select_runs(client, tracking_uri, args.run_ids, args.experiment, args.latest or 1)
        runs = [load_run(client, run) for run in selected]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    groups = group_runs(runs)
    rows = table_rows(groups)
    log_on = parent.info.run_id if parent else None
    loose = len(selected) - sum(1 for r in selected if r.data.tags.get(PARENT_TAG) in {p.info.run_id for p in parents})
    title = " + ".join([_sweep_title(p) for p in parents] + ([f"{loose} runs"] if loose else []))
    if args.out:
        out = args.out
    elif log_on:
        out = PROJECT_ROOT / "reports" / log_on
    else:
        digest = hashlib.sha256(" ".join(r.run_id for r in runs).encode()).hexdigest()[:12]
        out = PROJECT_ROOT / "reports" / f"runs-{digest}"
    table = format_table(rows)
    report = json.dumps({"tracking_uri": redact_uri(tracking_uri), "sweep_run_id": log_on, "groups": rows}, indent=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table)
        (out / "table.json").write_text(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(report)
        written = write_figures(groups, out, f"val_binary_crossentropy, {title}")
    except OSError as exc:
        print(f"error: --out/--json: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    print(table, end="")
    print(f"figures and table in {out}", file=sys.stderr)
    if log_on and not args.no_log:
        for path in [out / "table.txt", out / "table.json", *written]:
            rel = path.relative_to(out).parent.as_posix()
            client.log_artifact(log_on, str(path), ARTIFACT_DIR if rel == "." else f"{ARTIFACT_DIR}/{rel}")
        print(f"logged on sweep parent run {log_on} under {ARTIFACT_DIR}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
