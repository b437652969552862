"""Hyperparameter search with Optuna (`hydra/sweeper=optuna`): the search space from Hydra's sweep syntax, the
trials' objective, per-epoch pruning inside a trial, and the study's summary on its MLflow parent run.

The Hydra side (the Sweeper plugin) is `hydra_plugins.overfit_lab.optuna_sweeper`; it only asks, launches and
tells. A trial is an ordinary job with `trial.study`/`trial.id` set: it reports each epoch to the study through
its storage, so pruning works in any launcher's worker on any machine that reaches that storage.
"""

import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from src.core import compat
from src.core.errors import ConfigError, first_line
from src.core.metrics import LEGACY_TASK, data_loss, monitorable
from src.core.redaction import redact
from src.core.runstates import PRUNED

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its MLflow parent run
REDUCTIONS = ("best", "last")
DIRECTIONS = ("minimize", "maximize")


# --- the search space ------------------------------------------------------------


def search_space(arguments: Sequence[str], params: Dict[str, str], config_loader=None) -> Tuple[List[str], Dict]:
    """(fixed overrides, {key: Optuna distribution}) from the command line and `hydra.sweeper.params`.

    `interval(a, b)` is a float range, `tag(int, interval(a, b))` an integer one, `tag(log, ...)` on a log scale,
    `choice(a, b, ...)` and `range(a, b[, step])` categorical; anything else is fixed for every trial.
    """
    import optuna.distributions as od
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create(config_loader=config_loader)
    written = [f"{key}={value}" for key, value in (params or {}).items()]
    fixed, space = [], {}
    for override in parser.parse_overrides([*written, *arguments]):  # the command line wins over the file
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed = [f for f in fixed if not f.startswith(f"{key}=")] + [override.input_line]
            space.pop(key, None)
            continue
        sweep = override.value()
        if isinstance(sweep, IntervalSweep):
            log_scale = "log" in sweep.tags
            try:
                if "int" in sweep.tags:  # Hydra parses interval()'s ends as floats; tag(int, ...) asks for integers
                    space[key] = od.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
                else:
                    space[key] = od.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
            except ValueError as exc:  # low > high, a log scale through 0
                raise ConfigError(f"{override.input_line}: not a search range ({first_line(exc)})") from None
        elif isinstance(sweep, ChoiceSweep):
            space[key] = od.CategoricalDistribution([_choice_value(c) for c in sweep.list])
        elif isinstance(sweep, RangeSweep):
            space[key] = od.CategoricalDistribution(list(_range_values(sweep)))
        else:
            raise ConfigError(f"{key}: the optuna sweeper takes interval(), tag(log, interval()), choice() or "
                              f"range(), not {override.input_line!r}")
        fixed = [f for f in fixed if not f.startswith(f"{key}=")]
    if not space:
        raise ConfigError("hydra/sweeper=optuna: nothing to search; give e.g. 'reg.l2=tag(log, interval(1e-5, 1e-2))' "
                          "or hydra.sweeper.params")
    return fixed, space


def _choice_value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _range_values(sweep) -> List[Any]:
    values, value = [], sweep.start
    while (sweep.step > 0 and value < sweep.stop) or (sweep.step < 0 and value > sweep.stop):
        values.append(value)
        value += sweep.step
    return values


def check_space(config: DictConfig, arguments: Sequence[str], params: Dict[str, str]) -> None:
    """The search space checked before a parent run or a study exists: every range well-formed, every key one the
    config has (`+key` adds one on purpose, to a user's own option)."""
    _, space = search_space(arguments, params)
    absent = object()
    for key in space:
        if not key.startswith("+") and OmegaConf.select(config, key, default=absent) is absent:
            raise ConfigError(f"{key}: no such config key, so the search cannot vary it ({_absent_key_hint(config, key)})")


def _absent_key_hint(config: DictConfig, key: str) -> str:
    """The nearest key of a schema's section (which + cannot extend: see config.validate), or how to add one to a
    user's own option."""
    import dataclasses

    from src.core.config import unknown_key_hint

    section, _, name = key.rpartition(".")
    node = OmegaConf.select(config, section) if section else config
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        return unknown_key_hint(node, name, f"{section}." if section else "")
    return f"add it with +{key}=..."


def trial_overrides(params: Dict[str, Any]) -> List[str]:
    """A trial's sampled values as Hydra overrides (a float keeps its full repr)."""
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()]


# --- the objective ---------------------------------------------------------------


@dataclass
class Objective:
    """What a trial is scored by: a per-epoch metric, minimized or maximized, its best or last value."""

    metric: str
    direction: str
    reduce: str

    @classmethod
    def from_config(cls, node: DictConfig, task: str = LEGACY_TASK) -> "Objective":
        """The objective a sweeper's `objective` node names; metric null: the task's validation data loss."""
        task = getattr(task, "value", task)
        objective = cls(node.metric or f"val_{data_loss(task)}", node.direction, node.reduce)
        if objective.metric not in monitorable(task):
            raise ConfigError(f"hydra.sweeper.objective.metric={objective.metric}: not a per-epoch metric of "
                              f"task={task}; one of {', '.join(monitorable(task))}")
        if objective.direction not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.objective.direction={objective.direction}: minimize or maximize")
        if objective.reduce not in REDUCTIONS:
            raise ConfigError(f"hydra.sweeper.objective.reduce={objective.reduce}: best or last")
        return objective

    def value(self, history: Dict[str, List[float]]) -> float:
        values = history[self.metric]
        if self.reduce == "last":
            return values[-1]
        return min(values) if self.direction == "minimize" else max(values)

    @property
    def name(self) -> str:
        return f"{self.reduce}_{self.metric}"


def check_settings(sweeper_cfg: DictConfig, task: str = LEGACY_TASK) -> "Objective":
    """The sweeper's settings that can be wrong, checked before a parent run or a trial exists."""
    objective = Objective.from_config(sweeper_cfg.objective, task)
    if sweeper_cfg.n_trials < 1 or sweeper_cfg.n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={sweeper_cfg.n_trials}, hydra.sweeper.n_jobs={sweeper_cfg.n_jobs}: "
                          "both must be at least 1")
    storage_of(sweeper_cfg.storage)  # SQLAlchemy checks the URL's form here; it connects at the first use
    return objective


# --- the study -------------------------------------------------------------------


def open_study(sweeper_cfg: DictConfig, study_name: str, *, create: bool):
    """The study in its storage: created (or continued, if one by that name exists) by the sweeper, loaded by a trial.
    Both build the pruner from the same config, so a trial's worker prunes as the search asked."""
    import optuna
    from hydra.utils import instantiate

    storage = storage_of(sweeper_cfg.storage)
    pruner = instantiate(sweeper_cfg.pruner) if sweeper_cfg.pruner is not None else optuna.pruners.NopPruner()
    if not create:
        return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    sampler = instantiate(sweeper_cfg.sampler) if sweeper_cfg.sampler is not None else None
    return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                               direction=sweeper_cfg.objective.direction, load_if_exists=True)


def storage_of(url: Optional[str]):
    """Optuna's storage for a URL: SQLite waits out another worker's write lock instead of failing at once."""
    import optuna

    if not url:
        raise ConfigError("hydra.sweeper.storage: required (e.g. sqlite:///optuna.db, or postgresql+psycopg2://... "
                          "shared by workers on several machines): trials report to the study through it")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)  # it connects (and makes its tables) here
    except Exception as exc:  # SQLAlchemy's (no driver, a bad URL, no server), Optuna's, an unwritable SQLite folder
        why = re.sub(r"^\(\w+\.\w+\) ", "", first_line(exc))
        raise ConfigError(f"hydra.sweeper.storage={redact(url)}: cannot open the study's storage ({why})") from None


def new_study_name() -> str:
    return f"search-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def study_parent_run(sweeper_cfg: DictConfig) -> Optional[str]:
    """The MLflow parent run of the named study if it has one already (a resumed study, a second worker)."""
    import optuna

    if not sweeper_cfg.get("study_name"):
        return None
    try:
        study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage_of(sweeper_cfg.storage))
    except KeyError:  # no such study yet
        return None
    return study.user_attrs.get(PARENT_ATTR)


# --- inside a trial --------------------------------------------------------------


class TrialReporter:
    """An epoch callback of a trial's job: reports the objective's metric to the study each epoch and asks the
    pruner; returns True (stop training after this epoch) once the trial should be pruned."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_epoch: Optional[int] = None
        self.values: List[float] = []  # the metric, epoch by epoch, as reported

    def __call__(self, epoch: int, metrics: Dict[str, float]) -> bool:
        value = metrics[self.metric]
        if not math.isfinite(value):
            return False  # the loop fails the run on a non-finite loss; a NaN metric is not a value to report
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            log.info("trial %d pruned after epoch %d (%s=%.4f)", self.trial.number, epoch, self.metric, value)
            return True
        return False

    def identity_tags(self) -> Dict[str, str]:
        """The tags the trial's MLflow run starts with, so a trial that fails is found too: its study and number."""
        return {"optuna.study": self.trial.study.study_name, "optuna.trial": str(self.trial.number)}

    def run_tags(self) -> Dict[str, str]:
        """The tags of the trial's MLflow run once it has trained: whether it completed or was pruned, and when."""
        tags = {"optuna.state": "COMPLETE" if self.pruned_epoch is None else PRUNED}
        if self.pruned_epoch is not None:
            tags["optuna.pruned_epoch"] = str(self.pruned_epoch)
        best = (min if self.trial.study.direction.name == "MINIMIZE" else max)(self.values) if self.values else None
        ended = "complete" if self.pruned_epoch is None else f"pruned after epoch {self.pruned_epoch}"
        tags["mlflow.note.content"] = (f"Trial {self.trial.number} of the Optuna study `{self.trial.study.study_name}`: "
                                       f"{ended}; best {self.metric} {best:.6g}" if best is not None else
                                       f"Trial {self.trial.number} of `{self.trial.study.study_name}`: {ended}")
        return tags


def trial_reporter(trial_cfg: DictConfig, sweeper_cfg: Optional[DictConfig], task: str = LEGACY_TASK
                   ) -> Optional[TrialReporter]:
    """The reporter of a job launched as a trial by the optuna sweeper; None for any other job."""
    if trial_cfg.id is None:
        return None
    if sweeper_cfg is None or "objective" not in sweeper_cfg:
        raise ConfigError("trial.id is set by the optuna sweeper only (hydra/sweeper=optuna); leave trial.* null")
    study = open_study(sweeper_cfg, trial_cfg.study, create=False)
    metric = Objective.from_config(sweeper_cfg.objective, task).metric
    return TrialReporter(compat.optuna_trial(study, trial_cfg.id), metric)





def register_sweeper() -> None:
    """Make `hydra/sweeper=optuna` and the project's launchers findable: Hydra scans the `hydra_plugins` namespace on
    disk, which an editable install of this project does not extend (its modules import, but are not listed)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.overfit_lab.launchers import JoblibLauncher, LocalLauncher
    from hydra_plugins.overfit_lab.optuna_sweeper import OptunaSweeper

    for plugin in (OptunaSweeper, JoblibLauncher, LocalLauncher):
        Plugins.instance().register(plugin)


def silence_optuna() -> None:
    """Optuna's per-trial INFO lines repeat what the job logs say; keep its warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

