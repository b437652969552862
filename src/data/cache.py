"""The parsed-rows cache: one binary file per source and row count, shared by every job, never stale.

A cache file is a header (a JSON record of the source's identity, the row count, whether the rows
are the whole source) padded to HEADER_BYTES, then the rows as raw float32, row-major. It is
written under a temporary name and renamed, so a reader never sees half of one; a lock per source
makes jobs that start together ingest it once; jobs open it memory-mapped, so parallel jobs on one
machine share one copy of the rows in the page cache. A source's identity is a local file's path,
size and modification time, or a URL with its length, ETag and Last-Modified: a changed source gets
a new file (and the old one is removed). The header holds a CRC-32 of the rows, checked on every
open (ISA-L's, ~16 GB/s: ~80 ms for full HIGGS's 1.2 GiB), so a file altered in place is refused,
never used; a file of the older format (v1, no digest) is rebuilt from its source and replaced.
"""

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from isal import isal_zlib

from src.core.errors import DataError
from src.data.ingest import CountingReader, OpenRaw, parse_blocks

log = logging.getLogger(__name__)

MAGIC = b"overfit-lab rows v2\n"  # v2: the header holds the rows' digest
LEGACY_MAGIC = b"overfit-lab rows v1\n"  # no digest: never used, rebuilt and replaced
DIGEST_CHUNK_BYTES = 64 << 20  # the digest reads the memory map a chunk at a time (no copy)
HEADER_BYTES = 4096  # a page, so the rows that follow are page-aligned for the memory map
SUFFIX = ".rows"


@dataclass(frozen=True)
class Source:
    """A file to ingest: what names it in messages, what identifies its content, how to read and parse it."""

    location: str  # the absolute path or URL
    identity: dict  # path/size/mtime_ns, or url/length/etag/last_modified
    open_raw: OpenRaw
    size: Optional[int]  # bytes, for the progress bar
    threads: bool  # decompress in a thread of its own (see ingest.parse_blocks)
    identity_now: Optional[Callable[[], dict]] = None  # the identity read again, to notice a change mid-ingest
    # its rows as float32 blocks, label first: parse(open_raw, n_rows); None: a UCI-layout file (ingest.parse_blocks)
    parse: Optional[Callable[[OpenRaw, Optional[int]], Iterator[np.ndarray]]] = None
    prefix: str = "higgs"  # the cache files' names start with it

    @property
    def key(self) -> str:
        return identity_key(self.identity)


def identity_key(identity: dict) -> str:
    """A short name for a source's identity, used in file names."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One cache file and its header."""

    path: Path
    header: dict

    @property
    def rows(self) -> int:
        return self.header["rows"]

    def covers(self, n_rows: Optional[int]) -> bool:
        """Whether it holds the first `n_rows` rows (None: every row) of its source."""
        return self.header["complete"] or (n_rows is not None and self.rows >= n_rows)

    def head(self, n_rows: Optional[int], *, verify: bool = True) -> np.ndarray:
        """The first `n_rows` rows (None: all), memory-mapped read-only; DataError if the file's rows no longer
        match its header's digest (`verify`: False only for the file this process has just written)."""
        shape = (self.rows, self.header["columns"])
        rows = np.memmap(self.path, dtype=np.float32, mode="r", offset=HEADER_BYTES, shape=shape)
        if verify and rows_digest(rows) != self.header["digest"]:
            source = self.header["source"].get("url", self.header["source"].get("path"))
            raise DataError(f"cache file {self.path}: its rows do not match its header's digest (altered since it was "
                            f"written); delete it and run again to rebuild it from {source}")
        return rows if n_rows is None else rows[:n_rows]

    @property
    def legacy(self) -> bool:
        """A file of the older format, without a digest of its rows."""
        return "digest" not in self.header


def rows_digest(rows: np.ndarray) -> str:
    """'crc32:<hex>' over the rows' bytes, read from the memory map a chunk at a time."""
    flat = memoryview(np.ascontiguousarray(rows).reshape(-1)).cast("B")
    crc = 0
    for start in range(0, len(flat), DIGEST_CHUNK_BYTES):
        crc = isal_zlib.crc32(flat[start : start + DIGEST_CHUNK_BYTES], crc)
    return f"crc32:{crc:08x}"


@dataclass(frozen=True)
class CachedRows:
    """Rows of a source, the cache file they are mapped from, and whether this call ingested them."""

    rows: np.ndarray
    entry: Optional[Entry]  # None when data.cache_dir could not be written (the rows are in memory)
    ingested: bool


def cached_rows(source: Source, n_rows: Optional[int], n_features: int, cache_dir: Path, *, progress: bool) -> CachedRows:
    """The first `n_rows` rows (None: all) of `source`, memory-mapped from the cache, ingesting them first if needed.

    When data.cache_dir cannot be written, the rows are parsed into memory, with a warning.
    """
    entry = _find(cache_dir, source, n_rows, n_features)
    ingested = False
    if entry is None:
        try:
            entry, ingested = ingest(source, n_rows, n_features, cache_dir, progress=progress)
        except OSError as exc:
            log.warning("data.cache_dir: cannot cache the rows of %s in %s (%s); parsing them without a cache",
                        source.location, cache_dir, exc.strerror or exc)
            return CachedRows(_parse_all(source, n_rows, n_features), None, True)
    else:
        log.info("%s: %d cached rows in %s", source.location, entry.rows, entry.path)
    return CachedRows(entry.head(n_rows, verify=not ingested), entry, ingested)


def ingest(
    source: Source, n_rows: Optional[int], n_features: int, cache_dir: Path, *, progress: bool
) -> Tuple[Entry, bool]:
    """Parse `source` into a cache file once, whoever else asks at the same time: the entry, and whether this call wrote it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"{source.prefix}-{source.key}.lock"):
        entry = _find(cache_dir, source, n_rows, n_features)  # another job may have ingested it while this one waited
        if entry is not None:
            return entry, False
        for stale in cache_dir.glob(f".{source.prefix}-{source.key}-*{SUFFIX}.tmp"):  # left by a killed ingest (the lock is ours)
            stale.unlink(missing_ok=True)
        entry = _write(source, n_rows, n_features, cache_dir, progress)
        _remove_superseded(cache_dir, source, entry)
        return entry, True


def cached_entries_of(cache_dir: Path, location: str) -> List[Entry]:
    """Every readable cache file of `location` (a path or URL), newest first."""
    found = [e for e in _entries(cache_dir) if e.header["source"].get("url", e.header["source"].get("path")) == location]
    return sorted(found, key=lambda e: e.header["ingested_at"], reverse=True)


def _find(cache_dir: Path, source: Source, n_rows: Optional[int], n_features: int) -> Optional[Entry]:
    """The smallest readable cache file of this exact source that holds the rows asked for, with as many columns as
    the config asks (data.n_features=27 on a cache of 28 parses the file again, and says what is wrong with it)."""
    fits = [e for e in _entries(cache_dir, source.key, source.prefix)
            if not e.legacy and e.header["source"] == source.identity and e.covers(n_rows) and e.header["columns"] == 1 + n_features]
    return min(fits, key=lambda e: e.rows, default=None)


def _entries(cache_dir: Path, key: str = "*", prefix: str = "*") -> Iterator[Entry]:
    """Readable cache files (of one source key, or all); an unreadable one is skipped with a warning."""
    for path in sorted(cache_dir.glob(f"{prefix}-{key}-*{SUFFIX}")):
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER_BYTES)
                size = os.fstat(f.fileno()).st_size
            magic = next((m for m in (MAGIC, LEGACY_MAGIC) if head.startswith(m)), None)
            if magic is None:
                raise ValueError("not a cache file")
            header = json.loads(head[len(magic):].rstrip(b" \0"))
            if size != HEADER_BYTES + 4 * header["rows"] * header["columns"]:
                raise ValueError(f"{size} bytes, not the {header['rows']} rows its header promises")
        except FileNotFoundError:  # removed by another job since the glob
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            continue
        yield Entry(path, header)


def _write(source: Source, n_rows: Optional[int], n_features: int, cache_dir: Path, progress: bool) -> Entry:
    """Parse into a temporary file, then rename it into place; nothing is left behind on any failure."""
    from tqdm import tqdm

    started = time.perf_counter()
    counted: List[CountingReader] = []

    def open_counted():
        counted.append(CountingReader(source.open_raw()))
        return counted[-1]

    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{source.prefix}-{source.key}-", suffix=SUFFIX + ".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes it private; the cache is for every job, whoever runs it
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=source.size, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest", disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            out.write(b"\0" * HEADER_BYTES)
            rows = 0
            crc = 0
            for block in _blocks(source, open_counted, n_rows, n_features):
                out.write(block.data)
                crc = isal_zlib.crc32(block.data, crc)  # bytes as the file holds them: C-ordered float32 rows
                rows += len(block)
                bar.update((counted[-1].bytes_read if counted else bar.n) - bar.n)  # a parser of its own reads by path
                bar.set_postfix_str(f"{rows:,} rows", refresh=False)
            complete = n_rows is None or rows < n_rows  # the source ran out before the rows asked for
            header = {
                "source": source.identity,
                "rows": rows,
                "columns": 1 + n_features,
                "dtype": "float32",
                "complete": complete,
                "digest": f"crc32:{crc:08x}",
                "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 3),
            }
            encoded = MAGIC + json.dumps(header).encode()
            if len(encoded) > HEADER_BYTES:
                raise DataError(f"{source.location}: its identity is too long for a cache header")
            out.seek(0)
            out.write(encoded.ljust(HEADER_BYTES, b" "))
        if source.identity_now is not None and source.identity_now() != source.identity:
            raise DataError(f"{source.location} changed while it was being read; run again once it is complete")
        path = cache_dir / f"{source.prefix}-{source.key}-{'all' if complete else rows}{SUFFIX}"
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("%s: %d rows ingested into %s in %.1f s", source.location, rows, path, header["seconds"])
    return Entry(path, header)


def _remove_superseded(cache_dir: Path, source: Source, keep: Entry) -> None:
    """Remove this source's other cache files: older versions of it, and shorter prefixes `keep` covers.

    A job that has one of them memory-mapped keeps reading it: removing a file only unlinks its name.
    """
    for entry in cached_entries_of(cache_dir, source.location):
        if entry.path == keep.path:
            continue
        if entry.header["source"] != source.identity or keep.covers(entry.rows) or entry.legacy:
            entry.path.unlink(missing_ok=True)
            log.info("removed superseded cache file %s", entry.path)


def _parse_all(source: Source, n_rows: Optional[int], n_features: int) -> np.ndarray:
    """The rows parsed into memory (when the cache cannot be written)."""
    return np.concatenate(list(_blocks(source, source.open_raw, n_rows, n_features)))


def _blocks(source: Source, open_raw: OpenRaw, n_rows: Optional[int], n_features: int) -> Iterator[np.ndarray]:
    """The source's rows as float32 blocks (label first), by its own parser or as a UCI-layout file."""
    if source.parse is not None:
        return source.parse(open_raw, n_rows)
    return parse_blocks(open_raw, source.location, n_rows, n_features, threads=source.threads)


@contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on `lock_path` for the block; a job that waits says so."""
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another job that is ingesting the same source (%s)", lock_path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
