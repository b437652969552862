"""`python -m src.compare`: the command; its work is `src.analysis.compare`."""

import sys

from src.analysis.compare import main

if __name__ == "__main__":
    sys.exit(main())
