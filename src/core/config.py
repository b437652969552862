"""The composed config: composition from conf/, the checks types cannot express, the run's name, its semantic part."""

import dataclasses
import difflib
import inspect
import math
import os
from enum import Enum
from typing import List, Sequence

from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError
from src.core.metrics import monitorable
from src.core.redaction import redact
from src.core.regularizers import KERNEL_ARGUMENT, REGULARIZERS, knobs_on, option_name
from src.core.schema import ALL_ROWS, CONFIG_DIR, LOOP_SCHEMAS

# Keys (and whole sections) that do not change what a run computes: left out of its config digest. (data.task and
# data.batch_size are only the defaults of `task` and `train.batch_size`, which are in it.)
NON_SEMANTIC_KEYS = ("mlflow", "quiet", "resume", "trial", "train.checkpoint_every", "train.collective_timeout_seconds",
                     "train.reuse_compiled", "data.cache_dir", "data.timeout_seconds", "data.task", "data.batch_size")
# Keys that came after runs were first logged, at the value those runs had without them: a key at that value is left
# out of the digest too, so a tutorial run's config digest is the one it had before (resume and reproduce find it).
LEGACY_VALUES = {
    "task": "binary",
    "model._target_": "src.training.models.dense",
    "data._target_": "src.data.higgs.load",
    "optimizer": {"_target_": "keras.optimizers.Adam", "_partial_": True, "name": "adam"},
}


def is_semantic(key: str) -> bool:
    """Whether a dotted config key can change what a run computes (see NON_SEMANTIC_KEYS)."""
    return not any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


def semantic_part(plain: dict, prefix: str = "") -> dict:
    """A plain config without its non-semantic keys, nor those at their LEGACY_VALUES."""
    return {k: semantic_part(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in plain.items()
            if is_semantic(f"{prefix}{k}") and LEGACY_VALUES.get(f"{prefix}{k}", _ABSENT) != v}


_ABSENT = object()
TUTORIAL_DATA = "higgs"


def compose_config(overrides: Sequence[str] = (), search_path: Sequence[str] = ()) -> DictConfig:
    """The project's config composed from conf/ (and the folders of `search_path`, as `--config-dir` adds one) with
    these overrides, as `python -m src.train` would."""
    from hydra import compose, initialize_config_dir

    extra = [f"hydra.searchpath=[{','.join(f'file://{folder}' for folder in search_path)}]"] if search_path else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*extra, *overrides])


def group_options(group: str) -> List[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python values (enums as their names), for params, digests and YAML."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def validate(cfg: DictConfig) -> None:
    """Reject values that compose but cannot be trained, naming the key."""
    _check_known_keys(cfg)

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"{key}={value.value if isinstance(value, Enum) else value}: {why}")

    need(0 <= cfg.seed < 2**32, "seed", "must be in [0, 2**32)")
    need(cfg.train.epochs >= 1, "train.epochs", "must be at least 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(0 < cfg.train.learning_rate < math.inf, "train.learning_rate", "must be a positive finite number")
    cores = len(os.sched_getaffinity(0))
    need(0 <= cfg.train.threads <= cores, "train.threads", f"must be 0 (all cores) or a count up to this machine's "
                                                            f"{cores} cores")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", "must be 0 (only when interrupted) or more")
    need(cfg.train.lr_decay_epochs > 0, "train.lr_decay_epochs", "must be positive")
    stopping, task = cfg.train.early_stopping, getattr(cfg.task, "value", cfg.task)
    need(stopping.monitor in monitorable(task), "train.early_stopping.monitor",
         f"must be one of {', '.join(monitorable(task))} (task={task})")
    need(stopping.patience >= 0, "train.early_stopping.patience", "must be 0 or more")
    need(stopping.min_delta >= 0, "train.early_stopping.min_delta", "must be 0 or more")
    for section in ("model", "data", "optimizer"):
        need(bool(OmegaConf.select(cfg, f"{section}._target_", default=None)), f"{section}._target_",
             f"required: the callable that makes the {section} (see conf/{section}/)")
        need(bool(OmegaConf.select(cfg, f"{section}.name", default=None)), f"{section}.name",
             f"required: the {section} option's name (it names the runs)")
    need(OmegaConf.select(cfg, "optimizer._partial_", default=False) is True, "optimizer._partial_",
         "must be true: the loop makes the optimizer, with the learning rate and its schedule")
    _validate_data(cfg, need)
    if "hidden_units" in cfg.model:
        need(len(cfg.model.hidden_units) >= 1, "model.hidden_units", "needs at least one layer")
        need(all(u >= 1 for u in cfg.model.hidden_units), "model.hidden_units", "units must be positive")
    for knob, regularizer in REGULARIZERS.items():
        need(regularizer.valid(cfg.reg[knob]), f"reg.{knob}", regularizer.rule)
    named = [] if cfg.reg.name == "none" else cfg.reg.name.split("_")
    need(all(k in REGULARIZERS for k in named), "reg.name",
         f"must be none or knobs joined by _ ({', '.join(REGULARIZERS)})")
    on = knobs_on(cfg.reg)
    example = " ".join([f"reg={option_name(on)}", *(f"reg.{k}={cfg.reg[k]}" for k in on)])
    for knob in REGULARIZERS:
        need((knob in on) == (knob in named), f"reg.{knob}",
             f"contradicts reg={cfg.reg.name}; pick the reg option that matches the values, e.g. {example}")
    need(cfg.loop.name in LOOP_SCHEMAS, "loop.name", f"must be one of {', '.join(LOOP_SCHEMAS)}")
    need(
        not (cfg.train.jit_compile and cfg.train.deterministic and cfg.loop.name == "fit"),
        "train.jit_compile",
        "Keras's fit silently drops XLA while op determinism is on; also set train.deterministic=false",
    )
    need(cfg.train.logical_cpus >= 1, "train.logical_cpus", "must be at least 1")
    need(cfg.train.batch_size % cfg.train.logical_cpus == 0, "train.batch_size",
         f"must be a multiple of train.logical_cpus={cfg.train.logical_cpus}: each replica takes an equal share")
    need(bool(cfg.mlflow.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")
    need(cfg.mlflow.retry_seconds >= 0, "mlflow.retry_seconds", "must be 0 (no retry) or positive")
    need(cfg.mlflow.system_metrics_seconds >= 0.1, "mlflow.system_metrics_seconds", "must be at least 0.1")


# arguments a builder or loader is given by the project, never by an option's keys
GIVEN_ARGUMENTS = ("input_shape", "n_outputs", "name", "progress", KERNEL_ARGUMENT, *REGULARIZERS)


def _check_known_keys(node: DictConfig, path: str = "") -> None:
    """ConfigError for a key that a schema-typed node does not have: Hydra's `+` adds one even in struct mode
    (`+train.epochz=3` would train with the old epochs). A node that names a `_target_` may also hold the target's
    own arguments (an optimizer's `beta_1`); a user's untyped option is checked by its target's signature instead."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        unknown = [k for k in node.keys() if k not in known]
        if unknown and "_target_" in node:
            unknown = [k for k in unknown if k not in _target_arguments(node._target_)]
        if unknown:
            raise ConfigError(f"{path}{unknown[0]}: no such config key ({unknown_key_hint(node, unknown[0], path)})")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_known_keys(child, f"{path}{key}.")


def unknown_key_hint(node: DictConfig, key: str, path: str) -> str:
    """What to say of `key`, absent from the schema-typed `node` (at `path`): its nearest key, else the keys it has."""
    known = [f.name for f in dataclasses.fields(OmegaConf.get_type(node))]
    near = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {path}{near[0]}?" if near else f"{path.rstrip('.') or 'the config'} has {', '.join(known)}"
    return hint + (f"; nor is it an argument of {node._target_}" if "_target_" in node else "")


def _target_arguments(target: str) -> List[str]:
    """The arguments `target` takes by name and an option may set (none when it cannot be imported: that is its own
    error, where it is called). Imported only when a typed option holds keys beyond its schema."""
    from hydra.utils import get_method

    try:
        parameters = inspect.signature(get_method(target)).parameters
    except Exception:  # an unimportable or odd target: reported, naming its key, where it is called
        return []
    return [name for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in GIVEN_ARGUMENTS]


def _validate_data(cfg: DictConfig, need) -> None:
    """The row counts of a data option that has them (HIGGS's, a table's, a bundled set's)."""
    data = cfg.data
    if "n_validation" in data and data.n_validation is not None:
        need(data.n_validation >= 1, "data.n_validation", "must be at least 1")
    if "n_train" in data:
        need(data.n_train >= 1 or data.n_train == ALL_ROWS, "data.n_train",
             f"must be at least 1, or {ALL_ROWS} for every row after the validation rows")
        need(cfg.train.batch_size <= data.n_train or data.n_train == ALL_ROWS, "train.batch_size",
             f"larger than data.n_train={data.n_train}: an epoch would have no full step")
    if "n_features" in data:
        need(data.n_features >= 1, "data.n_features", "must be at least 1")


def run_name(cfg: DictConfig) -> str:
    """Readable run name, e.g. `fit-l2-large`, `tape-l2-large-no_reg_loss`, `fit-none-cnn-digits` (data other than
    HIGGS), or `trial 3 fit-l2-large` in a search."""
    name = f"{cfg.loop.name}-{cfg.reg.name}-{cfg.model.name}" + OmegaConf.to_object(cfg.loop).run_name_suffix()
    if cfg.data.name != TUTORIAL_DATA:  # the tutorial's runs keep their names; any other data is named
        name += f"-{cfg.data.name}"
    number = OmegaConf.select(cfg, "trial.number", default=None)
    # masked after interpolation: a secret reached through ${oc.env:...} in a name is written nowhere in clear
    return redact(name if number is None else f"trial {number} {name}")
