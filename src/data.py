"""HIGGS rows from a local file or a streamed download, and the tf.data pipelines."""

import gzip
import hashlib
import io
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

import numpy as np
from omegaconf import DictConfig

from src.errors import DataError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class HiggsSplits:
    """Validation rows (the file's first) and training rows (the next), float32."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    source: str  # absolute path or URL the rows came from


def parse_rows(lines: Iterable[str], n_rows: int, n_features: int, name: str) -> np.ndarray:
    """Parse up to `n_rows` UCI-layout lines into a (rows, 1 + n_features) float32 array."""
    n_fields = 1 + n_features
    rows = np.empty((n_rows, n_fields), dtype=np.float32)
    count = 0
    line_no = 0
    try:
        for line_no, line in enumerate(lines, start=1):
            if count == n_rows:
                break
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != n_fields:
                raise DataError(f"{name} line {line_no}: expected {n_fields} comma-separated values, got {len(fields)}")
            try:
                values = [float(f) for f in fields]
            except ValueError:
                bad = next(f for f in fields if not _is_float(f))
                hint = " (the UCI layout has no header line)" if line_no == 1 else ""
                raise DataError(f"{name} line {line_no}: non-numeric value {bad.strip()!r}{hint}") from None
            if not all(math.isfinite(v) for v in values):
                raise DataError(f"{name} line {line_no}: NaN or infinite value")
            if values[0] not in (0.0, 1.0):
                raise DataError(f"{name} line {line_no}: label must be 0 or 1, got {fields[0].strip()!r}")
            rows[count] = values
            count += 1
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: corrupt or truncated after line {line_no}: {exc}") from None
    if count == 0:
        raise DataError(f"{name}: no data rows (empty file?)")
    return rows[:count]


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _text_lines(raw: IO[bytes]) -> IO[str]:
    """Lines of a plain or gzip-compressed byte stream, decided by its magic bytes."""
    buffered = io.BufferedReader(raw) if not isinstance(raw, io.BufferedReader) else raw
    stream: IO[bytes] = gzip.GzipFile(fileobj=buffered) if buffered.peek(2)[:2] == GZIP_MAGIC else buffered
    return io.TextIOWrapper(stream, encoding="ascii", newline="")


def read_local(path: Path, n_rows: int, n_features: int) -> np.ndarray:
    """Read the first `n_rows` rows of a local CSV or CSV.gz, stopping there."""
    try:
        with open(path, "rb") as raw:
            return parse_rows(_text_lines(raw), n_rows, n_features, str(path))
    except FileNotFoundError:
        raise DataError(f"data.path: {path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"data.path: {path}: is a directory, not a file") from None
    except PermissionError:
        raise DataError(f"data.path: {path}: permission denied") from None


def stream_url(url: str, n_rows: int, n_features: int, timeout: float) -> np.ndarray:
    """Stream a (gzipped) CSV over HTTP and stop after `n_rows` rows, never the whole file."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"data.url: cannot download {url} ({reason}); set data.path to a local copy of HIGGS.csv.gz"
        ) from None
    with response:
        try:
            return parse_rows(_text_lines(response), n_rows, n_features, url)
        except OSError as exc:
            raise DataError(f"data.url: download of {url} failed: {exc}") from None


def _cache_file(cache_dir: Path, url: str) -> Path:
    return cache_dir / f"higgs-{hashlib.sha256(url.encode()).hexdigest()[:16]}.npy"


def download_rows(url: str, n_rows: int, n_features: int, cache_dir: Path, timeout: float) -> np.ndarray:
    """Rows of `url`, from the local cache when it holds enough of them."""
    cached = _cache_file(cache_dir, url)
    if cached.exists():
        rows = np.load(cached)
        if rows.shape[0] >= n_rows and rows.shape[1] == 1 + n_features:
            log.info("using %d cached rows of %s from %s", n_rows, url, cached)
            return rows[:n_rows]
    log.info("downloading the first %d rows of %s", n_rows, url)
    rows = stream_url(url, n_rows, n_features, timeout)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # write then rename, so an interrupted run never leaves a half-written cache
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy", delete=False) as tmp:
        np.save(tmp, rows)
    os.replace(tmp.name, cached)
    return rows


def load_higgs(data: DictConfig) -> HiggsSplits:
    """Validation = the first `n_validation` rows, training = the next `n_train`."""
    n_rows = data.n_validation + data.n_train
    if data.path is not None:
        path = Path(data.path).expanduser().resolve()
        source = str(path)
        rows = read_local(path, n_rows, data.n_features)
    else:
        source = data.url
        rows = download_rows(source, n_rows, data.n_features, Path(data.cache_dir), data.timeout_seconds)
    if len(rows) < n_rows:
        raise DataError(
            f"{source} has {len(rows)} rows, fewer than data.n_validation + data.n_train = {n_rows}; "
            f"set data.n_train to at most {max(len(rows) - data.n_validation, 0)}"
        )
    val, train = rows[: data.n_validation], rows[data.n_validation :]
    return HiggsSplits(
        x_val=val[:, 1:], y_val=val[:, :1], x_train=train[:, 1:], y_train=train[:, :1], source=source
    )


def make_datasets(splits: HiggsSplits, batch_size: int, shuffle_buffer: int, seed: int):
    """The tutorial's pipelines: shuffled, repeated training batches; fixed validation batches."""
    import tensorflow as tf

    train = (
        tf.data.Dataset.from_tensor_slices((splits.x_train, splits.y_train))
        .cache()
        .shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch_size).cache()
    return train, val
