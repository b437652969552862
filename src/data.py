"""HIGGS rows (from the shared cache, ingesting a local file or a URL on first use) and the tf.data pipelines."""

import argparse
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from src.config import ALL_ROWS
from src.errors import DataError, UserError

if TYPE_CHECKING:
    from src.datacache import CachedRows, Source

log = logging.getLogger(__name__)

# batches gathered by one call into numpy (a call costs ~50 us and holds the GIL)
GATHER_BATCHES = 20
# rows hashed at a time: a memory-mapped split is never copied whole
DIGEST_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class HiggsSplits:
    """Validation rows (the file's first) and training rows (the next), float32 views of the cached rows."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    source: str  # absolute path or URL the rows came from

    def digest(self) -> str:
        """sha256 over every value of both splits (MLflow's dataset digest samples only the first 10,000)."""
        sha = hashlib.sha256()
        for array in (self.x_val, self.y_val, self.x_train, self.y_train):
            # chunks of whole rows hash the same bytes as the whole C-ordered array would
            for start in range(0, len(array), DIGEST_CHUNK_ROWS):
                sha.update(np.ascontiguousarray(array[start : start + DIGEST_CHUNK_ROWS]).data)
        return sha.hexdigest()


DOWNLOADS = "downloads"  # data.cache_dir's folder for whole-file downloads


def load_higgs(data: DictConfig, *, progress: bool = False) -> HiggsSplits:
    """Validation = the first `n_validation` rows, training = the next `n_train` (-1: all the rest), memory-mapped."""
    n_rows = None if data.n_train == ALL_ROWS else data.n_validation + data.n_train
    got = source_rows(data, n_rows, progress=progress)
    rows, location = got.rows, data.url if data.path is None else str(Path(data.path).expanduser().resolve())
    if n_rows is None:
        if len(rows) <= data.n_validation:
            raise DataError(
                f"{location} has {len(rows)} rows, none left for training after data.n_validation={data.n_validation}"
            )
        n_rows = len(rows)
    if len(rows) < n_rows:
        have = len(rows)
        if have > data.n_validation:
            fix = f"set data.n_train to at most {have - data.n_validation}"
        else:
            fix = f"lower data.n_validation={data.n_validation} so that data.n_validation + data.n_train <= {have}"
        raise DataError(
            f"{location} has {have} rows, fewer than data.n_validation + data.n_train = {n_rows}; {fix}"
        )
    val, train = rows[: data.n_validation], rows[data.n_validation : n_rows]
    return HiggsSplits(
        x_val=val[:, 1:], y_val=val[:, :1], x_train=train[:, 1:], y_train=train[:, :1], source=location
    )


def source_rows(data: DictConfig, n_rows: Optional[int], *, progress: bool) -> "CachedRows":
    """The first `n_rows` rows (None: all) of data.path, or else data.url, from the cache (ingested on first use)."""
    from src.datacache import cached_rows

    cache_dir = Path(data.cache_dir).expanduser()
    if data.path is None:
        return _url_rows(data, n_rows, cache_dir, progress)
    source = local_source(Path(data.path).expanduser().resolve())
    return cached_rows(source, n_rows, data.n_features, cache_dir, progress=progress)


def local_source(path: Path) -> "Source":
    """A local file as a cache source; one-line errors naming data.path when it cannot be read."""
    from src.datacache import Source

    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
    except FileNotFoundError:
        raise DataError(f"data.path: {path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"data.path: {path}: is a directory, not a file") from None
    except PermissionError:
        raise DataError(f"data.path: {path}: permission denied") from None
    except OSError as exc:  # e.g. a parent that is a file, an I/O error
        raise DataError(f"data.path: {path}: {exc.strerror or exc}") from None
    def identity_of(stat: os.stat_result) -> dict:
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    return Source(str(path), identity_of(stat), lambda: open(path, "rb"), stat.st_size, threads=True,
                  identity_now=lambda: identity_of(path.stat()))


def _url_rows(data: DictConfig, n_rows: Optional[int], cache_dir: Path, progress: bool) -> "CachedRows":
    """Rows of data.url: the first `n_rows` streamed (None: the whole file downloaded first), cached.

    Offline, the newest cached rows of the URL serve, with a warning.
    """
    from src.datacache import CachedRows, Source, cached_entries_of, cached_rows, identity_key
    from src.download import download_file, remote_identity

    url = data.url
    try:
        identity = remote_identity(url, data.timeout_seconds)
    except DataError as exc:
        usable = [e for e in cached_entries_of(cache_dir, url) if e.covers(n_rows)]
        if not usable:
            raise DataError(f"{exc}; set data.path to a local copy of HIGGS.csv.gz") from None
        log.warning("%s; using its rows cached on %s", exc, usable[0].header["ingested_at"])
        return CachedRows(usable[0].head(n_rows), usable[0], False)

    if n_rows is not None:
        def open_raw():
            return _open_url(url, data.timeout_seconds)

        source = Source(url, identity, open_raw, None, threads=False)
        return cached_rows(source, n_rows, data.n_features, cache_dir, progress=progress)

    download = cache_dir / DOWNLOADS / f"{identity_key(identity)}.csv.gz"

    def open_download():  # called under the cache's lock, so jobs that start together download once
        if not download.exists():
            download.parent.mkdir(parents=True, exist_ok=True)
            download_file(url, download, data.timeout_seconds, progress=progress)
        return open(download, "rb")

    source = Source(url, identity, open_download, identity["length"], threads=True)
    got = cached_rows(source, None, data.n_features, cache_dir, progress=progress)
    if got.entry is not None:
        download.unlink(missing_ok=True)  # the cache file holds every row now
    return got


def _open_url(url: str, timeout: float):
    """The HTTP response of `url`, or a one-line DataError naming data.url."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an HTTP error response holds the connection open until closed
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"data.url: cannot download {url} ({reason}); set data.path to a local copy of HIGGS.csv.gz"
        ) from None


def make_datasets(splits: HiggsSplits, batch_size: int, seed: int, start_step: int = 0):
    """Training batches from a fresh shuffle of the rows every epoch, repeated; fixed validation batches.

    `start_step`: the stream from that batch on (a resumed run's), exactly as an uninterrupted run reaches it.
    """
    import tensorflow as tf

    n_rows = len(splits.x_train)
    # the stream is the concatenation of the epoch permutations, cut into batches: batch k starts at row
    # k * batch_size of it, i.e. inside permutation (k * batch_size) // n_rows
    first_permutation, skip_rows = divmod(start_step * batch_size, n_rows)

    def epoch_order(epoch):
        # Epoch e's order is a stateless permutation keyed by (seed, e), so the
        # stream depends on the seed alone, not on how many iterators are opened
        # on it. (Keras's fit under a distribution strategy opens one to build
        # the model and discards it; with `Dataset.shuffle` fit would then get
        # the second shuffle and the tape loop the first.) A full permutation is
        # what the tutorial's shuffle buffer (10,000 >= the 10,000 rows) gives.
        return tf.random.experimental.stateless_shuffle(
            tf.range(n_rows, dtype=tf.int32), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )

    def gather(rows):
        # numpy, not tf.gather on a tf.constant: the rows stay in the memory-mapped cache,
        # shared with every job on the machine, instead of being copied into each process
        return splits.x_train[rows], splits.y_train[rows]

    def batch_of(rows):
        x, y = tf.numpy_function(gather, [rows], (tf.float32, tf.float32), stateful=False)
        x.set_shape([None, splits.x_train.shape[1]])
        y.set_shape([None, 1])
        return x, y

    # Each epoch's permutation is drawn once; `rebatch` cuts the endless concatenation of
    # epochs into batches, as the tutorial's shuffle().repeat().batch() does (a batch may
    # span two epochs), so a step costs the same whatever the number of rows.
    train = (
        tf.data.Dataset.range(first_permutation, 2**62)
        .map(epoch_order)
        .enumerate()
        .map(lambda i, order: order[tf.where(i == 0, tf.constant(skip_rows, tf.int64), 0):])
        .rebatch(batch_size * GATHER_BATCHES)
        .map(batch_of)
        .rebatch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch_size).cache()
    return train.with_options(pipeline_options()), val.with_options(pipeline_options())


def pipeline_options():
    """tf.data options for both pipelines: no autotuning model thread.

    Deleting an iterator (fit's at its end; the tape loop's when it returns) waits for that thread,
    with the GIL held: a sweep's jobs froze for 2-39 s at their end, every thread idle (seen in native
    stacks: `~IteratorResource` waiting in `UnboundedThreadPool::~LogicalThreadWrapper`). Nothing here
    needs it: the maps run one call at a time and prefetch keeps its own buffer heuristic.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.data",
        description="Ingest a HIGGS file in the UCI layout (gzip or plain; a local path or an http(s) URL) into the "
        "binary cache that training reads. Training does this itself on first use; this pays the cost ahead.",
    )
    parser.add_argument("source", help="a local CSV or CSV.gz, or an http(s) URL (downloaded whole, resumably)")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows (default: every row)")
    parser.add_argument("--cache-dir", default=None, help="the cache folder (default: data.cache_dir, <repo>/.cache/data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    started = time.perf_counter()
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from src.config import compose_config

    data = compose_config([]).data  # data.n_features, data.cache_dir and data.timeout_seconds as configured
    if re.match(r"(?i)^https?://", args.source):
        data.path, data.url = None, args.source
    else:
        data.path = args.source
    if args.cache_dir is not None:
        data.cache_dir = args.cache_dir
    try:
        got = source_rows(data, args.rows, progress=not args.quiet)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was cached", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    where = got.entry.path if got.entry is not None else "memory only (data.cache_dir cannot be written)"
    if got.ingested:
        print(f"{len(got.rows):,} rows in {seconds:.1f} s ({len(got.rows) / seconds:,.0f} rows/s) -> {where}")
    else:
        print(f"{len(got.rows):,} rows already cached in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
