"""UCI-layout text (plain or gzip) -> float32 rows: pyarrow's CSV reader fed by ISA-L, the line parser as referee.

The fast path parses every row as float64 and rounds it to float32, exactly what the line parser
does (fast_float and Python's `float` both round correctly), so the two give bit-identical rows.
It accepts a subset of what the line parser accepts; on anything else (a bad value, a header, a
wrong field count, a truncated gzip, a line of spaces) the line parser re-reads the source from
the start and either names the file and line or, for odd but valid text, supplies the rest.
"""

import gzip
import io
import logging
import math
import zlib
from typing import IO, Callable, Iterable, Iterator, Optional

import numpy as np

from src.core.errors import DataError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
FLOAT32_MAX = float(np.finfo(np.float32).max)
# pyarrow parses (and converts) the text in blocks of this many bytes, several at once
FAST_BLOCK_BYTES = 1 << 20
# pyarrow reads 8-25 MiB ahead of the rows it hands on; a shorter prefix of a stream (a download
# of the tutorial's 11,000 rows) goes to the line parser, which reads only what it needs
STREAM_FAST_MIN_ROWS = 200_000
# the line parser hands on rows in blocks of this many
LINE_BLOCK_ROWS = 1 << 16

OpenRaw = Callable[[], IO[bytes]]  # opens the source's bytes afresh (a file, an HTTP response)


class _FastPathRejected(Exception):
    """The fast path met text it does not take; the line parser decides what it is."""


def parse_blocks(
    open_raw: OpenRaw, name: str, n_rows: Optional[int], n_features: int, *, threads: bool = True
) -> Iterator[np.ndarray]:
    """(rows, 1 + n_features) float32 blocks of the first `n_rows` rows (None: every row) of a UCI file.

    Raises DataError naming `name` and the line for anything that is not a UCI row.
    `threads`: decompress in a thread of its own (local files); False for a stream (see STREAM_FAST_MIN_ROWS).
    """
    done = 0
    if not threads and n_rows is not None and n_rows < STREAM_FAST_MIN_ROWS:
        with open_raw() as raw:
            yield from _line_blocks(_text_lines(raw), n_rows, n_features, name)
        return
    try:
        for block in _fast_blocks(open_raw, n_rows, n_features, threads):
            done += len(block)
            yield block
        if done:
            return
        reason = "no rows"
    except _FastPathRejected as exc:
        reason = str(exc)
    except (DataError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid, ISA-L's errors, a cut stream: the line parser says which
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log.info("%s: the fast parser stopped after %d rows (%s); reading it line by line", name, done, reason)
    with open_raw() as raw:
        yield from _line_blocks(_text_lines(raw), n_rows, n_features, name, skip_rows=done)


def _fast_blocks(open_raw: OpenRaw, n_rows: Optional[int], n_features: int, threads: bool) -> Iterator[np.ndarray]:
    """Blocks parsed by pyarrow; _FastPathRejected (or pyarrow's own error) on anything unusual."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from isal import igzip, igzip_threaded

    names = [str(i) for i in range(1 + n_features)]
    read_options = pcsv.ReadOptions(column_names=names, block_size=FAST_BLOCK_BYTES, use_threads=True)
    # no quoting: a quoted number is not a UCI value (and the line parser rejects it too)
    parse_options = pcsv.ParseOptions(quote_char=False)
    # float64 then float32, as the line parser rounds; only an empty field is null (and rejected below)
    convert_options = pcsv.ConvertOptions(
        column_types={n: pa.float64() for n in names}, null_values=[""], strings_can_be_null=False
    )
    left = n_rows
    with open_raw() as raw:
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
        if buffered.peek(2)[:2] == GZIP_MAGIC:
            text = igzip_threaded.open(buffered, "rb", threads=1) if threads else igzip.IGzipFile(fileobj=buffered)
        else:
            text = buffered
        with text, pcsv.open_csv(
            text, read_options=read_options, parse_options=parse_options, convert_options=convert_options
        ) as reader:
            for batch in reader:
                if left is not None and batch.num_rows > left:
                    batch = batch.slice(0, left)
                block = np.empty((batch.num_rows, 1 + n_features), dtype=np.float32)
                for j, column in enumerate(batch.columns):
                    if column.null_count:
                        raise _FastPathRejected(f"an empty value in column {j + 1}")
                    with np.errstate(over="ignore"):  # beyond float32 is inf: the line parser names it
                        block[:, j] = column.to_numpy()
                if not np.isfinite(block).all():
                    raise _FastPathRejected("a non-finite value")
                labels = block[:, 0]
                if not ((labels == 0) | (labels == 1)).all():
                    raise _FastPathRejected("a label other than 0 or 1")
                yield block
                if left is not None:
                    left -= len(block)
                    if left == 0:
                        return


def _line_blocks(
    lines: Iterable[str], n_rows: Optional[int], n_features: int, name: str, skip_rows: int = 0
) -> Iterator[np.ndarray]:
    """The line parser: blocks of up to LINE_BLOCK_ROWS rows after the first `skip_rows` (counted, not parsed).

    Stops reading at row `n_rows`. Blank lines (e.g. a trailing empty line) are skipped, as
    `np.loadtxt` does; any other malformed line is a DataError naming `name` and the line.
    """
    n_fields = 1 + n_features
    block = np.empty((LINE_BLOCK_ROWS, n_fields), dtype=np.float32)
    filled = 0
    count = 0
    line_no = 0
    try:
        for line_no, line in enumerate(lines, start=1):
            if count == n_rows:
                break
            if not line.strip(" \t\r\n"):
                continue
            if count < skip_rows:  # the fast path already gave these rows
                count += 1
                continue
            block[filled] = _parse_line(line, n_fields, n_features, name, line_no, first=count == 0)
            filled += 1
            count += 1
            if filled == LINE_BLOCK_ROWS:
                yield block.copy()
                filled = 0
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data {_after(line_no)}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: not a CSV or gzip-compressed CSV (non-text byte {exc.object[exc.start]:#04x} {_after(line_no)})"
        ) from None
    if count == 0:
        raise DataError(f"{name}: no data rows (empty file?)")
    if filled:
        yield block[:filled].copy()


def _parse_line(line: str, n_fields: int, n_features: int, name: str, line_no: int, first: bool) -> list:
    """One line's values, or a DataError that says what is wrong with it."""
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
        hint = " (the UCI layout has no header line)" if first else ""
        raise DataError(
            f"{name} line {line_no}: non-numeric value {fields[column].strip()!r} in column {column + 1}{hint}"
        ) from None
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in values):  # training reads float32
        column = next(i for i, v in enumerate(values) if not (math.isfinite(v) and abs(v) <= FLOAT32_MAX))
        what = "label" if column == 0 else f"feature {column}"
        beyond = " (beyond float32, which training reads)" if math.isfinite(values[column]) else ""
        raise DataError(
            f"{name} line {line_no}: non-finite value {fields[column].strip()!r} in column {column + 1} ({what}){beyond}"
        )
    if values[0] not in (0.0, 1.0):
        raise DataError(f"{name} line {line_no}: label must be 0 or 1, got {fields[0].strip()!r}")
    return values


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


class CountingReader(io.RawIOBase):
    """A byte stream that counts what was read from it (the progress bar's bytes)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.bytes_read += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()
