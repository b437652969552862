"""`python -m src.evaluate RUN_ID`: the command; its work is `src.analysis.evaluate`."""

import sys

from src.analysis.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
