"""Helpers for tests that drive the CLI in a subprocess."""

import subprocess
import sys
from pathlib import Path
from typing import List

from mlflow import MlflowClient

EXPERIMENT = "overfit-and-underfit"


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "src.train", *args]


def run_cli(args: List[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def all_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def split_runs(tracking_uri: str):
    """(parent runs, child runs) of the experiment."""
    runs = all_runs(tracking_uri)
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep") != "true"]
    return parents, children
