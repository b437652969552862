"""HIGGS rows from a local file or a streamed download, and the tf.data pipelines."""

import gzip
import hashlib
import http.client
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
from typing import IO, Iterable, Optional

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

    def digest(self) -> str:
        """sha256 over every value of both splits (MLflow's dataset digest samples only the first 10,000)."""
        sha = hashlib.sha256()
        for array in (self.x_val, self.y_val, self.x_train, self.y_train):
            sha.update(np.ascontiguousarray(array).data)
        return sha.hexdigest()


def parse_rows(lines: Iterable[str], n_rows: int, n_features: int, name: str) -> np.ndarray:
    """Parse up to `n_rows` UCI-layout lines into a (rows, 1 + n_features) float32 array.

    Stops reading at row `n_rows`. Blank lines (e.g. a trailing empty line) are
    skipped, as `np.loadtxt` does; any other malformed line is a `DataError`
    naming `name` and the line number.
    """
    n_fields = 1 + n_features
    # grown on demand, so a huge `n_rows` does not allocate before the file runs out
    rows = np.empty((min(n_rows, 1 << 16), n_fields), dtype=np.float32)
    count = 0
    line_no = 0
    try:
        for line_no, line in enumerate(lines, start=1):
            if count == n_rows:
                break
            if not line.strip(" \t\r\n"):
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != n_fields:
                raise DataError(
                    f"{name} line {line_no}: expected {n_fields} comma-separated values "
                    f"(label + data.n_features={n_features}), got {len(fields)}"
                )
            try:
                values = [float(f) for f in fields]
            except ValueError:
                column = next(i for i, f in enumerate(fields) if not _is_float(f))
                hint = " (the UCI layout has no header line)" if count == 0 else ""
                raise DataError(
                    f"{name} line {line_no}: non-numeric value {fields[column].strip()!r} "
                    f"in column {column + 1}{hint}"
                ) from None
            if not all(math.isfinite(v) for v in values):
                column = next(i for i, v in enumerate(values) if not math.isfinite(v))
                what = "label" if column == 0 else f"feature {column}"
                raise DataError(
                    f"{name} line {line_no}: non-finite value {fields[column].strip()!r} in column {column + 1} ({what})"
                )
            if values[0] not in (0.0, 1.0):
                raise DataError(f"{name} line {line_no}: label must be 0 or 1, got {fields[0].strip()!r}")
            if count == len(rows):
                rows = np.resize(rows, (min(n_rows, 2 * len(rows)), n_fields))
            rows[count] = values
            count += 1
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data {_after(line_no)}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: not a CSV or gzip-compressed CSV (non-text byte {exc.object[exc.start]:#04x} {_after(line_no)})"
        ) from None
    if count == 0:
        raise DataError(f"{name}: no data rows (empty file?)")
    return rows[:count]


def _after(line_no: int) -> str:
    return f"after line {line_no}" if line_no else "before the first line"


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _text_lines(raw: IO[bytes]) -> IO[str]:
    """Lines of a plain or gzip-compressed byte stream, decided by its magic bytes."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
    stream: IO[bytes] = gzip.GzipFile(fileobj=buffered) if buffered.peek(2)[:2] == GZIP_MAGIC else buffered
    # utf-8-sig: a byte-order mark (spreadsheet exports) is dropped; newline="": \n, \r\n and \r all end a line
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


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
    except OSError as exc:  # e.g. a parent that is a file, an I/O error
        raise DataError(f"data.path: {path}: {exc.strerror or exc}") from None


def stream_url(url: str, n_rows: int, n_features: int, timeout: float) -> np.ndarray:
    """Stream a (gzipped) CSV over HTTP and stop after `n_rows` rows, never the whole file."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an HTTP error response holds the connection open until closed
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"data.url: cannot download {url} ({reason}); set data.path to a local copy of HIGGS.csv.gz"
        ) from None
    # closing the response closes the connection, so the server stops sending the rest
    with response:
        try:
            return parse_rows(_text_lines(response), n_rows, n_features, url)
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"data.url: download of {url} failed ({exc or type(exc).__name__}); "
                "set data.path to a local copy of HIGGS.csv.gz"
            ) from None


def _cache_file(cache_dir: Path, url: str) -> Path:
    return cache_dir / f"higgs-{hashlib.sha256(url.encode()).hexdigest()[:16]}.npy"


def _read_cache(cached: Path, n_rows: int, n_features: int) -> Optional[np.ndarray]:
    """The first `n_rows` cached rows, or None when the cache is missing, too short or unreadable."""
    try:
        rows = np.load(cached)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable cache %s: %s", cached, exc)
        return None
    if rows.ndim != 2 or rows.shape[0] < n_rows or rows.shape[1] != 1 + n_features or rows.dtype != np.float32:
        return None
    return rows[:n_rows]


def _write_cache(cached: Path, rows: np.ndarray) -> None:
    """Save parsed rows (write, then rename: never a half-written cache); a failure only costs a re-download."""
    tmp_name = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npy.tmp", delete=False) as tmp:
            tmp_name = tmp.name
            np.save(tmp, rows)
        os.replace(tmp_name, cached)
    except OSError as exc:
        log.warning("cannot cache the downloaded rows in %s (data.cache_dir): %s", cached.parent, exc)
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def download_rows(url: str, n_rows: int, n_features: int, cache_dir: Path, timeout: float) -> np.ndarray:
    """Rows of `url`, from the local cache when it holds enough of them."""
    cached = _cache_file(cache_dir, url)
    rows = _read_cache(cached, n_rows, n_features)
    if rows is not None:
        log.info("using %d cached rows of %s from %s", n_rows, url, cached)
        return rows
    log.info("downloading the first %d rows of %s", n_rows, url)
    rows = stream_url(url, n_rows, n_features, timeout)
    _write_cache(cached, rows)
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
        rows = download_rows(source, n_rows, data.n_features, Path(data.cache_dir).expanduser(), data.timeout_seconds)
    if len(rows) < n_rows:
        have = len(rows)
        if have > data.n_validation:
            fix = f"set data.n_train to at most {have - data.n_validation}"
        else:
            fix = f"lower data.n_validation={data.n_validation} so that data.n_validation + data.n_train <= {have}"
        raise DataError(
            f"{source} has {have} rows, fewer than data.n_validation + data.n_train = {n_rows}; {fix}"
        )
    val, train = rows[: data.n_validation], rows[data.n_validation :]
    return HiggsSplits(
        x_val=val[:, 1:], y_val=val[:, :1], x_train=train[:, 1:], y_train=train[:, :1], source=source
    )


def make_datasets(splits: HiggsSplits, batch_size: int, seed: int):
    """Training batches from a fresh shuffle of the rows every epoch, repeated; fixed validation batches."""
    import tensorflow as tf

    x, y = tf.constant(splits.x_train), tf.constant(splits.y_train)

    def epoch_order(epoch):
        # Epoch e's order is a stateless permutation keyed by (seed, e), so the
        # stream depends on the seed alone, not on how many iterators are opened
        # on it. (Keras's fit under a distribution strategy opens one to build
        # the model and discards it; with `Dataset.shuffle` fit would then get
        # the second shuffle and the tape loop the first.) A full permutation is
        # what the tutorial's shuffle buffer (10,000 >= the 10,000 rows) gives.
        return tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(x)[0]), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )

    # Each epoch's permutation is drawn once; `rebatch` cuts the endless concatenation of
    # epochs into batches, as the tutorial's shuffle().repeat().batch() does (a batch may
    # span two epochs), so a step costs the same whatever the number of rows.
    train = (
        tf.data.Dataset.range(2**62)
        .map(epoch_order)
        .rebatch(batch_size)
        .map(lambda rows: (tf.gather(x, rows), tf.gather(y, rows)))
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch_size).cache()
    return train, val
