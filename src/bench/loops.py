"""The bench's measurements in this process: matmul rate, epoch FLOPs, the training loops and the machine."""

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from src.core.errors import JobFailed

FLOP_CONVENTION = (
    "Dense layers only: forward = 2*in*out FLOPs per row per layer; backward = 2 x forward; "
    "an epoch = 3 x forward on the rows its steps train on (steps_per_epoch * batch_size) "
    "+ 1 x forward on the validation rows. Bias adds, activations, loss, metrics and the "
    "optimizer update are not counted."
)


def dense_shapes(cfg) -> List[tuple]:
    """(in, out) of every Dense layer of the configured model, read from the built model."""
    import keras

    from src.training.models import build_model

    model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
    return [tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def epoch_flops(shapes: Sequence[tuple], train_rows: int, val_rows: int) -> Dict[str, float]:
    """One epoch's FLOPs under FLOP_CONVENTION."""
    forward_per_row = sum(2 * n_in * n_out for n_in, n_out in shapes)
    train = 3 * forward_per_row * train_rows
    val = forward_per_row * val_rows
    return {
        "forward_per_row": forward_per_row,
        "train_rows": train_rows,
        "val_rows": val_rows,
        "train": train,
        "validation": val,
        "epoch": train + val,
    }


def matmul_rate(batch: int, width: int = 512, repeats: int = 7, target_seconds: float = 0.3) -> Dict[str, Any]:
    """float32 FLOP/s of (batch x width) @ (width x width), chained in a tf.function loop; median of repeats."""
    import numpy as np
    import tensorflow as tf

    # x <- x @ W with an orthogonal W keeps the values bounded and makes every product
    # depend on the previous one, as the model's layers do.
    rng = np.random.default_rng(0)
    w = tf.constant(np.linalg.qr(rng.normal(size=(width, width)))[0].astype(np.float32))
    x0 = tf.constant(rng.normal(size=(batch, width)).astype(np.float32))

    @tf.function
    def chain(x, n):
        for _ in tf.range(n):
            x = tf.linalg.matmul(x, w)
        return x

    cores_busy: List[float] = []

    def timed(n: int) -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        chain(x0, tf.constant(n)).numpy()
        elapsed = time.perf_counter() - started
        cores_busy.append((time.process_time() - cpu_started) / elapsed)
        return elapsed

    timed(10)  # trace and warm up
    n = 10
    while True:  # calibrate: one repeat should take about target_seconds
        elapsed = timed(n)
        if elapsed >= target_seconds / 4 or n >= 1 << 20:
            break
        n *= 4
    n = max(1, int(n * target_seconds / max(elapsed, 1e-9)))
    cores_busy.clear()
    times = [timed(n) for _ in range(repeats)]
    flops = 2.0 * batch * width * width * n
    rates = sorted(flops / t for t in times)
    return {
        "shape": f"({batch} x {width}) @ ({width} x {width})",
        "matmuls_per_repeat": n,
        "repeats": repeats,
        "flop_per_s": statistics.median(rates),
        "flop_per_s_min": rates[0],
        "flop_per_s_max": rates[-1],
        "cores_busy": statistics.median(cores_busy),
    }


def measure_loop(label: str, cfg, warmup: int) -> Dict[str, Any]:
    """Train `cfg` for warmup + measured epochs in this process; epoch, logging and CPU times."""
    from src.core.runstates import FINISHED
    from src.experiments.train import train

    cpu_at_epoch_end: List[float] = []
    started = time.perf_counter()
    result = train(cfg, on_epoch_end=[lambda epoch, metrics: cpu_at_epoch_end.append(time.process_time())])
    wall = time.perf_counter() - started
    if result.status != FINISHED:
        why = f": {result.error}" if result.error else ""
        raise JobFailed(f"{label}: run {result.run_name} ended {result.status}{why}")
    epochs = result.history["epoch_seconds"]
    # CPU time of epoch k runs from the end of epoch k-1 to the end of epoch k; epoch 0
    # has no start mark (a warm-up epoch anyway).
    epoch_cpu = [end - start for start, end in zip(cpu_at_epoch_end, cpu_at_epoch_end[1:])]
    cores_busy = [cpu / seconds for cpu, seconds in zip(epoch_cpu, epochs[1:])][max(0, warmup - 1):]
    measured, logged = epochs[warmup:], result.write_seconds[warmup:]
    median = statistics.median(measured)
    log_median = statistics.median(logged) if logged else float("nan")
    copies, writes = result.checkpoint_seconds[warmup:], result.checkpoint_write_seconds[warmup:]
    copy_median, write_median = (statistics.median(copies) if copies else 0.0), (statistics.median(writes) if writes
                                                                                 else 0.0)  # none: not checkpointed
    return {
        "label": label,
        "loop": cfg.loop.name,
        "compile": bool(cfg.loop.get("compile", True)),
        "jit_compile": bool(cfg.train.jit_compile),
        "warmup_epochs": warmup,
        "epoch_seconds": epochs,
        "median_epoch_seconds": median,
        "min_epoch_seconds": min(measured),
        "first_epoch_seconds": epochs[0],
        "log_epoch_seconds": result.write_seconds,
        "median_log_epoch_seconds": log_median,
        "logging_share": log_median / median,
        # with train.checkpoint_every=1: the state copied after every epoch (in the loop) and written to the run's
        # artifacts (by a thread of its own, competing for the same cores): both count
        "checkpoint_seconds": copies,
        "checkpoint_write_seconds": writes,
        "median_checkpoint_seconds": copy_median,
        "median_checkpoint_write_seconds": write_median,
        "checkpoint_share": (copy_median + write_median) / median,
        "cores_busy": cores_busy,
        "median_cores_busy": statistics.median(cores_busy) if cores_busy else None,
        "run_wall_seconds": wall,
        "run_id": result.run_id,
    }


def pool_rounds(rounds: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One loop's measurements over several rounds as one: medians over every round's measured epochs.

    The first round's record, with each median and share pooled; `round_medians` keeps each round's median.
    """
    if len(rounds) == 1:
        return rounds[0]

    def measured(key: str) -> List[float]:
        return [value for r in rounds for value in r[key][r["warmup_epochs"]:]]

    pooled = dict(rounds[0])
    median = statistics.median(measured("epoch_seconds"))
    checkpoint = (statistics.median(v for r in rounds for v in r["checkpoint_seconds"])
                  + statistics.median(v for r in rounds for v in r["checkpoint_write_seconds"]))
    cores_busy = [v for r in rounds for v in r["cores_busy"]]
    pooled.update(
        median_epoch_seconds=median,
        min_epoch_seconds=min(measured("epoch_seconds")),
        median_log_epoch_seconds=statistics.median(measured("log_epoch_seconds")),
        median_checkpoint_seconds=statistics.median(v for r in rounds for v in r["checkpoint_seconds"]),
        median_checkpoint_write_seconds=statistics.median(v for r in rounds for v in r["checkpoint_write_seconds"]),
        checkpoint_share=checkpoint / median,
        cores_busy=cores_busy,
        median_cores_busy=statistics.median(cores_busy) if cores_busy else None,
        round_medians=[r["median_epoch_seconds"] for r in rounds],
        run_id=[r["run_id"] for r in rounds],
    )
    pooled["logging_share"] = pooled["median_log_epoch_seconds"] / median
    return pooled


def machine_info() -> Dict[str, Any]:
    """Cores, CPU model, library versions and the thread settings TensorFlow runs with."""
    import keras
    import tensorflow as tf

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (oneDNN on by default on x86)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
