"""Training and validation rows as the loops take them, from any loader: checked, float32, their digest."""

import hashlib
from dataclasses import dataclass

import numpy as np

from src.core.errors import DataError

# rows hashed (and checked) at a time: a memory-mapped split is never copied whole
DIGEST_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Splits:
    """Validation and training features (float32, a row per example: a vector or an image) and labels (float32,
    one column), and where they came from."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    source: str  # absolute path or URL the rows came from, or the loader that made them
    name: str  # the data option's name: MLflow's datasets are `<name>-train` and `<name>-val`

    def digest(self) -> str:
        """sha256 over every value of both splits (MLflow's dataset digest samples only the first 10,000); once."""
        if "_digest" in self.__dict__:
            return self.__dict__["_digest"]
        # frozen: the attribute is set behind the dataclass's back
        self.__dict__["_digest"] = rows_sha256(self.x_val, self.y_val, self.x_train, self.y_train)
        return self.__dict__["_digest"]

    @classmethod
    def of(cls, train, validation, *, source: str, name: str) -> "Splits":
        """Splits from a loader's ((x_train, y_train), (x_val, y_val)), checked: as many labels as rows, at least
        one row each, the same row shape, every value finite; DataError naming the split otherwise."""
        arrays = {}
        for split, (x, y) in (("training", train), ("validation", validation)):
            with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which the check below names
                x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
            y = y.reshape(len(y), 1) if y.ndim == 1 else y
            if x.ndim < 2 or len(x) == 0 or len(x) != len(y) or y.shape[1:] != (1,):
                raise DataError(f"data={name}: its {split} split has features of shape {x.shape} and labels of shape "
                                f"{y.shape}; a loader returns (rows, ...) features and one label per row")
            _check_finite(x, f"data={name}: its {split} features")
            _check_finite(y, f"data={name}: its {split} labels")
            arrays[split] = (np.ascontiguousarray(x), np.ascontiguousarray(y))
        (x_train, y_train), (x_val, y_val) = arrays["training"], arrays["validation"]
        if x_train.shape[1:] != x_val.shape[1:]:
            raise DataError(f"data={name}: training rows are {x_train.shape[1:]}, validation rows {x_val.shape[1:]}")
        return cls(x_val, y_val, x_train, y_train, source, name)


def rows_sha256(*arrays: np.ndarray) -> str:
    """sha256 over every value of the arrays, in order, hashed a chunk of whole rows at a time."""
    sha = hashlib.sha256()
    for array in arrays:
        # chunks of whole rows hash the same bytes as the whole C-ordered array would
        for start in range(0, len(array), DIGEST_CHUNK_ROWS):
            sha.update(np.ascontiguousarray(array[start : start + DIGEST_CHUNK_ROWS]).data)
    return sha.hexdigest()


def _check_finite(array: np.ndarray, what: str) -> None:
    """DataError naming the first row holding a NaN or an infinity (float32's: 1e39 is one)."""
    for start in range(0, len(array), DIGEST_CHUNK_ROWS):
        chunk = array[start : start + DIGEST_CHUNK_ROWS]
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            raise DataError(f"{what}: row {row} holds a NaN or an infinite value")
