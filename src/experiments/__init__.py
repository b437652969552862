"""Experiments: one training run, the Hydra job around it, sweeps and their parent runs, Optuna search, reproduce."""
