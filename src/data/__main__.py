"""`python -m src.data SOURCE`: ingest a HIGGS file (a path or a URL) into the binary cache training reads."""

import argparse
import logging
import re
import sys
import time
from typing import Optional, Sequence

from src.core.config import compose_config
from src.core.errors import UserError
from src.core.redaction import RedactedStream
from src.data.higgs import source_rows


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
    if not isinstance(sys.stderr, RedactedStream):  # a URL's password never reaches the terminal, as with src.train
        sys.stdout, sys.stderr = RedactedStream(sys.stdout), RedactedStream(sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
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
