"""`python -m src.reproduce RUN_ID`: re-run a logged run's own config and check its metrics bit for bit."""

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from src.core.errors import UserError
from src.core.interrupts import handle_interrupts
from src.core.runstates import FAILED, FINISHED, KILLED
from src.experiments.sweep_parent import NOTE_TAG, create_parent_run, end_parent_run
from src.experiments.verdict import (
    DIFFERS,
    IDENTICAL,
    SEVERITY,
    VERDICT_TAG,
    WITHIN_TOLERANCE,
    Verdict,
    compare_histories,
    dataset_warnings,
    environment_warnings,
    runtime_warnings,
)
from src.tracking.liveness import dead_reason
from src.tracking.logged_config import ReproduceError, logged_config
from src.tracking.models import retitle_models
from src.tracking.store import (
    CONFIG_DIRS_TAG,
    SWEEP_OVERRIDES_TAG,
    default_tracking_uri,
    get_run,
    is_sweep_parent,
    metric_histories,
    open_store,
    sweep_children,
)

log = logging.getLogger(__name__)

REPRODUCED_FROM_TAG = "reproduced_from"
VERDICT_ARTIFACT = "reproduction.txt"
EXIT_CODES = {IDENTICAL: 0, WITHIN_TOLERANCE: 0, DIFFERS: 1}





# --- reproducing --------------------------------------------------------------


@dataclass
class Outcome:
    """One reproduction: the runs, the verdict (None if it could not run) and the warnings."""

    original_id: str
    run_name: str
    new_id: Optional[str] = None
    verdict: Optional[Verdict] = None
    warnings: List[str] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def exit_code(self) -> int:
        return 2 if self.verdict is None else EXIT_CODES[self.verdict.status]


def reproduce_run(
    client, tracking_uri: str, run_id: str, *, tolerance: float = 0.0, quiet: Optional[bool] = None,
    parent_run_id: Optional[str] = None,
) -> Outcome:
    """Re-run `run_id`'s logged config into a new run tagged `reproduced_from`, and log the verdict on it."""
    from src.experiments.train import train

    original = get_run(client, run_id, tracking_uri)
    cfg, filled, dropped = logged_config(client, original)
    # The logged URI may be redacted or another machine's path; this is the store being read.
    cfg.mlflow.tracking_uri = tracking_uri
    cfg.mlflow.experiment_name = client.get_experiment(original.info.experiment_id).name
    cfg.resume = False  # resume would find the original (same digest) and skip the re-run
    if quiet is not None:
        cfg.quiet = quiet
    outcome = Outcome(run_id, original.info.run_name)
    if original.info.status != FINISHED:
        dead = dead_reason(original)
        outcome.warnings.append(f"the original run is {original.info.status}" + (f" but dead ({dead})" if dead else "")
                                + ": its history may be partial")
    outcome.warnings.extend(environment_warnings(original.data.tags, cfg, filled, dropped))
    _warn(outcome.warnings, run_id)

    carried = {k: v for k, v in original.data.tags.items() if k == CONFIG_DIRS_TAG}  # so it reproduces in turn
    result = train(cfg, parent_run_id=parent_run_id, extra_tags={REPRODUCED_FROM_TAG: run_id, **carried})
    outcome.new_id = result.run_id
    if result.status == FAILED:
        raise ReproduceError(f"run {run_id}: the reproduction run {result.run_id} FAILED: {result.error}")
    new = client.get_run(outcome.new_id)
    after = runtime_warnings(original, new) + dataset_warnings(original, new)
    _warn(after, run_id)
    outcome.warnings.extend(after)

    from src.core.metrics import EPOCH_METRICS  # TensorFlow is loaded by now

    verdict = compare_histories(
        metric_histories(client, original), metric_histories(client, new), tolerance, EPOCH_METRICS
    )
    outcome.verdict = verdict
    for key, value in verdict.tags().items():
        client.set_tag(outcome.new_id, key, value)
    # it says what it is: a name that marks it, and its verdict with a link to the original as its description
    client.update_run(outcome.new_id, name=f"{original.info.run_name} (reproduction)")
    retitle_models(client, outcome.new_id, original.info.run_name, f"{original.info.run_name} (reproduction)")
    link = f"[{original.info.run_name}](#/experiments/{original.info.experiment_id}/runs/{run_id})"
    client.set_tag(outcome.new_id, NOTE_TAG, f"Reproduction of {link}: {verdict.summary()}")
    client.log_text(outcome.new_id, _report(outcome), VERDICT_ARTIFACT)
    return outcome


def reproduce_sweep(
    client, tracking_uri: str, parent_id: str, *, tolerance: float, quiet: Optional[bool]
) -> List[Outcome]:
    """Every child of a sweep, under a new parent run tagged `reproduced_from=PARENT_ID`."""
    parent = get_run(client, parent_id, tracking_uri)
    if not is_sweep_parent(parent):
        raise ReproduceError(f"--sweep {parent_id}: not a sweep parent run (no tag sweep=true)")
    children = sweep_children(client, parent)
    if not children:
        raise ReproduceError(f"--sweep {parent_id}: the sweep has no child runs")
    new_parent = create_parent_run(
        tracking_uri, parent.info.experiment_id, name=f"reproduce {parent.info.run_name}",
        overrides=[parent.data.tags.get(SWEEP_OVERRIDES_TAG, "")], tags={REPRODUCED_FROM_TAG: parent_id},
        command="src.reproduce",
    )
    print(f"reproducing {len(children)} runs of sweep {parent_id} under new parent run {new_parent}", file=sys.stderr)
    outcomes: List[Outcome] = []
    status = FAILED
    try:
        for child in children:
            try:
                outcome = reproduce_run(
                    client, tracking_uri, child.info.run_id, tolerance=tolerance, quiet=quiet, parent_run_id=new_parent
                )
            except UserError as exc:
                outcome = Outcome(child.info.run_id, child.info.run_name, error=str(exc))
                print(f"error: {exc}", file=sys.stderr)
            outcomes.append(outcome)
            print(_line(outcome), file=sys.stderr)
        status = FAILED if any(o.verdict is None for o in outcomes) else FINISHED
        verdicts = [o.verdict.status for o in outcomes if o.verdict is not None]
        client.set_tag(new_parent, VERDICT_TAG, max(verdicts, key=SEVERITY.index, default="none"))
        client.log_text(new_parent, "\n".join(_line(o) for o in outcomes) + "\n", VERDICT_ARTIFACT)
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        end_parent_run(tracking_uri, new_parent, status)
    return outcomes


def _warn(warnings: List[str], run_id: str) -> None:
    for warning in warnings:
        print(f"WARNING (reproducing {run_id}): {warning}", file=sys.stderr)


def _line(outcome: Outcome) -> str:
    """One summary line: original run, new run, verdict or error."""
    head = f"{outcome.run_name} {outcome.original_id} -> {outcome.new_id or '-'}"
    if outcome.verdict is None:
        return f"{head}: ERROR {outcome.error}"
    return f"{head}: {outcome.verdict.summary()}"


def _report(outcome: Outcome) -> str:
    """The verdict artifact: summary, warnings and each metric's largest difference."""
    verdict = outcome.verdict
    head = f"reproduction of run {outcome.original_id} ({outcome.run_name}) as run {outcome.new_id}"
    lines = [head, verdict.summary(), ""]
    lines += ["warnings:", *(f"  {w}" for w in outcome.warnings or ["none"]), ""]
    lines += ["max abs diff per metric:", *(f"  {k:<26} {v!r}" for k, v in verdict.per_metric.items())]
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.reproduce",
        description=(
            "Re-run a tracked run from its logged config.yaml artifact (not from today's defaults), log a new run "
            f"tagged {REPRODUCED_FROM_TAG}=RUN_ID, and compare every metric's per-epoch history with the original's "
            "step by step (system metrics such as epoch_seconds excepted). The verdict is printed and logged on the new run "
            f"(tags {VERDICT_TAG}, reproduction_first_difference, reproduction_max_abs_diff; "
            f"artifact {VERDICT_ARTIFACT})."
        ),
        epilog=(
            "exit status: 0 identical (or within --tolerance), 1 a metric differs, "
            "2 bad input or a run that could not be reproduced"
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "run_id", nargs="?", metavar="RUN_ID", help="the MLflow run ID to reproduce (a sweep child works too)"
    )
    target.add_argument(
        "--sweep",
        metavar="PARENT_RUN_ID",
        help="reproduce every child run of this sweep parent, under a new parent run tagged reproduced_from",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the store holding the run (default: $MLFLOW_TRACKING_URI, else the project's store "
        "sqlite:///<project>/mlruns/mlflow.db); the new run is logged there too",
    )
    parser.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=0.0,
        help="largest absolute per-value difference still accepted: exit 0, verdict within_tolerance (default: 0)",
    )
    parser.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hide (--quiet) or show (--no-quiet) progress bars; default: as the original run",
    )
    return parser.parse_args(argv)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be 0 or positive, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("src.epochs").setLevel(logging.WARNING)  # the progress bars show epochs already
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar for one small YAML is noise
    # SIGTERM ends the run like Ctrl-C: KILLED in MLflow, never left RUNNING.
    handle_interrupts()
    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        client = open_store(tracking_uri)
        if args.sweep:
            outcomes = reproduce_sweep(client, tracking_uri, args.sweep, tolerance=args.tolerance, quiet=args.quiet)
            print("\n".join(_line(o) for o in outcomes))
            return max(o.exit_code for o in outcomes)
        outcome = reproduce_run(client, tracking_uri, args.run_id, tolerance=args.tolerance, quiet=args.quiet)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # RunInterrupted included: the new run is already KILLED
        print("error: interrupted", file=sys.stderr)
        return 130
    hint = f" ({len(outcome.warnings)} warnings above may explain it)" if outcome.exit_code and outcome.warnings else ""
    print(_line(outcome) + hint)
    return outcome.exit_code

