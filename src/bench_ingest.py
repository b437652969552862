"""`python -m src.bench_ingest`: the command; its work is `src.bench.ingest`."""

import sys

from src.bench.ingest import main

if __name__ == "__main__":
    main()
    sys.exit(0)
