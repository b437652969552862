"""Synthetic files in the UCI HIGGS layout, for scale tests and benchmarks (the real file is 2.8 GB)."""

import io
from pathlib import Path

import numpy as np

N_FEATURES = 28
# ISA-L level 3 compresses this text to ~43 % of its size, close to the real HIGGS.csv.gz's 35-40 %,
# about 12x faster than zlib's level 6
COMPRESSION_LEVEL = 3


def uci_block(n_rows: int, seed: int = 0) -> np.ndarray:
    """`n_rows` random rows (label 0/1 first, then the features) as float32."""
    rng = np.random.default_rng(seed)
    block = rng.normal(size=(n_rows, 1 + N_FEATURES)).astype(np.float32)
    block[:, 0] = rng.integers(0, 2, size=n_rows)
    return block


def uci_text(rows: np.ndarray) -> bytes:
    """Rows formatted as the UCI file formats them: `%.18e`, comma-separated, one line each."""
    buf = io.StringIO()
    np.savetxt(buf, rows, fmt="%.18e", delimiter=",")
    return buf.getvalue().encode()


def write_uci_gzip(path: Path, n_rows: int, *, block_rows: int = 20_000, seed: int = 0) -> np.ndarray:
    """A gzip CSV of `n_rows` rows: one random block of `block_rows` rows, repeated; returns the block.

    Formatting floats is the slow part (~45k rows/s), so the block is formatted once; it is far
    larger than gzip's 32 KiB window, so the file compresses and decompresses like fresh data.
    """
    from isal import igzip

    block = uci_block(min(block_rows, n_rows), seed)
    text = uci_text(block)
    line_ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n")) + 1
    with igzip.open(path, "wb", compresslevel=COMPRESSION_LEVEL) as f:
        full, rest = divmod(n_rows, len(block))
        for _ in range(full):
            f.write(text)
        if rest:
            f.write(text[: line_ends[rest - 1]])
    return block
