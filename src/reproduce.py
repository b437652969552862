"""`python -m src.reproduce RUN_ID`: re-run a logged run's own config and check its metrics bit for bit."""

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.config import CONFIG_DIR, Config, FitLoopConfig, TapeLoopConfig
from src.errors import UserError
from src.tracking import (
    CONFIG_ARTIFACT,
    PARENT_TAG,
    config_digest,
    default_tracking_uri,
    get_run,
    git_state,
    open_store,
    project_mlflow_defaults,
    redact_uri,
    sweep_children,
)

log = logging.getLogger(__name__)

REPRODUCED_FROM_TAG = "reproduced_from"
VERDICT_TAG = "reproduction_verdict"
VERDICT_ARTIFACT = "reproduction.txt"
# Wall-clock time is never reproducible; every other logged metric must be.
IGNORED_METRICS = ("epoch_seconds",)
# Tags whose difference can change the numbers; each gets a warning.
SOFTWARE_TAGS = ("tensorflow_version", "keras_version", "numpy_version", "python_version")
# Tags a run logs about where it ran; known only once the reproduction has run too.
RUNTIME_TAGS = ("devices", "strategy", "replicas")
LOOP_SCHEMAS = {"fit": FitLoopConfig, "tape": TapeLoopConfig}
IDENTICAL, WITHIN_TOLERANCE, DIFFERS = "identical", "within_tolerance", "differs"
EXIT_CODES = {IDENTICAL: 0, WITHIN_TOLERANCE: 0, DIFFERS: 1}


class ReproduceError(UserError):
    """A run that cannot be reproduced: unknown, foreign, or without its config."""


# --- the logged config --------------------------------------------------------


def logged_config(client, run) -> Tuple[DictConfig, Dict[str, Any], Dict[str, Any]]:
    """The run's `config.yaml` artifact, type-checked, with the keys filled and dropped (key -> value)."""
    # Keys the schema gained after the run take today's defaults for the run's
    # options; keys it lost are dropped. Both are returned so the caller can warn.
    run_id = run.info.run_id
    tags = run.data.tags
    if tags.get("sweep") == "true":
        raise ReproduceError(f"run {run_id} is a sweep parent; reproduce its children with --sweep {run_id}")
    if "config_digest" not in tags:
        raise ReproduceError(f"run {run_id}: not a run of this project (no config_digest tag)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, dst_path=tmp)
            text = Path(path).read_text()
        except Exception:  # MLflow raises its own or OSError, depending on the artifact store
            raise ReproduceError(f"run {run_id}: no {CONFIG_ARTIFACT} artifact, so its config is unknown") from None
    try:
        loaded, dropped = drop_unknown_keys(OmegaConf.create(text))
        cfg = typed_config(loaded, strict=False)
        filled = fill_missing(cfg)
    except (OmegaConfBaseException, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReproduceError(
            f"run {run_id}: {CONFIG_ARTIFACT} does not fit this project's config schema: {first}"
        ) from None
    return cfg, filled, dropped


def drop_unknown_keys(loaded: DictConfig) -> Tuple[DictConfig, Dict[str, Any]]:
    """`loaded` without the keys today's schema lacks (removed since the run), and those keys with their values."""
    if not isinstance(loaded, DictConfig):
        raise ValueError("not a YAML mapping")
    container = OmegaConf.to_container(loaded)
    dropped: Dict[str, Any] = {}

    def walk(node: Dict[str, Any], schema, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for key in list(node):
            if key not in hints:
                dropped[prefix + key] = node.pop(key)
                continue
            sub = hints[key]
            if schema is Config and key == "loop" and isinstance(node[key], dict):
                sub = LOOP_SCHEMAS.get(node[key].get("name"))  # an unknown loop fails in typed_config
            if dataclasses.is_dataclass(sub) and isinstance(node[key], dict):
                walk(node[key], sub, f"{prefix}{key}.")

    walk(container, Config, "")
    return OmegaConf.create(container), dropped


def typed_config(loaded: DictConfig, strict: bool = True) -> DictConfig:
    """`loaded` over the structured schema (types, key names checked as Hydra would); strict: no key missing."""
    if not isinstance(loaded, DictConfig):
        raise ValueError("not a YAML mapping")
    loop = loaded.get("loop")
    name = loop.get("name") if isinstance(loop, DictConfig) else None
    if name not in LOOP_SCHEMAS:
        raise ValueError(f"loop.name={name}: must be one of {sorted(LOOP_SCHEMAS)}")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), loaded)
    # `loop` is typed Any in Config (its schema depends on the option); check it by its own schema.
    cfg.loop = OmegaConf.merge(OmegaConf.structured(LOOP_SCHEMAS[name]), loop)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if strict and missing:
        raise ValueError(f"missing values: {', '.join(missing)}")
    return cfg


def fill_missing(cfg: DictConfig) -> Dict[str, Any]:
    """Give keys still missing today's default for the run's group options; returns key -> value used."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return {}
    try:
        defaults = _today_defaults(cfg)
    except Exception as exc:  # Hydra's composition errors share no base class with ValueError
        raise ValueError(f"missing values {', '.join(missing)}, and today's config does not compose: {exc}") from None
    filled = {}
    for key in missing:
        value = OmegaConf.select(defaults, key, default=None)
        if value is None:
            raise ValueError(f"missing value {key}, and today's config has no default for it")
        OmegaConf.update(cfg, key, value, merge=False)
        filled[key] = value
    return filled


def _today_defaults(cfg: DictConfig) -> DictConfig:
    """Today's composed config with the run's group options (option files are named after their `name`)."""
    from hydra import compose, initialize_config_dir

    groups = ("model", "reg", "loop", "data")
    overrides = [
        f"{group}={cfg[group].name}"
        for group in groups
        if (CONFIG_DIR / group / f"{cfg[group].name}.yaml").exists()
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = compose("config", overrides=overrides)
    return OmegaConf.create(OmegaConf.to_container(composed, resolve=True))


# --- comparing histories ------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One metric value at one step that differs (None = absent in that run)."""

    metric: str
    step: int
    original: Optional[float]
    reproduced: Optional[float]

    @property
    def abs_diff(self) -> float:
        if self.original is None or self.reproduced is None:
            return math.inf
        if math.isnan(self.original) and math.isnan(self.reproduced):
            return 0.0
        return abs(self.original - self.reproduced)

    def describe(self) -> str:
        if self.reproduced is None:
            return f"{self.metric} at epoch {self.step}: original {self.original!r}, missing in the reproduction"
        if self.original is None:
            return f"{self.metric} at epoch {self.step}: reproduction {self.reproduced!r}, missing in the original"
        rel = self.abs_diff / abs(self.original) if self.original else math.inf
        return (
            f"{self.metric} at epoch {self.step}: original {self.original!r} vs reproduction {self.reproduced!r} "
            f"(abs diff {self.abs_diff:.3g}, rel {rel:.3g})"
        )


@dataclass
class Verdict:
    """The outcome of comparing every metric's history step by step."""

    status: str
    n_metrics: int
    n_steps: int
    tolerance: float
    first: Optional[Difference] = None
    max_abs_diff: float = 0.0
    per_metric: Dict[str, float] = field(default_factory=dict)  # metric -> max abs diff

    def summary(self) -> str:
        scope = f"{self.n_metrics} metrics x {self.n_steps} epochs, {', '.join(IGNORED_METRICS)} ignored"
        if self.status == IDENTICAL:
            return f"identical: every value bit-identical ({scope})"
        head = f"{self.status}: max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:g}; {scope})"
        return f"{head}; first difference: {self.first.describe()}"

    def tags(self) -> Dict[str, str]:
        return {
            VERDICT_TAG: self.status,
            "reproduction_first_difference": self.first.describe()[:5000] if self.first else "none",
            "reproduction_max_abs_diff": repr(self.max_abs_diff),
            "reproduction_tolerance": repr(self.tolerance),
        }


Histories = Dict[str, Dict[int, float]]  # metric -> step -> value


def compare_histories(
    original: Histories, reproduced: Histories, tolerance: float = 0.0, order: Sequence[str] = ()
) -> Verdict:
    """Every metric at every step; the first difference is the earliest step, metrics in `order` first."""
    keys = [k for k in {*original, *reproduced} if k not in IGNORED_METRICS]
    rank = {key: i for i, key in enumerate(order)}
    keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
    steps = sorted({s for k in keys for h in (original, reproduced) for s in h.get(k, {})})
    diffs: List[Difference] = []
    for step in steps:
        for key in keys:
            a, b = original.get(key, {}).get(step), reproduced.get(key, {}).get(step)
            # == is bit equality for floats here, except that NaN must also match NaN
            same = a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
            if not same:
                diffs.append(Difference(key, step, a, b))
    per_metric = {key: 0.0 for key in keys}
    for d in diffs:
        per_metric[d.metric] = max(per_metric[d.metric], d.abs_diff)
    max_abs = max(per_metric.values(), default=0.0)
    if not diffs:
        status = IDENTICAL
    elif max_abs <= tolerance:
        status = WITHIN_TOLERANCE
    else:
        status = DIFFERS
    return Verdict(status, len(keys), len(steps), tolerance, diffs[0] if diffs else None, max_abs, per_metric)


def metric_histories(client, run) -> Histories:
    """Every logged metric of a run as step -> value (the latest value if a step was logged twice)."""
    histories: Histories = {}
    for key in run.data.metrics:
        points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        histories[key] = {m.step: m.value for m in points}
    return histories


# --- what may differ besides the code path ------------------------------------


def environment_warnings(
    original_tags: Dict[str, str], cfg: DictConfig, filled: Dict[str, Any], dropped: Dict[str, Any]
) -> List[str]:
    """Differences between the original run's code, software and config digest and today's."""
    from src.tracking import software_versions

    warnings = []
    now = git_state()
    commit_then = original_tags.get("mlflow.source.git.commit", "unknown")
    commit_now = now["mlflow.source.git.commit"]
    if commit_then != commit_now:
        warnings.append(f"git commit differs: original {commit_then}, now {commit_now}")
    flags = (("original", original_tags.get("git_dirty")), ("current", now["git_dirty"]))
    dirty = [who for who, flag in flags if flag != "false"]
    if dirty:
        warnings.append(
            f"uncommitted changes (or unknown state) in the {' and '.join(dirty)} work tree: code may differ"
        )
    versions = software_versions()
    for tag in SOFTWARE_TAGS:
        then = original_tags.get(tag, "unknown")
        if then != versions[tag]:
            warnings.append(f"{tag.replace('_version', '')} version differs: original {then}, now {versions[tag]}")
    if filled:
        values = ", ".join(f"{key}={value}" for key, value in filled.items())
        warnings.append(
            f"keys absent from the run's {CONFIG_ARTIFACT} (added to the project since?) take today's defaults: {values}"
        )
    if dropped:
        values = ", ".join(f"{key}={value}" for key, value in dropped.items())
        warnings.append(f"keys of the run's {CONFIG_ARTIFACT} this project no longer has are ignored: {values}")
    if filled or dropped:
        return warnings  # the digest covers those keys, so it cannot match the original's
    digest = config_digest(cfg)
    if original_tags.get("config_digest") != digest:
        warnings.append(
            f"config digest differs: the run's tag says {original_tags.get('config_digest')}, "
            f"its {CONFIG_ARTIFACT} gives {digest} (artifact edited, or logged by another version)"
        )
    return warnings


def runtime_warnings(original, reproduced) -> List[str]:
    """Devices or distribution strategy (tags logged by the run) that differ from the original's."""
    then, now = original.data.tags, reproduced.data.tags
    return [
        f"{tag} differs: original {then[tag]}, now {now.get(tag, 'unknown')}"
        for tag in RUNTIME_TAGS
        if tag in then and then[tag] != now.get(tag)
    ]


def dataset_warnings(original, reproduced) -> List[str]:
    """Datasets whose digest (by context: training, validation) differs from the original's."""

    def digests(run) -> Dict[str, str]:
        found = {}
        for item in run.inputs.dataset_inputs if run.inputs else []:
            context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), item.dataset.name)
            found[context] = item.dataset.digest
        return found

    then, now = digests(original), digests(reproduced)
    if not then:
        return ["the original run logged no datasets: cannot check that the data is the same"]
    return [
        f"dataset digest differs ({context}): original {then[context]}, now {now.get(context, 'none')}: "
        "the data changed"
        for context in sorted(then)
        if then[context] != now.get(context)
    ]


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
    client,
    tracking_uri: str,
    run_id: str,
    *,
    tolerance: float = 0.0,
    quiet: Optional[bool] = None,
    parent_run_id: Optional[str] = None,
) -> Outcome:
    """Re-run `run_id`'s logged config into a new run tagged `reproduced_from`, and log the verdict on it."""
    from src.train import train

    original = get_run(client, run_id, tracking_uri)
    cfg, filled, dropped = logged_config(client, original)
    # The logged URI may be redacted or another machine's path; this is the store being read.
    cfg.mlflow.tracking_uri = tracking_uri
    cfg.mlflow.experiment_name = client.get_experiment(original.info.experiment_id).name
    cfg.resume = False  # resume would find the original (same digest) and skip the re-run
    if quiet is not None:
        cfg.quiet = quiet
    outcome = Outcome(run_id, original.info.run_name)
    if original.info.status != "FINISHED":
        outcome.warnings.append(f"the original run is {original.info.status}: its history may be partial")
    outcome.warnings.extend(environment_warnings(original.data.tags, cfg, filled, dropped))
    _warn(outcome.warnings, run_id)

    result = train(cfg, parent_run_id=parent_run_id, extra_tags={REPRODUCED_FROM_TAG: run_id})
    outcome.new_id = result["run_id"]
    new = client.get_run(outcome.new_id)
    after = runtime_warnings(original, new) + dataset_warnings(original, new)
    _warn(after, run_id)
    outcome.warnings.extend(after)

    from src.loops import EPOCH_METRICS  # TensorFlow is loaded by now

    verdict = compare_histories(
        metric_histories(client, original), metric_histories(client, new), tolerance, EPOCH_METRICS
    )
    outcome.verdict = verdict
    for key, value in verdict.tags().items():
        client.set_tag(outcome.new_id, key, value)
    client.log_text(outcome.new_id, _report(outcome), VERDICT_ARTIFACT)
    return outcome


def reproduce_sweep(
    client, tracking_uri: str, parent_id: str, *, tolerance: float, quiet: Optional[bool]
) -> List[Outcome]:
    """Every child of a sweep, under a new parent run tagged `reproduced_from=PARENT_ID`."""
    from mlflow.entities import RunStatus

    parent = get_run(client, parent_id, tracking_uri)
    if parent.data.tags.get("sweep") != "true":
        raise ReproduceError(f"--sweep {parent_id}: not a sweep parent run (no tag sweep=true)")
    children = sweep_children(client, parent)
    if not children:
        raise ReproduceError(f"--sweep {parent_id}: the sweep has no child runs")
    tags = {
        "sweep": "true",
        "sweep_overrides": parent.data.tags.get("sweep_overrides", ""),
        REPRODUCED_FROM_TAG: parent_id,
        **git_state(),
    }
    new_parent = client.create_run(
        parent.info.experiment_id, run_name=f"reproduce {parent.info.run_name}"[:250], tags=tags
    ).info.run_id
    print(f"reproducing {len(children)} runs of sweep {parent_id} under new parent run {new_parent}", file=sys.stderr)
    outcomes: List[Outcome] = []
    status = RunStatus.KILLED
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
        status = RunStatus.FAILED if any(o.verdict is None for o in outcomes) else RunStatus.FINISHED
        verdicts = [o.verdict.status for o in outcomes if o.verdict is not None]
        worst = max(verdicts, key=[IDENTICAL, WITHIN_TOLERANCE, DIFFERS].index, default="none")
        client.set_tag(new_parent, VERDICT_TAG, worst)
        client.log_text(new_parent, "\n".join(_line(o) for o in outcomes) + "\n", VERDICT_ARTIFACT)
    finally:
        client.set_terminated(new_parent, RunStatus.to_string(status))
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
            f"step by step ({', '.join(IGNORED_METRICS)} excepted). The verdict is printed and logged on the new run "
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
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    hint = f" ({len(outcome.warnings)} warnings above may explain it)" if outcome.exit_code and outcome.warnings else ""
    print(_line(outcome) + hint)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
