"""Process-wide TensorFlow settings: threads, determinism, seeds."""

import logging

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config

log = logging.getLogger(__name__)


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


def configure_determinism(deterministic: bool) -> None:
    """Op determinism makes reruns bit-identical (at a small speed cost on some ops)."""
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    elif tf_framework_config.is_op_determinism_enabled():
        tf_framework_config.disable_op_determinism()


def seed_everything(seed: int) -> None:
    """Fresh Keras state, then one seed for Python, numpy, TensorFlow and Keras."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
