"""`python -m src.compare`: the article's figures and a summary table for a sweep or a list of runs."""

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from src.analysis.report import Group, History, RunData, format_table, group_runs, table_rows
from src.core.errors import UserError
from src.core.metrics import HEADLINE_METRIC, LEGACY_TASK, data_loss
from src.core.runstates import FINISHED
from src.core.schema import PROJECT_ROOT
from src.tracking import store
from src.tracking.liveness import dead_reason



def compared_metrics(task: str) -> Tuple[str, ...]:
    """The histories the figures and the table need: the losses, the data loss and the headline metric, with their
    `val_` twins (epoch_seconds and reg_loss are not plotted)."""
    return ("loss", "val_loss", *(m for metric in (data_loss(task), HEADLINE_METRIC[task]) for m in (metric, f"val_{metric}")))


def run_task(run) -> str:
    """The run's task: its `task` param, or the tutorial's for a run logged before tasks existed."""
    return run.data.params.get("task", LEGACY_TASK)
ARTIFACT_DIR = "compare"


class CompareError(UserError):
    """Runs or sweeps that cannot be compared."""


# --- which runs ---------------------------------------------------------------


def latest_sweeps(client, experiment_name: str, tracking_uri: str, count: int = 1) -> list:
    """The `count` most recently started runs tagged sweep=true in the experiment, oldest first."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise CompareError(f"--experiment {experiment_name}: no such experiment in {store.redact(tracking_uri)}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=store.SWEEP_FILTER,
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
        given = [store.get_run(client, run_id, tracking_uri) for run_id in dict.fromkeys(run_ids)]
    parents = [r for r in given if store.is_sweep_parent(r)]
    runs = []
    for run in given:
        if not store.is_sweep_parent(run):
            runs.append(run)
            continue
        children = store.sweep_children(client, run)
        finished = [c for c in children if c.info.status == FINISHED]
        for child in children:
            if child.info.status != FINISHED:
                dead = dead_reason(child)
                print(f"note: skipped {child.info.run_name} {child.info.run_id} of sweep {run.info.run_id}: "
                      f"{child.info.status}" + (f", and dead: {dead}" if dead else ""), file=sys.stderr)
        if not finished:
            raise CompareError(f"sweep {run.info.run_id}: no FINISHED child runs to compare")
        runs.extend(finished)
    runs = list({r.info.run_id: r for r in runs}.values())  # a run named and also in a named sweep
    return runs, parents, parents[0] if len(given) == 1 and len(parents) == 1 else None


def load_run(client, run) -> RunData:
    """A run's params and per-epoch histories of its task's compared metrics (a step logged twice keeps its last)."""
    task = run_task(run)
    by_step = store.metric_histories(client, run, compared_metrics(task))
    history: History = {key: [steps[s] for s in sorted(steps)] for key, steps in by_step.items()}
    if not history[f"val_{data_loss(task)}"]:
        raise CompareError(
            f"run {run.info.run_id}: no val_{data_loss(task)} history (not a training run of this project?)"
        )
    return RunData(run.info.run_id, run.info.run_name or run.info.run_id, dict(run.data.params), history)


def common_task(runs: Sequence[RunData]) -> str:
    """The task every compared run has; CompareError naming them when they differ (their numbers are not alike)."""
    tasks = {run.params.get("task", LEGACY_TASK) for run in runs}
    if len(tasks) > 1:
        named = ", ".join(f"{r.name} ({r.params.get('task', LEGACY_TASK)})" for r in runs)
        raise CompareError(f"runs of different tasks cannot share one table: {named}")
    return tasks.pop()


# --- figures ------------------------------------------------------------------


def write_figures(groups: Sequence[Group], out_dir: Path, title: str, task: str = LEGACY_TASK) -> List[Path]:
    """The overlay of every group's validation data loss, then each group's loss and headline-metric panels."""
    from src.analysis import plots

    overlay = plots.overlay_figure({g.label: g.histories for g in groups}, title, task)
    figures = {f"overlay_val_{data_loss(task)}.png": overlay}
    written = [Path(p) for p in plots.save(figures, out_dir)]
    for i, group in enumerate(groups, start=1):
        panels = plots.curve_figures(group.histories, group.label, task)
        folder = f"runs/{i:02d}-{_slug(group.label)}"
        written += [Path(p) for p in plots.save({f"{folder}/{name}.png": fig for name, fig in panels.items()}, out_dir)]
    return written


def _sweep_title(parent) -> str:
    """`sweep reg=none,l2 loop=fit,tape`: the swept overrides only, not the fixed ones."""
    overrides = parent.data.tags.get(store.SWEEP_OVERRIDES_TAG, "").split()
    swept = [o for o in overrides if "," in o.split("=", 1)[-1]]
    return f"sweep {' '.join(swept) or parent.info.run_id}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "run"


# --- command line -------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = store.project_mlflow_defaults()
    parser = argparse.ArgumentParser(
        prog="python -m src.compare",
        description=(
            "Compare runs side by side from MLflow's metric histories: one overlay of every run's validation data "
            "loss (val_binary_crossentropy for the tutorial's binary task; train dashed), loss and accuracy (the "
            "task's headline metric) panels per run, and a table (final and best validation data loss, epoch of "
            "best, final train-val gap, final headline metric). Runs of different tasks are refused. "
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


@dataclass
class Comparison:
    """What a comparison wrote: its table, the folder of its files, and the sweep parent it was logged on."""

    table: str
    out: Path
    logged_on: Optional[str]

    def report_lines(self) -> str:
        """Where the files went, as the command prints it."""
        where = f"figures and table in {self.out}"
        return where + (f"\nlogged on sweep parent run {self.logged_on} under {ARTIFACT_DIR}/" if self.logged_on else "")


def compare_runs(
    tracking_uri: str, run_ids: Sequence[str] = (), *, experiment: Optional[str] = None, latest: int = 1, out: Optional[Path] = None,
    json_path: Optional[Path] = None, log: bool = True,
) -> Comparison:
    """Figures and a table for runs or sweeps (default: the latest sweep of `experiment`), written to `out`, and
    logged on the sweep parent when a single sweep is compared (`experiment` is searched only without `run_ids`);
    CompareError (a UserError) when they cannot be."""
    client = store.open_store(tracking_uri)
    selected, parents, parent = select_runs(client, tracking_uri, run_ids, experiment, latest)
    runs = [load_run(client, run) for run in selected]
    task = common_task(runs)
    groups = group_runs(runs)
    rows = table_rows(groups, task)
    log_on = parent.info.run_id if parent else None
    loose = len(selected) - sum(1 for r in selected if r.data.tags.get(store.PARENT_TAG) in {p.info.run_id for p in parents})
    title = " + ".join([_sweep_title(p) for p in parents] + ([f"{loose} runs"] if loose else []))
    if out is None and log_on:
        out = PROJECT_ROOT / "reports" / log_on
    elif out is None:
        digest = hashlib.sha256(" ".join(r.run_id for r in runs).encode()).hexdigest()[:12]
        out = PROJECT_ROOT / "reports" / f"runs-{digest}"
    table = format_table(rows, task)
    report = json.dumps({"tracking_uri": store.redact(tracking_uri), "sweep_run_id": log_on, "groups": rows}, indent=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table)
        (out / "table.json").write_text(report)
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(report)
        written = write_figures(groups, out, f"val_{data_loss(task)}, {title}", task)
    except OSError as exc:
        raise CompareError(f"--out/--json: cannot write {exc.filename}: {exc.strerror}") from None
    if not (log_on and log):
        return Comparison(table, out, None)
    for path in [out / "table.txt", out / "table.json", *written]:
        rel = path.relative_to(out).parent.as_posix()
        client.log_artifact(log_on, str(path), ARTIFACT_DIR if rel == "." else f"{ARTIFACT_DIR}/{rel}")
    return Comparison(table, out, log_on)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        comparison = compare_runs(args.tracking_uri or store.default_tracking_uri(), args.run_ids,
                                  experiment=args.experiment, latest=args.latest or 1, out=args.out,
                                  json_path=args.json, log=not args.no_log)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(comparison.table, end="")
    print(comparison.report_lines(), file=sys.stderr)
    return 0

