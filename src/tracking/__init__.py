"""The MLflow store: reading runs, writing one run (metrics, models, datasets, provenance), resume claims, liveness."""
