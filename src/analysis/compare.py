"""`python -m src.compare`: the article's figures and a summary table for a sweep or a list of runs."""

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from src.analysis.pairs import format_pairs, headline_lines, pair_rows
from src.analysis.runs import CompareError, common_task, load_run, select_runs
from src.analysis.report import Group, format_table, group_runs, table_rows
from src.core.errors import UserError
from src.core.metrics import LEGACY_TASK, data_loss
from src.core.schema import PROJECT_ROOT
from src.tracking import store


ARTIFACT_DIR = "compare"





# --- figures ------------------------------------------------------------------


def write_figures(groups: Sequence[Group], out_dir: Path, title: str, task: str = LEGACY_TASK,
                  pairs: Sequence[dict] = ()) -> List[Path]:
    """The overlay of every group's validation data loss (95 % bands over 3 seeds or more), the forest plot of the
    pairs' differences in their best validation data loss, then each group's loss and headline-metric panels."""
    from src.analysis import plots

    overlay = plots.overlay_figure({g.label: g.histories for g in groups}, title, task)
    figures = {f"overlay_val_{data_loss(task)}.png": overlay}
    best = [p for p in pairs if p["summary"] == f"best_val_{data_loss(task)}"]
    if best:
        figures[f"pairs_best_val_{data_loss(task)}.png"] = plots.forest_figure(
            best, f"paired differences a − b of the best {title}")
    written = [Path(p) for p in plots.save(figures, out_dir)]
    for i, group in enumerate(groups, start=1):
        panels = plots.curve_figures(group.histories, group.label, task)
        folder = f"runs/{i:02d}-{_slug(group.label)}"
        written += [Path(p) for p in plots.save({f"{folder}/{name}.png": fig for name, fig in panels.items()}, out_dir)]
    return written


def _sweep_title(parent) -> str:
    """`sweep reg=none,l2 loop=fit,tape`: the swept overrides only, not the fixed ones."""
    overrides = parent.data.tags.get(store.SWEEP_OVERRIDES_TAG, "").split()
    swept = [o for o in overrides if re.search(r",|^(range|choice|interval|glob|tag)\(", o.split("=", 1)[-1])]
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
    verdicts: List[str]  # each pair's verdict on its best validation data loss, in one line
    statistics_seconds: float  # what the intervals and tests cost
    runs: int

    def report_lines(self) -> str:
        """Where the files went, as the command prints it."""
        lines = [f"statistics of {self.runs} runs in {self.statistics_seconds:.2f} s", f"figures and table in {self.out}"]
        if self.logged_on:
            lines.append(f"logged on sweep parent run {self.logged_on} under {ARTIFACT_DIR}/")
        return "\n".join(lines)


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
    started = time.perf_counter()
    groups = group_runs(runs)
    rows, pairs = table_rows(groups, task), pair_rows(groups, task)
    seconds = time.perf_counter() - started
    log_on = parent.info.run_id if parent else None
    loose = len(selected) - sum(1 for r in selected if r.data.tags.get(store.PARENT_TAG) in {p.info.run_id for p in parents})
    title = " + ".join([_sweep_title(p) for p in parents] + ([f"{loose} runs"] if loose else []))
    if out is None and log_on:
        out = PROJECT_ROOT / "reports" / log_on
    elif out is None:
        digest = hashlib.sha256(" ".join(r.run_id for r in runs).encode()).hexdigest()[:12]
        out = PROJECT_ROOT / "reports" / f"runs-{digest}"
    table = format_table(rows, task) + ("\n" + format_pairs(pairs, task) if pairs else "")
    report = json.dumps({"tracking_uri": store.redact(tracking_uri), "sweep_run_id": log_on, "task": task,
                         "groups": rows, "pairs": pairs, "statistics_seconds": seconds}, indent=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table)
        (out / "table.json").write_text(report)
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(report)
        written = write_figures(groups, out, f"val_{data_loss(task)}, {title}", task, pairs)
    except OSError as exc:
        raise CompareError(f"--out/--json: cannot write {exc.filename}: {exc.strerror}") from None
    if not (log_on and log):
        return Comparison(table, out, None, headline_lines(pairs, task), seconds, len(runs))
    for path in [out / "table.txt", out / "table.json", *written]:
        rel = path.relative_to(out).parent.as_posix()
        client.log_artifact(log_on, str(path), ARTIFACT_DIR if rel == "." else f"{ARTIFACT_DIR}/{rel}")
    return Comparison(table, out, log_on, headline_lines(pairs, task), seconds, len(runs))


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

