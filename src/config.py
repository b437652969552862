"""Typed config schemas (registered with Hydra), the checks types cannot express, and config composition."""

from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from src.errors import ConfigError
from src.regularizers import REGULARIZERS, knobs_on, option_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
# Keys (and whole sections) that do not change what a run computes: left out of its config digest.
NON_SEMANTIC_KEYS = ("mlflow", "quiet", "resume", "trial", "train.checkpoint_every", "train.collective_timeout_seconds",
                     "data.cache_dir", "data.timeout_seconds")
ALL_ROWS = -1  # data.n_train's value for "every row after the validation rows"

# Every epoch logs exactly these metrics, for every loop.
EPOCH_METRICS = (
    "loss",
    "val_loss",
    "binary_crossentropy",
    "val_binary_crossentropy",
    "reg_loss",
    "accuracy",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
)
# Metrics about the machine, not the model: MLflow's system metrics and each epoch's wall time, which the runs
# log as `system/epoch_seconds` (the UI's "System metrics" tab). Never reproducible: reproduce and resume skip them.
SYSTEM_PREFIX = "system/"


def store_metric_name(key: str) -> str:
    """The name an epoch metric is logged under in MLflow (the loops' `epoch_seconds` is a system metric)."""
    return SYSTEM_PREFIX + key if key == "epoch_seconds" else key


def is_system_metric(key: str) -> bool:
    """A logged metric about the machine (`epoch_seconds`: how runs before the system/ prefix logged it)."""
    return key.startswith(SYSTEM_PREFIX) or key == "epoch_seconds"


# What train.early_stopping.monitor may name (and which way is better).
HIGHER_IS_BETTER = ("accuracy", "val_accuracy")
MONITORABLE = ("loss", "val_loss", "binary_crossentropy", "val_binary_crossentropy", *HIGHER_IS_BETTER)



def is_semantic(key: str) -> bool:
    """Whether a dotted config key can change what a run computes (see NON_SEMANTIC_KEYS)."""
    return not any(key == k or key.startswith(k + ".") for k in NON_SEMANTIC_KEYS)


def semantic_part(plain: dict, prefix: str = "") -> dict:
    """A plain config without its non-semantic keys."""
    return {k: semantic_part(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in plain.items() if is_semantic(f"{prefix}{k}")}


# Values live in conf/*.yaml; these schemas only fix names and types, so a
# misspelled key, a wrong type or an unknown enum value fails when Hydra composes the config.


class Device(str, Enum):
    """What a run trains on: every visible GPU else the CPU (auto), the CPU, or the GPUs (an error without one)."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Strategy(str, Enum):
    """tf.distribute strategy: auto = MirroredStrategy over several devices, else TensorFlow's default;
    multi_worker = MultiWorkerMirroredStrategy over the workers TF_CONFIG (or SLURM's environment) names."""

    auto = "auto"
    default = "default"
    one_device = "one_device"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


class LrSchedule(str, Enum):
    """Adam's learning rate per step: constant, or the tutorial's InverseTimeDecay."""

    constant = "constant"
    inverse_time = "inverse_time"


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden_units: List[int] = MISSING
    activation: str = MISSING


# One float knob per regularizer, described in src/regularizers.py; 0.0 is "off", so a knob
# added there is off in every existing option (and in runs logged before it existed).
RegConfig = make_dataclass(
    "RegConfig", [("name", str, MISSING), *((knob, float, field(default=0.0)) for knob in REGULARIZERS)]
)


@dataclass
class LoopConfig:
    """What every loop option has; every loop is listed in LOOP_SCHEMAS, one with keys of its own as a subclass."""

    name: str = MISSING

    def run_name_suffix(self) -> str:
        """Appended to the run name when the loop's own keys change what it computes."""
        return ""


@dataclass
class TapeLoopConfig(LoopConfig):
    include_reg_loss: bool = MISSING
    compile: bool = MISSING

    def run_name_suffix(self) -> str:
        return "" if self.include_reg_loss else "-no_reg_loss"


# loop option -> its schema (conf/loop/<option>.yaml extends `<option>_schema`).
LOOP_SCHEMAS: Dict[str, type] = {"fit": LoopConfig, "tape": TapeLoopConfig}
# What a loop does for the keys other loops have, logged as its params so every run has the same param keys
# (the UI's compare view reads a missing param as "unknown"): fit always adds the layers' penalties to what it
# minimizes, and always runs compiled.
IMPLIED_LOOP_PARAMS: Dict[str, Dict[str, object]] = {"fit": {"include_reg_loss": True, "compile": True}}
# the class names of tf.distribute strategies, as the `train.strategy` option that makes each one
STRATEGY_OPTIONS = {"_DefaultDistributionStrategy": "default", "OneDeviceStrategy": "one_device",
                    "MirroredStrategy": "mirrored", "CollectiveAllReduceStrategy": "multi_worker",
                    "MultiWorkerMirroredStrategy": "multi_worker"}


@dataclass
class DataConfig:
    name: str = MISSING
    path: Optional[str] = MISSING
    url: str = MISSING
    n_features: int = MISSING
    n_validation: int = MISSING
    n_train: int = MISSING  # ALL_ROWS (-1): every row after the validation rows
    cache_dir: str = MISSING
    timeout_seconds: float = MISSING


@dataclass
class EarlyStoppingConfig:
    enabled: bool = MISSING
    monitor: str = MISSING  # one of MONITORABLE; also picks the epoch of the logged best model
    patience: int = MISSING  # epochs without an improvement before training stops
    min_delta: float = MISSING  # an improvement must beat the best by more than this
    restore_best: bool = MISSING  # end training with the best epoch's weights


@dataclass
class TrainConfig:
    epochs: int = MISSING
    batch_size: int = MISSING  # rows per step; an epoch is data.n_train // batch_size steps
    learning_rate: float = MISSING  # Adam's (the initial one, with a schedule)
    lr_schedule: LrSchedule = MISSING
    lr_decay_epochs: float = MISSING  # inverse_time: epochs until the rate has halved
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    jit_compile: bool = MISSING  # XLA, for every loop
    deterministic: bool = MISSING  # op determinism: bit-identical reruns
    threads: int = MISSING  # TensorFlow's intra/inter-op threads; 0 = all cores
    strategy: Strategy = MISSING
    logical_cpus: int = MISSING  # the CPU split into this many devices (replicas)
    collective_timeout_seconds: float = MISSING  # multi_worker: how long a worker waits for the others at a step
    checkpoint_every: int = MISSING  # epochs between saved checkpoints; 0: only when interrupted


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment_name: str = MISSING
    artifact_location: Optional[str] = MISSING
    retry_seconds: float = MISSING
    log_models: bool = MISSING  # the final and the best model of every run, in the Keras flavor
    system_metrics: bool = MISSING  # MLflow's system metrics (CPU, memory, disk, network; GPU where present)
    system_metrics_seconds: float = MISSING  # how often they are sampled (and logged)


@dataclass
class TrialConfig:
    """Set by the optuna sweeper (hydra/sweeper=optuna) on each trial it launches; null in every other run."""

    study: Optional[str] = MISSING  # the Optuna study's name
    id: Optional[int] = MISSING  # the trial's ID in the study's storage (it reports each epoch there)
    number: Optional[int] = MISSING  # the trial's number in the study


@dataclass
class Config:
    model: ModelConfig = MISSING
    reg: RegConfig = MISSING
    loop: LoopConfig = MISSING  # typed by the option's own schema when composed (Hydra's schema pattern)
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    seed: int = MISSING
    device: Device = MISSING
    quiet: bool = MISSING
    resume: bool = MISSING


def register_configs() -> None:
    """Register the schemas so `conf/` files can extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="reg", name="reg_schema", node=RegConfig)
    for option, schema in LOOP_SCHEMAS.items():
        cs.store(group="loop", name=f"{option}_schema", node=schema)
    cs.store(group="data", name="data_schema", node=DataConfig)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_configs()


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's config composed from conf/ with these overrides, as `python -m src.train` would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def group_options(group: str) -> List[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python values (enums as their names), for params, digests and YAML."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def validate(cfg: DictConfig) -> None:
    """Reject values that compose but cannot be trained, naming the key."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"{key}={value.value if isinstance(value, Enum) else value}: {why}")

    need(0 <= cfg.seed < 2**32, "seed", "must be in [0, 2**32)")
    need(cfg.train.epochs >= 1, "train.epochs", "must be at least 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(cfg.train.learning_rate > 0, "train.learning_rate", "must be positive")
    need(cfg.train.threads >= 0, "train.threads", "must be 0 (all cores) or a positive count")
    need(cfg.train.checkpoint_every >= 0, "train.checkpoint_every", "must be 0 (only when interrupted) or more")
    need(cfg.train.lr_decay_epochs > 0, "train.lr_decay_epochs", "must be positive")
    stopping = cfg.train.early_stopping
    need(stopping.monitor in MONITORABLE, "train.early_stopping.monitor", f"must be one of {', '.join(MONITORABLE)}")
    need(stopping.patience >= 0, "train.early_stopping.patience", "must be 0 or more")
    need(stopping.min_delta >= 0, "train.early_stopping.min_delta", "must be 0 or more")
    need(cfg.data.n_validation >= 1, "data.n_validation", "must be at least 1")
    need(cfg.data.n_train >= 1 or cfg.data.n_train == ALL_ROWS, "data.n_train",
         f"must be at least 1, or {ALL_ROWS} for every row after the validation rows")
    need(cfg.data.n_features >= 1, "data.n_features", "must be at least 1")
    need(
        cfg.train.batch_size <= cfg.data.n_train or cfg.data.n_train == ALL_ROWS,
        "train.batch_size",
        f"larger than data.n_train={cfg.data.n_train}: an epoch would have no full step",
    )
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
    need(bool(cfg.mlflow.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")
    need(cfg.mlflow.retry_seconds >= 0, "mlflow.retry_seconds", "must be 0 (no retry) or positive")
    need(cfg.mlflow.system_metrics_seconds >= 0.1, "mlflow.system_metrics_seconds", "must be at least 0.1")


def run_name(cfg: DictConfig) -> str:
    """Readable run name, e.g. `fit-l2-large`, `tape-l2-large-no_reg_loss`, or `trial 3 fit-l2-large` in a search."""
    name = f"{cfg.loop.name}-{cfg.reg.name}-{cfg.model.name}" + OmegaConf.to_object(cfg.loop).run_name_suffix()
    number = OmegaConf.select(cfg, "trial.number", default=None)
    return name if number is None else f"trial {number} {name}"