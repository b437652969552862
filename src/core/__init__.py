"""The foundation every layer stands on: errors, redaction, signals, private-API shims, the config schemas and checks,
metric names, run states and regularizers. It imports nothing else of the project."""
