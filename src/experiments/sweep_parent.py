"""A sweep's parent run: the one way it is made, found by its jobs, described, summarized and ended."""

import hashlib
import json
from urllib.parse import urlencode
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from src.analysis.compare import compare_runs
from src.core.interrupts import signals_blocked
from src.core.metrics import LEGACY_TASK, data_loss
from src.core.redaction import redact
from src.core.runstates import FAILED, FINISHED, KILLED, PRUNED, RUNNING, SKIPPED
from src.tracking.liveness import DEAD_TAG, HEARTBEAT_TAG, dead_reason, process_tags
from src.tracking.provenance import flat_params, source_tags
from src.tracking.run import ui_link
from src.tracking.store import PARENT_TAG, SWEEP_OVERRIDES_TAG, SWEEP_TAG, client

PARENT_RUN_FILE = "mlflow_parent_run.json"
# the sweep's parent run ID, given to every job as `hydra.job.env_set.OVERFIT_SWEEP_PARENT`: decided once in the
# launching process, it travels with each job's config to any machine (a folder is shared by concurrent sweeps)
PARENT_ENV = "OVERFIT_SWEEP_PARENT"
SWEEP_KEY_TAG = "sweep_key"  # what a sweep is, whatever its folder or launcher: found again by `resume=true`


def create_parent_run(
    tracking_uri: str, exp_id: str, *, name: str, overrides: Sequence[str], tags: Optional[Dict[str, str]] = None,
    command: str = "src.train",
) -> str:
    """A sweep's parent run, tagged sweep=true with its overrides (passwords masked); returns its ID."""
    identity = {k: v for k, v in process_tags().items() if k != HEARTBEAT_TAG}  # its jobs beat, not the parent
    all_tags = {
        SWEEP_TAG: "true",
        SWEEP_OVERRIDES_TAG: redact(" ".join(overrides))[:5000],
        **source_tags(command),
        **identity,
        **(tags or {}),
    }
    return client(tracking_uri).create_run(exp_id, run_name=redact(name)[:250], tags=all_tags).info.run_id


def end_parent_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a parent run ended, holding Ctrl-C until it is written."""
    with signals_blocked():
        client(tracking_uri).set_terminated(run_id, status)


def sweep_status(statuses: Sequence[str], completed: bool) -> str:
    """A parent's end state: KILLED if a job was, FINISHED only if the sweep completed and every job finished."""
    if KILLED in statuses or RUNNING in statuses:
        return KILLED
    if completed and all(s in (FINISHED, SKIPPED, PRUNED) for s in statuses):
        return FINISHED
    return FAILED


def sweep_key(overrides: Sequence[str]) -> str:
    """What makes two commands the same sweep: their overrides but `resume` and Hydra's own (folder, launcher)."""
    kept = sorted(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "resume=")))
    return hashlib.sha256(redact("\n".join(kept)).encode()).hexdigest()[:16]


def resumable_parent(tracking_uri: str, exp_id: str, key: str) -> Optional[str]:
    """The latest parent run of this sweep that no live process holds (it ended, or its process died), or None."""
    runs = client(tracking_uri).search_runs(
        [exp_id], filter_string=f"tags.{SWEEP_TAG} = 'true' and tags.{SWEEP_KEY_TAG} = '{key}'",
        order_by=["attributes.start_time DESC"], max_results=20)
    return next((r.info.run_id for r in runs if r.info.status != RUNNING or dead_reason(r) is not None), None)


def reopen_parent_run(tracking_uri: str, run_id: str, tags: Optional[Dict[str, str]] = None) -> None:
    """An ended parent run taken over by this process: RUNNING again, under this process's identity (so the dead-run
    check judges this process, not the one that made it, long gone), what that process's end left behind removed."""
    mlflow_client = client(tracking_uri)
    for key, value in {**process_tags(), **(tags or {})}.items():
        if key != HEARTBEAT_TAG:  # its jobs beat, not the parent
            mlflow_client.set_tag(run_id, key, value)
    for stale in (DEAD_TAG, "error"):
        if stale in mlflow_client.get_run(run_id).data.tags:
            mlflow_client.delete_tag(run_id, stale)
    mlflow_client.update_run(run_id, status=RUNNING)


def read_parent_run_id(sweep_dir: Path) -> Optional[str]:
    path = sweep_dir / PARENT_RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.exists() else None


def find_parent_run_id(sweep_dir: Path, tracking_uri: str, experiment_name: str, env_set=None) -> Optional[str]:
    """A job's sweep parent: the one its config names (`hydra.job.env_set`), else (a sweep of an older version) from
    the sweep's folder or the RUNNING parent run tagged with the folder, through the tracking server."""
    run_id = (env_set or {}).get(PARENT_ENV) or read_parent_run_id(sweep_dir)
    if run_id is not None:
        return run_id
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(redact(experiment_name))  # as the store holds it: masked
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.{SWEEP_TAG} = 'true' and tags.sweep_dir = '{sweep_dir}' and attributes.status = 'RUNNING'",
    )
    return runs[0].info.run_id if runs else None


NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI


def objective(task: str) -> str:
    """What a sweep's best child is picked by (lower is better): the task's validation data loss."""
    return f"val_{data_loss(getattr(task, 'value', task))}"


@dataclass
class SweepPlan:
    """What a sweep varies: each swept key's values, the fixed overrides, the number of jobs, a short name."""

    axes: Dict[str, List[str]]
    fixed: List[str]
    jobs: int
    name: str

    @classmethod
    def of(cls, config: DictConfig, overrides: Sequence[str]) -> "SweepPlan":
        from hydra.core.override_parser.overrides_parser import OverridesParser

        axes, fixed = {}, []
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            key = override.get_key_element()
            if override.is_sweep_override():
                try:
                    axes[key] = [str(v) for v in override.sweep_string_iterator()]
                except Exception:  # an interval: only a search samples it, so it is shown as written
                    axes[key] = [override.input_line.split("=", 1)[1]]
            elif not key.lstrip("+~").startswith(("mlflow.", "hydra")):
                fixed.append(override.input_line)
        searched = is_search(config.hydra)
        jobs = int(config.hydra.sweeper.n_trials) if searched else _product(len(v) for v in axes.values())
        model = "" if "model" in axes else f" {config.model.name}"
        epochs = "" if "train.epochs" in axes else f" {config.train.epochs}ep"
        kind = "search" if searched else "sweep"
        name = f"{kind} {jobs}×{model}{epochs} {'×'.join(axes) or 'no axes'}"
        return cls(axes, fixed, jobs, name)

    def note(self, sweep_dir: Path, task: str) -> str:
        """The parent's description: the command, what is swept, what is fixed, where the comparison lives."""
        best_by = objective(task)
        swept = "\n".join(f"- `{k}`: {', '.join(v)}" for k, v in self.axes.items())
        return redact(
            f"**{self.name}**: {self.jobs} runs, nested below.\n\n"
            f"Command: `python -m src.train -m {' '.join([*self.fixed, *(f'{k}=' + ','.join(v) for k, v in self.axes.items())])}`\n\n"
            f"Swept:\n{swept}\n\nFixed: {' '.join(f'`{f}`' for f in self.fixed) or 'the defaults'} "
            f"(every other value is a param of this run).\n\n"
            + (self.searched_note() if self.name.startswith("search") else
               f"Comparison: the artifacts under `compare/` (the overlay of `{best_by}` and `table.txt`), written "
               f"when the sweep ends; the best child is the metric `best_{best_by}` and the tag `best_run_name`. "
               f"Again at any time: `python -m src.compare <this run's ID>`.")
            + f"\n\nFolder: `{sweep_dir}`"
        )

    @staticmethod
    def searched_note() -> str:
        """What a search's parent holds once its batches are done (it has no compare/ artifacts)."""
        return ("The study's summary, refreshed after every command that adds trials: the best trial's values as "
                "`best.*` tags (the searched keys are never this run's params: those could not change when more "
                "trials find a better one) and `optuna.best_trial`, its value as a metric, the trial counts (`trials_complete`, "
                "`trials_pruned`, `trials_failed`) and Optuna's figures under `optuna/`.")


def _product(numbers) -> int:
    total = 1
    for n in numbers:
        total *= n
    return total


def log_shared_params(tracking_uri: str, run_id: str, config: DictConfig, axes: Dict[str, List[str]]) -> None:
    """The config every child shares (what is not swept) as the parent's params."""
    from mlflow.entities import Param

    plain = {k: v for k, v in config.items() if k != "hydra"}
    params = {k: v for k, v in flat_params(OmegaConf.create(plain)).items()
              if not any(k == axis or k.startswith(axis + ".") for axis in axes)}
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client(tracking_uri).log_batch(run_id, params=items[i:i + 100])


def summarize_on_parent(tracking_uri: str, run_id: str, sweep_dir: Path, ui_url: str) -> None:
    """At a sweep's end: `src.compare`'s figures and table on the parent, its best child as metric and tags, and a
    link to MLflow's compare page for exactly its children."""
    mlflow_client = client(tracking_uri)
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run_id}' and attributes.status = 'FINISHED'")
    best_by = {objective(child.data.params.get("task", LEGACY_TASK)) for child in children}
    if len(best_by) != 1:  # no child yet, or children of several tasks: no loss they share to pick the best by
        return
    best_by, best, curves = best_by.pop(), None, {}
    for child in children:
        values = [m.value for m in sorted(mlflow_client.get_metric_history(child.info.run_id, best_by),
                                          key=lambda m: m.step)]
        curves[child.info.run_id] = values
        if values and (best is None or min(values) < best[0]):
            best = (min(values), child)
    if best is None:
        return
    from mlflow.entities import Metric, RunTag

    # bit-identical twins (fit and tape) are named together, not one of them picked as if it were better
    twins = sorted(c.info.run_name for c in children if curves[c.info.run_id] == curves[best[1].info.run_id])
    best_name = f"{' = '.join(twins)}, bit-identical" if len(twins) > 1 else best[1].info.run_name
    mlflow_client.log_batch(run_id, metrics=[Metric(f"best_{best_by}", best[0], int(time.time() * 1000), 0)],
                            tags=[RunTag("best_run_id", best[1].info.run_id), RunTag("best_run_name", best_name[:5000])])
    comparison = compare_runs(tracking_uri, [run_id], out=sweep_dir / "compare")  # figures and table, logged on it
    experiment = children[0].info.experiment_id
    link = ui_link(tracking_uri, ui_url, "#/compare-runs?" + urlencode(
        {"runs": json.dumps([c.info.run_id for c in children]), "experiments": json.dumps([experiment])}))
    note = mlflow_client.get_run(run_id).data.tags.get(NOTE_TAG, "") + f"\n\n[Its runs side by side]({link})"
    if comparison.verdicts:  # the description states each pair's verdict in one line
        verdicts = "\n".join(f"- {line}" for line in comparison.verdicts)
        note += (f"\n\n**Is the difference real?** Paired over matching seeds, 95 % bootstrap intervals "
                 f"(every summary: `compare/table.txt`):\n{verdicts}")
    mlflow_client.set_tag(run_id, NOTE_TAG, redact(note)[:5000])
    print(comparison.table, end="", file=sys.stderr)
    print(comparison.report_lines(), file=sys.stderr)
    print(f"its runs side by side: {redact(link)}", file=sys.stderr)


def is_search(hydra_cfg) -> bool:
    """Whether a multirun is an Optuna search (hydra/sweeper=optuna) rather than a grid sweep."""
    return str(hydra_cfg.sweeper.get("_target_", "")).endswith("optuna_sweeper.OptunaSweeper")


def register_best_of(tracking_uri: str, parent_run_id: str, experiment_name: str) -> None:
    """mlflow.register_best: the best child's (a sweep's best_run_id, a search's optuna.best_run_id) model into the
    registry as `models:/<experiment_name>@best`, and the parent tagged with it."""
    from src.tracking.registry import register_best

    tags = client(tracking_uri).get_run(parent_run_id).data.tags
    best = tags.get("best_run_id") or tags.get("optuna.best_run_id")
    if best is None:  # no finished child had a value to rank by
        print(f"sweep {parent_run_id}: no best run, nothing registered", file=sys.stderr)
        return
    why = f"The best run ({best}) of {'search' if 'optuna.best_run_id' in tags else 'sweep'} {parent_run_id}."
    try:
        uri = register_best(tracking_uri, best, experiment_name, why=why)
    except Exception as exc:  # the registry is a nicety: the sweep's runs and its parent's end stand without it
        print(f"sweep {parent_run_id}: best model not registered ({type(exc).__name__}: {redact(str(exc))[:200]})",
              file=sys.stderr)
        return
    if uri is not None:
        client(tracking_uri).set_tag(parent_run_id, "registered_best", uri)
        print(f"best model registered: {uri} (run {best})", file=sys.stderr)
