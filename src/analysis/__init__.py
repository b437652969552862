"""What runs show: grouped statistics and tables, the figures, `src.compare` and `src.evaluate`."""
