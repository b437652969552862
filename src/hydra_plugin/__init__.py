"""Hydra plugins of this project, installed as the package `hydra_plugins.overfit_lab` (see pyproject.toml):
Hydra instantiates plugins only from the `hydra_plugins` namespace."""
