"""Models from their builders: the tutorial's Dense stacks, a small CNN, or any `_target_` a model option names.

The contract: `builder(input_shape=<tuple>, n_outputs=<int>, **<the option's other keys>)` returns a
`keras.Model` whose outputs are logits (raw values for regression). A builder that takes a `kernel_regularizer`
argument places the reg option's kernel penalty itself; otherwise it goes on every kernel of the built model.
A reg knob such as dropout reaches only a builder with that argument (`dropout`).
"""

import inspect
import re
from typing import Optional, Sequence, Tuple, Union

import keras
from omegaconf import DictConfig, OmegaConf

from src.core import compat
from src.core.errors import ConfigError, first_line
from src.core.redaction import redact
from src.core.regularizers import KERNEL_ARGUMENT, builder_arguments, kernel_regularizer

FRAMEWORK_KEYS = ("_target_", "name")  # a model option's keys that are not the builder's arguments


def build_model(model: DictConfig, reg: DictConfig, input_shape: Union[int, Sequence[int]],
                n_outputs: int = 1) -> keras.Model:
    """The model option's builder called on the data's input shape and the task's outputs, with the reg option's
    regularizers on it; ConfigError naming the key when the builder cannot be found, called or regularized."""
    import tensorflow as tf
    from hydra.utils import get_method

    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    try:
        builder = get_method(model._target_)
    except Exception as exc:  # Hydra's ImportError wrapper: the module or the name is missing
        raise ConfigError(f"model._target_={model._target_}: cannot be imported ({first_line(exc.__cause__ or exc)}); "
                          "put its module on PYTHONPATH or in the working directory") from None
    kwargs = {k: v for k, v in OmegaConf.to_container(model, resolve=True).items() if k not in FRAMEWORK_KEYS}
    if "name" in inspect.signature(builder).parameters:
        kwargs["name"] = keras_name(model.name)  # the Keras model's name: the option's
    kwargs.update(_regularizer_arguments(model, builder, reg))
    try:
        inspect.signature(builder).bind(input_shape=shape, n_outputs=n_outputs, **kwargs)
    except TypeError as exc:  # a key of the option the builder does not take, or an argument it needs and lacks
        raise ConfigError(f"model={model.name}: {model._target_} cannot be called with input_shape, n_outputs and "
                          f"{', '.join(kwargs) or 'no other argument'} ({first_line(exc)})") from None
    try:
        built = builder(input_shape=shape, n_outputs=n_outputs, **kwargs)
    except (tf.errors.ResourceExhaustedError, MemoryError):
        size = f"model.hidden_units={list(model.hidden_units)}" if "hidden_units" in model else f"model={model.name}"
        raise ConfigError(f"{size}: the model's weights do not fit in memory") from None
    if not isinstance(built, keras.Model):
        raise ConfigError(f"model={model.name}: {model._target_} returned {type(built).__name__}, not a keras.Model")
    if KERNEL_ARGUMENT not in inspect.signature(builder).parameters:
        _penalize_every_kernel(built, kernel_regularizer(reg))
    return built


def keras_name(name: str) -> str:
    """An option's name as a Keras model may be named (TensorFlow's scope pattern): masked (it is saved with the model),
    any other character made `_` (`model.name='my net'` is a valid option name)."""
    name = re.sub(r"[^A-Za-z0-9_.>-]", "_", redact(name))
    return name if re.match(r"[A-Za-z0-9.]", name) else f"model{name}"


def _regularizer_arguments(model: DictConfig, builder, reg: DictConfig) -> dict:
    """The reg knobs as the builder's arguments; ConfigError for a knob that is on and has no argument to go to."""
    # by name only: a **kwargs builder could drop a regularizer silently, so it gets none (L2 then goes on every kernel)
    taken = inspect.signature(builder).parameters
    arguments = {}
    if KERNEL_ARGUMENT in taken:
        arguments[KERNEL_ARGUMENT] = kernel_regularizer(reg)
    for argument, value in builder_arguments(reg).items():
        if argument in taken:
            arguments[argument] = value
        elif value:
            raise ConfigError(f"reg={reg.name}: model={model.name}'s builder {model._target_} takes no `{argument}` "
                              f"argument, so reg.{argument}={value} cannot reach it (use a reg option without it)")
    return arguments


def _penalize_every_kernel(model: keras.Model, penalty) -> None:
    """The penalty on every kernel of a built model whose builder did not place it: `model.losses` then carries it."""
    if penalty is None:
        return
    for layer in compat.sublayers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and hasattr(layer, KERNEL_ARGUMENT):
            setattr(layer, KERNEL_ARGUMENT, penalty)
            kernel.regularizer = penalty


def _known_activation(activation: str) -> str:
    """An activation Keras knows by name; ConfigError naming the key otherwise (before any run)."""
    try:
        keras.activations.get(activation)
    except ValueError:
        raise ConfigError(f"model.activation={activation}: not an activation Keras knows (e.g. relu, elu, tanh, "
                          "gelu)") from None
    return activation


def dense(input_shape: Tuple[int, ...], n_outputs: int, hidden_units: Sequence[int], activation: str,
          kernel_regularizer=None, dropout: float = 0.0, name: str = "dense") -> keras.Sequential:
    """The tutorial's models: hidden Dense layers (each with the kernel penalty, then Dropout when on), then
    Dense(n_outputs) logits; an image input is flattened first."""
    _known_activation(activation)
    layers: list = [keras.Input(shape=input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten())
    for units in hidden_units:
        layers.append(keras.layers.Dense(units, activation=activation, kernel_regularizer=kernel_regularizer))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_outputs))
    return keras.Sequential(layers, name=name)


def cnn(input_shape: Tuple[int, ...], n_outputs: int, filters: Sequence[int], kernel_size: int, dense_units: int,
        activation: str, kernel_regularizer=None, dropout: float = 0.0, name: str = "cnn") -> keras.Sequential:
    """A small convolutional net: per `filters` entry a same-padded Conv2D and a 2x2 max-pool, then a Dense layer
    (Dropout after it when on) and Dense(n_outputs) logits; every kernel carries the penalty."""
    _known_activation(activation)
    if len(input_shape) != 3:
        raise ConfigError(f"model=cnn: needs images (height, width, channels), got input shape {input_shape}; "
                          "use a Dense model (model=large) for a table")
    layers: list = [keras.Input(shape=input_shape)]
    for width in filters:
        layers.append(keras.layers.Conv2D(width, kernel_size, padding="same", activation=activation,
                                          kernel_regularizer=kernel_regularizer))
        layers.append(keras.layers.MaxPooling2D(2, padding="same"))
    layers.append(keras.layers.Flatten())
    layers.append(keras.layers.Dense(dense_units, activation=activation, kernel_regularizer=kernel_regularizer))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_outputs, kernel_regularizer=kernel_regularizer))
    return keras.Sequential(layers, name=name)


def scoring_model(model: keras.Model, weights=None, activation: Optional[str] = "sigmoid") -> keras.Model:
    """A copy of `model` (with `weights`, default its own) that outputs what the task scores: the logits through
    `activation` (sigmoid: probabilities; softmax: class probabilities; None: the raw values, for regression)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights() if weights is None else weights)
    if activation is None:
        return copy
    return keras.Sequential([keras.Input(shape=model.input_shape[1:]), copy, keras.layers.Activation(activation)],
                            name=f"{model.name}_{'probability' if activation == 'sigmoid' else activation}")
