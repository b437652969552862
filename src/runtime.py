"""Process-wide TensorFlow settings: devices, distribution strategy, threads, determinism, seeds."""

import logging
from typing import Dict, List, Tuple

import keras
import tensorflow as tf
from omegaconf import DictConfig

from src import compat
from src.errors import ConfigError

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> Tuple[tf.distribute.Strategy, List[str]]:
    """Threads, devices, strategy, determinism and seeds as `cfg` says; returns the strategy and its devices."""
    configure_threads(cfg.train.threads)
    devices = configure_devices(cfg.device, cfg.train.logical_cpus)
    strategy = make_strategy(cfg.train.strategy, devices)
    configure_determinism(cfg.train.deterministic)
    seed_everything(cfg.seed)
    return strategy, devices


def configure_threads(threads: int) -> None:
    """Intra- and inter-op threads (0 = TensorFlow's default: all cores); settable once per process."""
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if current == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow fixes its thread pools when the runtime starts; a later job
        # of a sequential multirun keeps the first job's setting.
        log.warning("train.threads=%d ignored: this process already runs TensorFlow with %d", threads, current)


def configure_devices(device: str, logical_cpus: int) -> List[str]:
    """Pick the devices a run trains on (`device=auto|cpu|gpu`); returns their names."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ConfigError("device=gpu: TensorFlow sees no GPU on this machine; use device=auto or device=cpu")
    use_gpus = bool(gpus) and device in ("auto", "gpu")
    try:
        if gpus and not use_gpus:
            tf.config.set_visible_devices([], "GPU")
        if logical_cpus > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError:
        # Devices are fixed when the runtime starts (a later job of a sequential multirun).
        log.warning("device=%s train.logical_cpus=%d: devices already fixed in this process", device, logical_cpus)
    kind = "GPU" if use_gpus else "CPU"
    return [d.name for d in tf.config.list_logical_devices(kind)]


def make_strategy(strategy: str, devices: List[str]) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy over several devices, else TensorFlow's default; or as named."""
    if strategy == "mirrored" or (strategy == "auto" and len(devices) > 1):
        return tf.distribute.MirroredStrategy(devices=devices)
    if len(devices) > 1 and strategy == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def device_tags(strategy: tf.distribute.Strategy, devices: List[str]) -> Dict[str, str]:
    """What the run actually used, as MLflow tags."""
    return {
        "devices": ",".join(devices),
        "strategy": type(strategy).__name__,
        "replicas": str(strategy.num_replicas_in_sync),
    }


def configure_determinism(deterministic: bool) -> None:
    """Op determinism makes reruns bit-identical (at a small speed cost on some ops)."""
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    elif compat.op_determinism_enabled():
        compat.disable_op_determinism()


def seed_everything(seed: int) -> None:
    """Fresh Keras state, then one seed for Python, numpy, TensorFlow and Keras."""
    # no gc.collect (free_memory): it took 0.5 s of every job; Python's own collector frees the last model later
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
