"""HIGGS rows: from the shared cache, ingesting a local file or a URL on first use; split into validation and training."""

import http.client
import logging
import os
import stat as stat_module
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig, OmegaConf

from src.core.errors import DataError
from src.core.schema import ALL_ROWS
from src.data.splits import Splits

if TYPE_CHECKING:
    from src.data.cache import CachedRows, Source

log = logging.getLogger(__name__)

HIGGS_LOADER = "src.data.higgs.load"  # data=higgs's _target_: rows of a file in the UCI layout, by line
DOWNLOADS = "downloads"  # data.cache_dir's folder for whole-file downloads


def load(*, progress: bool = False, **data) -> Splits:
    """data=higgs's loader (its option's keys as arguments): see `load_higgs`."""
    return load_higgs(OmegaConf.create(data), progress=progress)


def load_higgs(data: DictConfig, *, progress: bool = False) -> Splits:
    """Validation = the first `n_validation` rows, training = the next `n_train` (-1: all the rest), memory-mapped."""
    n_rows = None if data.n_train == ALL_ROWS else data.n_validation + data.n_train
    got = source_rows(data, n_rows, progress=progress)
    rows, location = got.rows, data.url if data.path is None else str(data_path(data.path))
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
    return Splits(x_val=val[:, 1:], y_val=val[:, :1], x_train=train[:, 1:], y_train=train[:, :1], source=location,
                  name="higgs")


def source_rows(data: DictConfig, n_rows: Optional[int], *, progress: bool) -> "CachedRows":
    """The first `n_rows` rows (None: all) of data.path, or else data.url, from the cache (ingested on first use)."""
    from src.data.cache import cached_rows

    cache_dir = Path(data.cache_dir).expanduser()
    if data.path is None:
        return _url_rows(data, n_rows, cache_dir, progress)
    source = local_source(data_path(data.path))
    return cached_rows(source, n_rows, data.n_features, cache_dir, progress=progress)


def data_path(path: str) -> Path:
    """data.path made absolute, its symlinks resolved (one cache file per real file), or a one-line DataError."""
    given = Path(path).expanduser()
    try:
        resolved = given.resolve()
    except (RuntimeError, OSError):  # Python 3.11 says RuntimeError for a symlink loop, later ones OSError (ELOOP)
        raise DataError(f"data.path: {given}: a symlink loop (a link that leads back to itself)") from None
    if not resolved.exists() and os.path.exists(given):
        # /dev/fd/N (a process substitution, <(...)) resolves to "pipe:[N]", which is no path: keep the one given
        return Path(os.path.abspath(given))
    return resolved


def _not_a_file(mode: int) -> Optional[str]:
    """What a path is when it is not a regular file: a FIFO, a device or a socket never ends (or never starts)."""
    for test, kind in ((stat_module.S_ISDIR, "is a directory"), (stat_module.S_ISFIFO, "is a FIFO (named pipe)"),
                       (stat_module.S_ISCHR, "is a character device"), (stat_module.S_ISBLK, "is a block device"),
                       (stat_module.S_ISSOCK, "is a socket")):
        if test(mode):
            return kind
    return None


def local_source(path: Path) -> "Source":
    """A local file as a cache source; one-line errors naming data.path when it cannot be read."""
    from src.data.cache import Source

    try:
        kind = _not_a_file(os.stat(path).st_mode)  # before any open: opening a FIFO blocks until a writer comes
        if kind and str(path).startswith(("/dev/fd/", "/proc/")):
            raise DataError(f"data.path: {path}: {kind}, not a file (a process substitution, <(...), is one: the rows "
                            "are read more than once, so write them to a file first)")
        if kind:
            raise DataError(f"data.path: {path}: {kind}, not a file")
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
    from src.data.cache import CachedRows, Source, cached_entries_of, cached_rows, identity_key
    from src.data.download import download_file, remote_identity

    url = data.url
    try:
        identity = remote_identity(url, data.timeout_seconds)
    except DataError as exc:
        usable = [e for e in cached_entries_of(cache_dir, url) if e.covers(n_rows) and not e.legacy]
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

