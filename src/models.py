"""The tutorial's models, with the regularizers a `reg` option asks for."""

import keras
from omegaconf import DictConfig


def build_model(model: DictConfig, reg: DictConfig, n_features: int) -> keras.Sequential:
    """ELU hidden layers (L2 on each kernel, dropout after each, as `reg` says), then Dense(1) logits."""
    layers: list = [keras.Input(shape=(n_features,))]
    for units in model.hidden_units:
        regularizer = keras.regularizers.L2(reg.l2) if reg.l2 > 0 else None
        layers.append(keras.layers.Dense(units, activation=model.activation, kernel_regularizer=regularizer))
        if reg.dropout > 0:
            layers.append(keras.layers.Dropout(reg.dropout))
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers, name=model.name)
