"""`python -m src.db start|stop|status`: the command; its work is `src.ops.db`."""

import sys

from src.ops.db import main

if __name__ == "__main__":
    sys.exit(main())
