"""`python -m src.migrate --to URI [--from URI] [--experiment NAME ...]`: the command; its work is `src.ops.migrate`."""

import sys

from src.ops.migrate import main

if __name__ == "__main__":
    sys.exit(main())
