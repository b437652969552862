"""The tutorial's models, with the regularizers a `reg` config switches on."""

import keras
from omegaconf import DictConfig

from src.core.errors import ConfigError
from src.core.regularizers import kernel_regularizer, layers_after


def build_model(model: DictConfig, reg: DictConfig, n_features: int) -> keras.Sequential:
    """Hidden layers (each with the reg config's kernel penalty and following layers), then Dense(1) logits."""
    import tensorflow as tf

    layers: list = [keras.Input(shape=(n_features,))]
    for units in model.hidden_units:
        layers.append(keras.layers.Dense(units, activation=model.activation, kernel_regularizer=kernel_regularizer(reg)))
        layers.extend(layers_after(reg))
    layers.append(keras.layers.Dense(1))
    try:
        return keras.Sequential(layers, name=model.name)
    except (tf.errors.ResourceExhaustedError, MemoryError):
        raise ConfigError(
            f"model.hidden_units={list(model.hidden_units)}: the model's weights do not fit in memory"
        ) from None


def scoring_model(model: keras.Model, weights=None) -> keras.Sequential:
    """A copy of `model` (with `weights`, default its own) that outputs the signal probability, not the logit."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights() if weights is None else weights)
    return keras.Sequential([keras.Input(shape=model.input_shape[1:]), copy, keras.layers.Activation("sigmoid")],
                            name=f"{model.name}_probability")
