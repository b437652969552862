"""`python -m src.bench_pipeline`: the command; its work is `src.bench.pipeline`."""

import sys

from src.bench.pipeline import main

if __name__ == "__main__":
    main()
    sys.exit(0)
