"""`python -m src.reproduce RUN_ID`: the command; its work is `src.experiments.reproduce`."""

import sys

from src.experiments.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
