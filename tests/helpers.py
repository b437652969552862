"""The one way tests run a command, find a free port, read runs and histories, and pick out error lines."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from mlflow import MlflowClient

from src.core.metrics import store_metric_name
from src.tracking.store import ensure_store, is_sweep_parent, metric_histories

EXPERIMENT = "overfit-and-underfit"

# Lines that are not the error: TensorFlow/absl start-up chatter, MLflow's INFO logging
# (e.g. creating a new store), and Hydra's frame around a job's error.
NOISE = [
    re.compile(p)
    for p in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
        r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ",
        r"^To enable the following instructions: .* with the appropriate compiler flags\.$",
        r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO ",
        r"^Error executing job with overrides: \[.*\]$",
        r"^Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace\.$",
    )
]


def cli(*args: str) -> List[str]:
    """`python -m src.train ARGS` as an argument list."""
    return [sys.executable, "-m", "src.train", *args]


def run_module(
    module: str, args: Sequence[str], cwd: Path, timeout: float = 600, env_drop: Sequence[str] = (), env=None
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` to completion, output captured."""
    environment = {k: v for k, v in os.environ.items() if k not in env_drop}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=environment
    )


def run_cli(args: List[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_module("src.train", args, cwd, timeout)


def error_lines(stderr: str) -> List[str]:
    """The lines of stderr that are not start-up chatter: a one-line error gives exactly one."""
    return [line for line in stderr.splitlines() if line.strip() and not any(p.search(line) for p in NOISE)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_runs(tracking_uri: str) -> list:
    """Every run of the project's experiment (the store opened through its lock: a job may be creating it)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return []
    ensure_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def split_runs(tracking_uri: str):
    """(parent runs, child runs) of the experiment."""
    runs = all_runs(tracking_uri)
    return [r for r in runs if is_sweep_parent(r)], [r for r in runs if not is_sweep_parent(r)]


def history(client, run_id: str, keys: Sequence[str]) -> Dict[str, List[float]]:
    """Each metric's values in step order (the project's one history reader underneath)."""
    by_step = metric_histories(client, client.get_run(run_id), [store_metric_name(key) for key in keys])
    in_order = {key: [steps[s] for s in sorted(steps)] for key, steps in by_step.items()}
    return {key: in_order[store_metric_name(key)] for key in keys}


def expected_stats(client, run_id: str) -> Dict[str, float]:
    """A comparison table's numbers for one run, recomputed here from its metric histories."""
    import numpy as np

    h = history(client, run_id, ("val_binary_crossentropy", "binary_crossentropy", "val_accuracy"))
    val = h["val_binary_crossentropy"]
    return {
        "final_val_binary_crossentropy": val[-1],
        "best_val_binary_crossentropy": min(val),
        "best_epoch": int(np.argmin(val)),
        "final_train_val_gap": val[-1] - h["binary_crossentropy"][-1],
        "final_val_accuracy": h["val_accuracy"][-1],
        "val_bce_wobble": float(np.mean(np.abs(np.diff(val[(len(val) - 1) // 2 :])))),
    }


def bench_results(sweep_epochs: int):
    """A bench's results as run_bench returns them, with a whole-sweep measurement (numbers made up)."""
    loop = {"median_epoch_seconds": 0.5, "fraction_of_bound": 0.8, "median_cores_busy": None, "logging_share": 0.001,
            "median_log_epoch_seconds": 0.0005, "checkpoint_share": 0.01, "median_checkpoint_seconds": 0.004,
            "median_checkpoint_write_seconds": 0.001}
    job = {"run_name": "fit-none-large", "status": "FINISHED", "epochs": sweep_epochs, "sum_epoch_seconds": 40.0,
           "before_run_seconds": 0.3, "run_to_first_epoch_seconds": 0.1, "after_last_epoch_seconds": 0.4,
           "between_epochs_seconds": 1.5, "first_epoch_extra_seconds": 0.1, "fixed_seconds": 0.9,
           "steady_epoch_seconds": 0.4, "run_end": 0.0}
    return {
        "machine": {"cores": 2, "cpu": "x", "tensorflow": "t", "keras": "k", "python": "p", "intra_op_threads": 0,
                    "inter_op_threads": 0, "TF_ENABLE_ONEDNN_OPTS": None},
        "load_average_start": [0.1, 0.1, 0.1], "load_average_end": [0.1, 0.1, 0.1], "overrides": [], "epochs": 2,
        "warmup": 1, "steps_per_epoch": 19, "batch_size": 500,
        "matmul": {"shape": "s", "flop_per_s": 1e11, "flop_per_s_before_loops": 1e11, "flop_per_s_after_loops": 1e11,
                   "cores_busy": 1.9},
        "flops": {"epoch": 4e10}, "bound_seconds": 0.4, "loops": {"fit": loop, "tape": dict(loop)},
        "ratios": {"tape_over_fit": 1.0},
        "startup": {"start_to_first_step_seconds": 6.0, "start_to_first_epoch_end_seconds": 8.0,
                    "phases_since_start_seconds": {}, "method": "m"},
        "sweep": {"epochs": sweep_epochs, "wall_seconds": 250.0, "sum_epoch_seconds": 160.0, "between_epochs_seconds": 6.0, "startup_seconds": 6.0,
                  "jobs": [dict(job, fixed_seconds=7.0), job, job, job], "median_job_fixed_seconds": 0.9,
                  "after_last_run_seconds": 1.0, "method": "m", "command": "python -m src.train -m reg=none,l2"},
        "search": {"epochs": 10, "wall_seconds": 31.0, "sum_epoch_seconds": 22.0, "sum_steady_epoch_seconds": 20.0,
                   "between_epochs_seconds": 0.5, "jobs": [job] * 8, "median_job_fixed_seconds": 0.9,
                   "after_last_run_seconds": 1.0, "method": "m", "command": "python -m src.train -m hydra/sweeper=optuna"},
        "peak_rss_mib": {"self": 900.0, "startup_child": None},
    }
