"""An original run and its reproduction compared: every metric value step by step, and what else differs."""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig

from src.core.metrics import is_system_metric
from src.core.schema import STRATEGY_OPTIONS
from src.tracking.provenance import config_digest, git_state
from src.tracking.store import CONFIG_ARTIFACT, DATA_DIGEST_TAG, DIGEST_TAG, Histories

VERDICT_TAG = "reproduction_verdict"
IDENTICAL, WITHIN_TOLERANCE, DIFFERS = "identical", "within_tolerance", "differs"
SEVERITY = (IDENTICAL, WITHIN_TOLERANCE, DIFFERS)  # from best to worst
# Tags whose difference can change the numbers; each gets a warning.
SOFTWARE_TAGS = ("tensorflow_version", "keras_version", "numpy_version", "python_version")
# Tags a run logs about where it ran; known only once the reproduction has run too.
RUNTIME_TAGS = ("devices", "strategy", "replicas")


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
    new_metrics: List[str] = field(default_factory=list)  # logged by the reproduction only: code newer than the run

    def summary(self) -> str:
        scope = f"{self.n_metrics} metrics x {self.n_steps} epochs, system metrics ignored"
        if self.new_metrics:
            scope += f"; not in the original: {', '.join(self.new_metrics)}"
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


def compare_histories(
    original: Histories, reproduced: Histories, tolerance: float = 0.0, order: Sequence[str] = ()
) -> Verdict:
    """Every metric of the original at every step; the first difference is the earliest step, metrics in `order` first.

    A metric only the reproduction logged (one added to the code since the original ran) is listed, not compared.
    """
    # wall-clock time and the machine's load are never reproducible; every other logged metric must be
    keys = [k for k in original if not is_system_metric(k)]
    new_metrics = sorted(k for k in reproduced if k not in original and not is_system_metric(k))
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
    return Verdict(status, len(keys), len(steps), tolerance, diffs[0] if diffs else None, max_abs, per_metric,
                   new_metrics)


# --- what may differ besides the code path ------------------------------------


def environment_warnings(
    original_tags: Dict[str, str], cfg: DictConfig, filled: Dict[str, Any], dropped: Dict[str, Any]
) -> List[str]:
    """Differences between the original run's code, software and config digest and today's."""
    from src.tracking.provenance import software_versions  # imports TensorFlow

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
    if original_tags.get(DIGEST_TAG) != digest:
        warnings.append(
            f"config digest differs: the run's tag says {original_tags.get(DIGEST_TAG)}, "
            f"its {CONFIG_ARTIFACT} gives {digest} (artifact edited, or logged by another version)"
        )
    return warnings


def runtime_warnings(original, reproduced) -> List[str]:
    """Devices or distribution strategy (tags logged by the run) that differ from the original's."""
    then, now = dict(original.data.tags), reproduced.data.tags
    if "strategy" in then:  # runs before the tag took the option's name logged the class's
        then["strategy"] = STRATEGY_OPTIONS.get(then["strategy"], then["strategy"])
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

    full_then, full_now = original.data.tags.get(DATA_DIGEST_TAG), reproduced.data.tags.get(DATA_DIGEST_TAG)
    if full_then and full_then != full_now:
        return [f"data digest differs: original {full_then[:16]}, now {(full_now or 'none')[:16]}: the data changed"]
    if full_then:  # every value is the same: the datasets' digests of older runs (MLflow's first rows) may differ
        return []
    then, now = digests(original), digests(reproduced)
    if not then:
        return ["the original run logged no datasets: cannot check that the data is the same"]
    return [
        f"dataset digest differs ({context}): original {then[context]}, now {now.get(context, 'none')}: "
        "the data changed"
        for context in sorted(then)
        if then[context] != now.get(context)
    ]
