"""train.strategy=multi_worker: two worker processes on 127.0.0.1 train like one process with two replicas, only
the chief touches the store, a dead worker fails the other instead of hanging; configs that cannot train are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
from mlflow import MlflowClient

from src.core.errors import ConfigError
from src.experiments.train import train
from tests.helpers import all_runs, error_lines, free_port, history, run_cli, run_module

KEYS = ("loss", "val_loss", "binary_crossentropy", "val_binary_crossentropy", "accuracy", "val_accuracy", "reg_loss")
# Two workers all-reduce the same two half-batch gradients that two local replicas sum: float rounding only.
TOLERANCE = 1e-5
COLLECTIVE_TIMEOUT = 20  # seconds; the kill test's worker must fail within this (plus its own exit)
EXIT_MARGIN = 60  # seconds for a failed worker to mark its run and exit, on two busy cores


def _cluster(ports: Sequence[int], index: int) -> str:
    """TF_CONFIG for worker `index` of a cluster of workers on 127.0.0.1 (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _start_workers(args: List[str], worker_overrides: Sequence[List[str]], tmp_path: Path) -> List[subprocess.Popen]:
    """`python -m src.train ARGS` once per worker, each with its TF_CONFIG, overrides and job folder."""
    ports = [free_port() for _ in worker_overrides]
    while len(set(ports)) < len(ports):
        ports = [free_port() for _ in worker_overrides]
    workers = []
    for index, overrides in enumerate(worker_overrides):
        log = open(tmp_path / f"worker{index}.log", "w")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "src.train", *args, *overrides, f"hydra.run.dir={tmp_path}/worker{index}"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CONFIG": _cluster(ports, index)},
        ))
        log.close()
    return workers


def _log(tmp_path: Path, index: int) -> str:
    return (tmp_path / f"worker{index}.log").read_text()[-3000:]


def _base(higgs_file, epochs: int, n_train: int) -> List[str]:
    return [f"data.path={higgs_file}", "data.n_validation=500", f"data.n_train={n_train}", f"train.epochs={epochs}",
            "model=small", "reg=l2", "loop=tape", "quiet=true", "mlflow.log_models=false"]


def _histories(tracking_uri: str) -> Dict[str, List[float]]:
    (run,) = all_runs(tracking_uri)
    return history(MlflowClient(tracking_uri), run.info.run_id, KEYS)


@pytest.mark.slow
def test_two_workers_train_like_two_replicas_and_only_the_chief_logs(higgs_file, tmp_path, store_overrides,
                                                                    tracking_uri, capsys):
    base = _base(higgs_file, epochs=3, n_train=2000)
    # the non-chief gets a store of its own: it must never create it
    untouched = tmp_path / "untouched" / "mlflow.db"
    workers = _start_workers(
        [*base, "train.strategy=multi_worker", f"train.collective_timeout_seconds={COLLECTIVE_TIMEOUT}"],
        [store_overrides, [f"mlflow.tracking_uri=sqlite:///{untouched}", f"data.cache_dir={tmp_path}/cache"]],
        tmp_path,
    )
    for index, worker in enumerate(workers):
        assert worker.wait(timeout=600) == 0, _log(tmp_path, index)
    assert not untouched.parent.exists()
    (run,) = all_runs(tracking_uri)  # exactly one run, the chief's
    assert run.info.status == "FINISHED"
    # MultiWorkerMirroredStrategy's class is TensorFlow's CollectiveAllReduceStrategy; the devices are the cluster's
    assert (run.data.tags["strategy"], run.data.tags["replicas"]) == ("multi_worker", "2")
    assert run.data.tags["devices"] == ("/job:worker/replica:0/task:0/device:CPU:0,"
                                        "/job:worker/replica:0/task:1/device:CPU:0")
    assert run.data.params["train.strategy"] == "multi_worker"

    mirrored_uri = f"sqlite:///{tmp_path}/mirrored/mlflow.db"
    proc = run_cli([*base, "train.strategy=mirrored", "train.logical_cpus=2", f"mlflow.tracking_uri={mirrored_uri}",
                    f"mlflow.artifact_location={tmp_path}/mirrored/artifacts", f"data.cache_dir={tmp_path}/cache",
                    f"hydra.run.dir={tmp_path}/mirrored/job"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers_history, mirrored_history = _histories(tracking_uri), _histories(mirrored_uri)
    deltas = {key: max(abs(a - b) for a, b in zip(workers_history[key], mirrored_history[key], strict=True))
              for key in KEYS}
    with capsys.disabled():  # the README's figure
        print(f"\nmax |two workers - one process, logical_cpus=2 mirrored| per epoch: {max(deltas.values()):.3g}",
              deltas)
    assert len(workers_history["loss"]) == 3
    assert max(deltas.values()) <= TOLERANCE, deltas
    # the penalty counts once across workers: on fixed weights val_loss - val_bce is exactly it
    assert workers_history["val_loss"][-1] - workers_history["val_binary_crossentropy"][-1] == pytest.approx(
        workers_history["reg_loss"][-1], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_dead_worker_fails_the_chief_within_the_timeout_and_its_run_ends_failed(higgs_file, tmp_path, stop,
                                                                                 store_overrides, tracking_uri):
    """Killed, its connections close and the chief's step fails at once; frozen (a machine gone without
    closing them), TensorFlow's coordination service misses its heartbeats and aborts the step (~10 s)."""
    base = _base(higgs_file, epochs=1000, n_train=9000)
    chief, other = _start_workers(
        [*base, "train.strategy=multi_worker", f"train.collective_timeout_seconds={COLLECTIVE_TIMEOUT}"],
        [store_overrides, store_overrides], tmp_path,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(MlflowClient(tracking_uri).get_metric_history(r.info.run_id, "loss")
                      for r in all_runs(tracking_uri)):
            assert chief.poll() is None and other.poll() is None, _log(tmp_path, 0) + _log(tmp_path, 1)
            assert time.monotonic() < deadline, "no epoch logged"
            time.sleep(1)
        other.send_signal(stop)
        stopped = time.monotonic()
        returncode = chief.wait(timeout=COLLECTIVE_TIMEOUT + EXIT_MARGIN)
        print(f"chief exited {returncode} {time.monotonic() - stopped:.1f} s after the other worker got {stop.name}")
    finally:
        for worker in (chief, other):
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert returncode != 0, _log(tmp_path, 0)
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED", _log(tmp_path, 0)
    assert run.data.tags.get("error"), run.data.tags


def test_multi_worker_without_a_cluster_is_one_line(higgs_file, tmp_path, store_overrides):
    proc = run_module("src.train", [f"data.path={higgs_file}", "loop=tape", "train.strategy=multi_worker",
                                    *store_overrides], cwd=tmp_path, env_drop=("TF_CONFIG", "SLURM_PROCID"))
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        "train.strategy=multi_worker: neither TF_CONFIG nor SLURM's environment (SLURM_PROCID) describes the "
        "cluster; set TF_CONFIG on each worker (README: Multi-worker training)"]


def test_configs_that_cannot_train_across_workers_are_refused_before_training(make_cfg, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _cluster([1, 2], 0))
    refused = {
        ("loop=fit",): r"^loop=fit: Keras 3's fit fails under MultiWorkerMirroredStrategy \(keras-team/keras#20585\); "
                       r"use loop=tape$",
        ("loop=tape", "train.logical_cpus=2"): r"^train.logical_cpus=2: .* use train.logical_cpus=1$",
        ("loop=tape", "resume=true"): r"^resume=true: not supported with train.strategy=multi_worker$",
        ("loop=tape", "train.collective_timeout_seconds=0"): r"^train.collective_timeout_seconds=0.0: must be positive",
    }
    for overrides, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            train(make_cfg("train.strategy=multi_worker", *overrides))
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="^TF_CONFIG: not a cluster spec with a task"):
        train(make_cfg("train.strategy=multi_worker", "loop=tape"))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                                                "task": {"type": "ps", "index": 0}}))
    with pytest.raises(ConfigError, match="task type is 'ps'"):
        train(make_cfg("train.strategy=multi_worker", "loop=tape"))


def test_the_chief_is_the_chief_task_else_worker_0_else_slurm_rank_0(make_cfg, monkeypatch):
    from src.training.runtime import is_chief

    cfg = make_cfg("train.strategy=multi_worker", "loop=tape")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for rank, chief in (("0", True), ("1", False)):
        monkeypatch.setenv("SLURM_PROCID", rank)
        assert is_chief(cfg) is chief
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    for cluster, task, chief in (
        ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, False),
        (with_chief, {"type": "chief", "index": 0}, True),
        (with_chief, {"type": "worker", "index": 0}, False),
    ):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))  # TF_CONFIG wins over SLURM
        assert is_chief(cfg) is chief, (cluster, task)
    assert is_chief(make_cfg("loop=tape")) is True  # any other strategy: the process is its own chief


# A worker of make_strategy's cluster: one all-reduce, then (worker 1) alive and heartbeating but away from the next.
_STALLED_WORKER = """
import sys, time
import tensorflow as tf
from src.training.runtime import make_strategy
strategy = make_strategy("multi_worker", "CPU", collective_timeout_seconds=float(sys.argv[2]))
step = tf.function(lambda: strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.constant(1.0))))
step()
if sys.argv[1] == "1":
    time.sleep(120)
started = time.monotonic()
try:
    step()
except tf.errors.DeadlineExceededError:
    print(f"timed out after {time.monotonic() - started:.1f} s")
    sys.exit(3)
"""


@pytest.mark.slow
def test_a_collective_waiting_for_a_live_but_absent_worker_times_out(tmp_path):
    """What a kill or a freeze does not show (TensorFlow notices those by themselves): a worker alive but stuck
    elsewhere fails the others' step after train.collective_timeout_seconds, as make_strategy configures it."""
    timeout = 8
    ports = [free_port(), free_port()]
    workers = [subprocess.Popen([sys.executable, "-c", _STALLED_WORKER, str(index), str(timeout)],
                                cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TF_CONFIG": _cluster(ports, index)})
               for index in (0, 1)]
    try:
        out, _ = workers[0].communicate(timeout=300)
        assert workers[0].returncode == 3, out
        waited = float(out.split("timed out after ")[1].split(" s")[0])
        assert timeout <= waited < timeout + 5, out
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
