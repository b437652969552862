"""Process-wide TensorFlow settings: devices, distribution strategy, threads, determinism, seeds; and which
worker of a multi-worker cluster this process is.

TensorFlow and Keras are imported inside the functions: `is_chief` runs before TensorFlow's ~9 s import,
so a multi-worker config that cannot train is refused at once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from omegaconf import DictConfig

from src.core import compat
from src.core.errors import ConfigError
from src.core.schema import STRATEGY_OPTIONS

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

MULTI_WORKER = "multi_worker"
KERAS_FIT_ISSUE = "keras-team/keras#20585"  # fit under MultiWorkerMirroredStrategy; open since December 2024
SLURM_RANK_VARIABLE = "SLURM_PROCID"  # set for each task of a SLURM job step (srun); its rank
TRAINING_TASK_TYPES = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains on


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, as TF_CONFIG or SLURM's environment describe it."""

    task_type: str
    task_id: int
    cluster_has_chief: bool
    source: str  # "TF_CONFIG" or "SLURM"

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the `chief` task, or worker 0 when the cluster has no chief."""
        return self.task_type == "chief" or (not self.cluster_has_chief and self.task_id == 0)


def cluster_task(cfg: DictConfig) -> Optional[ClusterTask]:
    """Where this process sits under `train.strategy=multi_worker` (None for any other strategy).

    A one-line ConfigError when nothing describes the cluster, or when the config cannot train across workers.
    """
    if cfg.train.strategy != MULTI_WORKER:
        return None
    where = "train.strategy=multi_worker"
    if cfg.loop.name == "fit":
        raise ConfigError(f"loop=fit: Keras 3's fit fails under MultiWorkerMirroredStrategy ({KERAS_FIT_ISSUE}); "
                          "use loop=tape")
    if cfg.train.logical_cpus != 1:
        raise ConfigError(f"train.logical_cpus={cfg.train.logical_cpus}: {where} trains one replica per worker "
                          "on the CPU; use train.logical_cpus=1")
    if cfg.train.collective_timeout_seconds <= 0:
        raise ConfigError(f"train.collective_timeout_seconds={cfg.train.collective_timeout_seconds}: must be "
                          "positive (a worker that died would otherwise hang the others)")
    if cfg.resume:
        # the chief would continue from its checkpoint while the other workers started afresh
        raise ConfigError(f"resume=true: not supported with {where}")
    if "TF_CONFIG" in os.environ:
        task = _task_from_tf_config(os.environ["TF_CONFIG"])
    elif SLURM_RANK_VARIABLE in os.environ:
        # SlurmClusterResolver names every task of the step a worker, task_id = its rank
        task = ClusterTask("worker", int(os.environ[SLURM_RANK_VARIABLE]), cluster_has_chief=False, source="SLURM")
    else:
        raise ConfigError(f"{where}: neither TF_CONFIG nor SLURM's environment ({SLURM_RANK_VARIABLE}) describes "
                          "the cluster; set TF_CONFIG on each worker (README: Multi-worker training)")
    if task.task_type not in TRAINING_TASK_TYPES:
        raise ConfigError(f"{where}: this process's {task.source} task type is {task.task_type!r}; "
                          f"MultiWorkerMirroredStrategy trains on {' and '.join(TRAINING_TASK_TYPES)} tasks only")
    return task


def _task_from_tf_config(text: str) -> ClusterTask:
    """This process's task as a TF_CONFIG JSON names it; a ConfigError if it does not parse."""
    try:
        spec = json.loads(text)
        task, cluster = spec["task"], spec["cluster"]
        return ClusterTask(str(task["type"]), int(task["index"]), cluster_has_chief=bool(cluster.get("chief")),
                           source="TF_CONFIG")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"TF_CONFIG: not a cluster spec with a task ({type(exc).__name__}: {exc}); expected e.g. "
                          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                          '"index": 0}}') from None


def is_chief(cfg: DictConfig) -> bool:
    """Whether this process creates the MLflow run and logs: always, except a non-chief multi-worker task."""
    task = cluster_task(cfg)
    return task is None or task.is_chief


def prepare(cfg: DictConfig) -> Tuple[tf.distribute.Strategy, List[str]]:
    """Threads, devices, strategy, determinism and seeds as `cfg` says; returns the strategy and its devices."""
    configure_threads(cfg.train.threads)
    device_kind = configure_devices(cfg.device, cfg.train.logical_cpus)
    # before the devices are listed: that starts the runtime, and MultiWorkerMirroredStrategy must configure
    # collective ops before it starts
    strategy = make_strategy(cfg.train.strategy, device_kind, cfg.train.collective_timeout_seconds)
    devices = logical_devices(device_kind)
    configure_determinism(cfg.train.deterministic)
    seed_everything(cfg.seed)
    return strategy, devices


def configure_threads(threads: int) -> None:
    """Intra- and inter-op threads (0 = TensorFlow's default: all cores); settable once per process."""
    import tensorflow as tf

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


def configure_devices(device: str, logical_cpus: int) -> str:
    """Pick the devices a run trains on (`device=auto|cpu|gpu`); returns their kind, GPU or CPU."""
    import tensorflow as tf

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
    return "GPU" if use_gpus else "CPU"


def logical_devices(kind: str) -> List[str]:
    """The names of this process's logical devices of `kind` (listing them starts TensorFlow's runtime)."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices(kind)]


def make_strategy(strategy: str, device_kind: str, collective_timeout_seconds: float) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy over several devices, else TensorFlow's default; or as named.

    `multi_worker`: MultiWorkerMirroredStrategy over the cluster TF_CONFIG describes, else SLURM's environment
    (call `cluster_task` first: it refuses a process that has neither); a collective that waits longer than
    `collective_timeout_seconds` for a worker (one that died) fails instead of hanging.
    """
    import tensorflow as tf

    if strategy == MULTI_WORKER:
        resolvers = tf.distribute.cluster_resolver
        if "TF_CONFIG" in os.environ:
            resolver = resolvers.TFConfigClusterResolver()
        else:
            try:
                resolver = resolvers.SlurmClusterResolver()
            except RuntimeError as exc:  # a SLURM variable it needs is missing
                raise ConfigError(f"train.strategy=multi_worker: SLURM's environment is incomplete ({exc})") from None
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_seconds)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    devices = logical_devices(device_kind)
    if strategy == "mirrored" or (strategy == "auto" and len(devices) > 1):
        return tf.distribute.MirroredStrategy(devices=devices)
    if len(devices) > 1 and strategy == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def device_tags(strategy: tf.distribute.Strategy, devices: List[str]) -> Dict[str, str]:
    """What the run actually used, as MLflow tags."""
    return {
        "devices": ",".join(devices),
        # as the train.strategy option that makes it: "default" rather than `_DefaultDistributionStrategy`
        "strategy": STRATEGY_OPTIONS.get(type(strategy).__name__, type(strategy).__name__),
        "replicas": str(strategy.num_replicas_in_sync),
    }


def configure_determinism(deterministic: bool) -> None:
    """Op determinism makes reruns bit-identical (at a small speed cost on some ops)."""
    import tensorflow as tf

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    elif compat.op_determinism_enabled():
        compat.disable_op_determinism()


def seed_everything(seed: int) -> None:
    """Fresh Keras state, then one seed for Python, numpy, TensorFlow and Keras."""
    import keras

    # no gc.collect (free_memory): it took 0.5 s of every job; Python's own collector frees the last model later
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)
