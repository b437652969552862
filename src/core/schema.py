"""Typed config schemas, registered with Hydra: the names and types of every key (the values live in conf/)."""

from dataclasses import dataclass, field, make_dataclass
import uuid
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from src.core.metrics import data_loss
from src.core.regularizers import REGULARIZERS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"
ALL_ROWS = -1  # data.n_train's value for "every row after the validation rows"


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
    """The optimizer's learning rate per step: constant, or the tutorial's InverseTimeDecay."""

    constant = "constant"
    inverse_time = "inverse_time"


class Task(str, Enum):
    """What a run learns: one logit per row (binary), one per class (multiclass), or a value (regression)."""

    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"


# A model, data or optimizer option names the callable that makes it (`_target_`, Hydra's idiom) and its arguments.
# The built-in options extend the schemas below; a user's own option (`--config-dir`) may hold any keys it likes.


@dataclass
class ModelConfig:
    """What every model option has: its builder, called as builder(input_shape=..., n_outputs=..., **the rest)."""

    _target_: str = MISSING
    name: str = MISSING


@dataclass
class DenseModelConfig(ModelConfig):
    """The tutorial's models: Dense layers of `hidden_units`, each with `activation`, then the output units."""

    hidden_units: List[int] = MISSING
    activation: str = MISSING


@dataclass
class CnnModelConfig(ModelConfig):
    """A small convolutional net for images: Conv2D + max-pool per `filters` entry, a Dense layer, the outputs."""

    filters: List[int] = MISSING
    kernel_size: int = MISSING
    dense_units: int = MISSING
    activation: str = MISSING


@dataclass
class OptimizerConfig:
    """A Keras optimizer as a partial: the loop gives it the learning rate (and the schedule)."""

    _target_: str = MISSING
    _partial_: bool = True
    name: str = MISSING


@dataclass
class SgdConfig(OptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamWConfig(OptimizerConfig):
    weight_decay: float = MISSING


# One float knob per regularizer, described in src/core/regularizers.py; 0.0 is "off", so a knob
# added there is off in every existing option (and in runs logged before it existed).
RegConfig = make_dataclass(
    "RegConfig", [("name", str, MISSING), *((knob, float, field(default=0.0)) for knob in REGULARIZERS)]
)
# a class of this module, so a config pickled to a launcher's job process (submitit's cloudpickle) refers to it by
# name: made in `types`, it travelled by value and arrived without its fields
RegConfig.__module__ = __name__


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
    """What every data option has: its loader, called as loader(**the rest), the task and batch size it suggests."""

    _target_: str = MISSING
    name: str = MISSING
    task: Task = MISSING  # the task a run on this data has unless `task` says otherwise
    batch_size: int = MISSING  # train.batch_size unless it is set


@dataclass
class HiggsDataConfig(DataConfig):
    path: Optional[str] = MISSING
    url: str = MISSING
    n_features: int = MISSING
    n_validation: int = MISSING
    n_train: int = MISSING  # ALL_ROWS (-1): every row after the validation rows
    cache_dir: str = MISSING
    timeout_seconds: float = MISSING


@dataclass
class CsvDataConfig(DataConfig):
    path: Optional[str] = MISSING  # a CSV (header row first) or Parquet file
    label: Optional[str] = MISSING  # the label's column (required)
    features: Optional[List[str]] = MISSING  # the feature columns; null: every other column
    n_validation: Optional[int] = MISSING  # the first N rows validate ...
    validation_fraction: Optional[float] = MISSING  # ... or this share of the rows (one of the two)
    cache_dir: str = MISSING


@dataclass
class BundledDataConfig(DataConfig):
    """A data set that ships inside an installed package (scikit-learn's): offline, no file to give."""

    n_validation: int = MISSING


@dataclass
class EarlyStoppingConfig:
    enabled: bool = MISSING
    monitor: str = MISSING  # an epoch metric of the task (core.metrics.monitorable); picks the logged best model
    patience: int = MISSING  # epochs without an improvement before training stops
    min_delta: float = MISSING  # an improvement must beat the best by more than this
    restore_best: bool = MISSING  # end training with the best epoch's weights


@dataclass
class TrainConfig:
    epochs: int = MISSING
    batch_size: int = MISSING  # rows per step; an epoch is data.n_train // batch_size steps
    learning_rate: float = MISSING  # the optimizer's (the initial one, with a schedule)
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
    # a job whose graph an earlier job of the process traced trains on that compiled model (src.training.reuse)
    reuse_compiled: bool = MISSING


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment_name: str = MISSING
    artifact_location: Optional[str] = MISSING
    retry_seconds: float = MISSING
    log_models: bool = MISSING  # the final and the best model of every run, in the Keras flavor
    system_metrics: bool = MISSING  # MLflow's system metrics (CPU, memory, disk, network; GPU where present)
    system_metrics_seconds: float = MISSING  # how often they are sampled (and logged)
    ui_url: str = MISSING  # where `make ui` serves the local store: the printed links' base
    register_best: bool = MISSING  # a sweep's or search's best model into the registry: models:/<experiment>@best


@dataclass
class TrialConfig:
    """Set by the optuna sweeper (hydra/sweeper=optuna) on each trial it launches; null in every other run."""

    study: Optional[str] = MISSING  # the Optuna study's name
    id: Optional[int] = MISSING  # the trial's ID in the study's storage (it reports each epoch there)
    number: Optional[int] = MISSING  # the trial's number in the study


@dataclass
class Config:
    # model, data and optimizer are typed by their option's schema when it names one (a user's own need not)
    model: Any = MISSING
    reg: RegConfig = MISSING
    loop: LoopConfig = MISSING  # typed by the option's own schema when composed (Hydra's schema pattern)
    data: Any = MISSING
    optimizer: Any = MISSING
    task: Task = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    seed: int = MISSING
    device: Device = MISSING
    quiet: bool = MISSING
    resume: bool = MISSING


# group -> {schema name: schema}; conf/<group>/<option>.yaml extends `<name>_schema`
SCHEMAS: Dict[str, Dict[str, type]] = {
    "model": {"dense": DenseModelConfig, "cnn": CnnModelConfig},
    "data": {"higgs": HiggsDataConfig, "csv": CsvDataConfig, "bundled": BundledDataConfig},
    "optimizer": {"optimizer": OptimizerConfig, "sgd": SgdConfig, "adamw": AdamWConfig},
}


def register_configs() -> None:
    """Register the schemas so `conf/` files can extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=group, name=f"{name}_schema", node=schema)
    cs.store(group="reg", name="reg_schema", node=RegConfig)
    for option, schema in LOOP_SCHEMAS.items():
        cs.store(group="loop", name=f"{option}_schema", node=schema)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("unique"):  # the default folders' suffix: one value per command (cached)
        OmegaConf.register_new_resolver("unique", lambda: uuid.uuid4().hex[:6], use_cache=True)
    if not OmegaConf.has_resolver("task_loss"):  # ${task_loss:binary} = binary_crossentropy: a default by task
        OmegaConf.register_new_resolver("task_loss", lambda task: data_loss(getattr(task, "value", task)))


register_configs()


