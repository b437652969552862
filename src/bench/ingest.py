"""`python -m src.bench_ingest`: `python -m src.data` against `gzip -dc FILE > /dev/null` on one file, side by side."""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from src.core.schema import PROJECT_ROOT


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench_ingest",
        description="Time a whole `python -m src.data FILE` (process start included, into a fresh cache each time) "
        "and `gzip -dc FILE > /dev/null`, alternating, and print the medians and their ratio (target <= 1.25).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, help="a UCI file (default: a synthetic gzip of --rows rows)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic file")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (median)")
    parser.add_argument("--open-rows", type=int, default=None, help="instead: time opening a cache file of this many "
                        "rows (11000000: full HIGGS) with and without its digest check, page-cached")
    return parser.parse_args(argv)


def _seconds(command: Sequence[str], **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - started


def measure(data: Path, repeats: int) -> Dict[str, float]:
    """Median seconds of gzip -dc and of the ingest command on `data`, and the rows ingested."""
    gunzip, ingest = [], []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for i in range(repeats):
            with open("/dev/null", "wb") as null:
                gunzip.append(_seconds(["gzip", "-dc", str(data)], stdout=null))
            cache = Path(tmp) / f"cache{i}"
            ingest.append(_seconds([sys.executable, "-m", "src.data", str(data), "--cache-dir", str(cache), "--quiet"],
                                   cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL))
            (rows_file,) = cache.glob("*.rows")
            rows = (rows_file.stat().st_size - 4096) // (29 * 4)
            shutil.rmtree(cache)
    return {"gzip_seconds": statistics.median(gunzip), "ingest_seconds": statistics.median(ingest), "rows": rows}


def open_cost(rows: int, repeats: int) -> Dict[str, float]:
    """Median milliseconds to open a cache file of `rows` random rows: header and memory map, then with the check."""
    import numpy as np

    from src.data.cache import Source, ingest

    def blocks(open_raw, n_rows):
        rng = np.random.default_rng(0)
        for start in range(0, rows, 1_000_000):
            yield rng.random((min(1_000_000, rows - start), 29), dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
        source = Source("synthetic", {"path": "synthetic", "rows": rows}, lambda: None, None, False, parse=blocks)
        entry, _ = ingest(source, None, 28, Path(tmp), progress=False)
        times: Dict[str, list] = {"unchecked_ms": [], "checked_ms": []}
        for _ in range(repeats):
            for key, verify in (("unchecked_ms", False), ("checked_ms", True)):
                started = time.perf_counter()
                entry.head(None, verify=verify)
                times[key].append(1000 * (time.perf_counter() - started))
        size = entry.path.stat().st_size
    print(f"cache file of {rows:,} rows ({size / 2**30:.2f} GiB), median of {repeats}: memory map "
          f"{statistics.median(times['unchecked_ms']):.1f} ms, with the digest check "
          f"{statistics.median(times['checked_ms']):.1f} ms")
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    if args.open_rows is not None:
        return open_cost(args.open_rows, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-data-") as tmp:
        data = args.data
        if data is None:
            from src.data.synthetic import write_uci_gzip

            data = Path(tmp) / "higgs-synthetic.csv.gz"
            print(f"writing {args.rows:,} synthetic rows to {data} ...", flush=True)
            write_uci_gzip(data, args.rows)
        result = measure(data, args.repeats)
        size = data.stat().st_size
    ratio = result["ingest_seconds"] / result["gzip_seconds"]
    print(f"file: {size / 2**20:,.0f} MiB, {result['rows']:,} rows; median of {args.repeats}")
    print(f"gzip -dc > /dev/null      {result['gzip_seconds']:6.2f} s")
    print(f"python -m src.data        {result['ingest_seconds']:6.2f} s  "
          f"({result['rows'] / result['ingest_seconds']:,.0f} rows/s)")
    print(f"ratio                     {ratio:6.2f}  (target <= 1.25)")
    return {**result, "ratio": ratio}

