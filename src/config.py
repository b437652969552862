"""Typed config schemas (registered with Hydra) and the checks types cannot express."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from src.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

# Values live in conf/*.yaml; these schemas only fix names and types, so a
# misspelled key or a wrong type fails when Hydra composes the config.


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden_units: List[int] = MISSING
    activation: str = MISSING


@dataclass
class RegConfig:
    name: str = MISSING
    l2: float = MISSING
    dropout: float = MISSING


@dataclass
class LoopConfig:
    name: str = MISSING


@dataclass
class FitLoopConfig(LoopConfig):
    pass


@dataclass
class TapeLoopConfig(LoopConfig):
    include_reg_loss: bool = MISSING
    compile: bool = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    path: Optional[str] = MISSING
    url: str = MISSING
    n_features: int = MISSING
    n_validation: int = MISSING
    n_train: int = MISSING
    cache_dir: str = MISSING
    timeout_seconds: float = MISSING


@dataclass
class TrainConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    jit_compile: bool = MISSING
    deterministic: bool = MISSING
    threads: int = MISSING
    strategy: str = MISSING
    logical_cpus: int = MISSING


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment_name: str = MISSING
    artifact_location: Optional[str] = MISSING


@dataclass
class Config:
    model: ModelConfig = MISSING
    reg: RegConfig = MISSING
    loop: Any = MISSING  # FitLoopConfig or TapeLoopConfig, typed by the group option
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    seed: int = MISSING
    device: str = MISSING
    quiet: bool = MISSING
    resume: bool = MISSING


def register_configs() -> None:
    """Register the schemas so `conf/` files can extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="reg", name="reg_schema", node=RegConfig)
    cs.store(group="loop", name="fit_schema", node=FitLoopConfig)
    cs.store(group="loop", name="tape_schema", node=TapeLoopConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_configs()

REG_KINDS = {  # reg option -> (uses L2, uses dropout)
    "none": (False, False),
    "l2": (True, False),
    "dropout": (False, True),
    "l2_dropout": (True, True),
}


def validate(cfg: DictConfig) -> None:
    """Reject values that compose but cannot be trained, naming the key."""

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)}: {why}")

    need(cfg.train.epochs >= 1, "train.epochs", "must be at least 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(cfg.train.learning_rate > 0, "train.learning_rate", "must be positive")
    need(cfg.train.threads >= 0, "train.threads", "must be 0 (all cores) or a positive count")
    need(cfg.data.n_validation >= 1, "data.n_validation", "must be at least 1")
    need(cfg.data.n_train >= 1, "data.n_train", "must be at least 1")
    need(cfg.data.n_features >= 1, "data.n_features", "must be at least 1")
    need(
        cfg.train.batch_size <= cfg.data.n_train,
        "train.batch_size",
        f"larger than data.n_train={cfg.data.n_train}: an epoch would have no full step",
    )
    need(len(cfg.model.hidden_units) >= 1, "model.hidden_units", "needs at least one layer")
    need(all(u >= 1 for u in cfg.model.hidden_units), "model.hidden_units", "units must be positive")
    need(cfg.reg.l2 >= 0, "reg.l2", "must be 0 or positive")
    need(0 <= cfg.reg.dropout < 1, "reg.dropout", "must be in [0, 1)")
    need(cfg.reg.name in REG_KINDS, "reg.name", f"must be one of {sorted(REG_KINDS)}")
    uses_l2, uses_dropout = REG_KINDS[cfg.reg.name]
    need(
        (cfg.reg.l2 > 0) == uses_l2,
        "reg.l2",
        f"contradicts reg={cfg.reg.name}; pick the reg option that matches (e.g. reg=l2 reg.l2=1e-4)",
    )
    need(
        (cfg.reg.dropout > 0) == uses_dropout,
        "reg.dropout",
        f"contradicts reg={cfg.reg.name}; pick the reg option that matches (e.g. reg=dropout reg.dropout=0.2)",
    )
    need(cfg.loop.name in ("fit", "tape"), "loop.name", "must be fit or tape")
    need(cfg.device in ("auto", "cpu", "gpu"), "device", "must be auto, cpu or gpu")
    need(
        not (cfg.train.jit_compile and cfg.train.deterministic and cfg.loop.name == "fit"),
        "train.jit_compile",
        "Keras's fit silently drops XLA while op determinism is on; also set train.deterministic=false",
    )
    need(cfg.train.strategy in ("auto", "default", "one_device", "mirrored"), "train.strategy",
         "must be auto, default, one_device or mirrored")
    need(cfg.train.logical_cpus >= 1, "train.logical_cpus", "must be at least 1")


def run_name(cfg: DictConfig) -> str:
    """Readable run name, e.g. `fit-l2-large` or `tape-l2-large-no_reg_loss`."""
    name = f"{cfg.loop.name}-{cfg.reg.name}-{cfg.model.name}"
    if cfg.loop.name == "tape" and not cfg.loop.include_reg_loss:
        name += "-no_reg_loss"
    return name
