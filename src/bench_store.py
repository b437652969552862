"""`python -m src.bench_store --tracking-uri URI [--calls N] [--clients K]`: the command; its work is `src.bench.store`."""

import sys

from src.bench.store import main

if __name__ == "__main__":
    sys.exit(main())
