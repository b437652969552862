"""Data sets that ship inside scikit-learn (its bundled files, read offline): digits, breast cancer, diabetes."""

from typing import Tuple

import numpy as np

from src.core.errors import ConfigError
from src.data.splits import Splits


def _split(name: str, x: np.ndarray, y: np.ndarray, n_validation: int) -> Splits:
    """The first `n_validation` rows validate, the rest train (in the order `_bundled` gives)."""
    return Splits.of((x[n_validation:], y[n_validation:]), (x[:n_validation], y[:n_validation]),
                     source=f"sklearn.datasets.load_{name}", name=name)


def _bundled(name: str, n_validation: int) -> Tuple[np.ndarray, np.ndarray]:
    """The bundled rows in one fixed shuffled order (the files are sorted by label in places, so their first rows
    would validate on one class): numpy's legacy RandomState(0), whose stream never changes between versions."""
    import sklearn.datasets

    loaded = getattr(sklearn.datasets, f"load_{name}")()
    if not 1 <= n_validation < len(loaded.data):
        raise ConfigError(f"data.n_validation={n_validation}: data={name} has {len(loaded.data)} rows; it must be at "
                          "least 1 and leave rows to train on")
    order = np.random.RandomState(0).permutation(len(loaded.data))
    return loaded.data[order], loaded.target[order]


def load_digits(n_validation: int) -> Splits:
    """1,797 handwritten digits as 8x8x1 images (grey levels 0-16 scaled to 0-1), labels 0-9."""
    x, y = _bundled("digits", n_validation)
    return _split("digits", (x / 16.0).reshape(-1, 8, 8, 1), y, n_validation)


def load_breast_cancer(n_validation: int) -> Splits:
    """569 tumours, 30 features each standardized (by the training rows' mean and spread), label 1 = benign."""
    x, y = _bundled("breast_cancer", n_validation)
    train = x[n_validation:]
    return _split("breast_cancer", (x - train.mean(axis=0)) / train.std(axis=0), y, n_validation)


def load_diabetes(n_validation: int) -> Splits:
    """442 patients, 10 standardized features, the target (disease progression after a year) scaled to unit spread."""
    x, y = _bundled("diabetes", n_validation)
    train = y[n_validation:]
    return _split("diabetes", x, (y - train.mean()) / train.std(), n_validation)
