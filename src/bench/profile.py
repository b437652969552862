"""The bench's op profile: TensorFlow's profiler over a few epochs of a loop, its op time by kind of op."""

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Dict

from src.core import compat

# executor bookkeeping the profiler records beside the ops
NOT_OPS = ("ExecutorState", "ExecutorDone", "ThreadpoolListener")


def op_kind(name: str) -> str:
    """What a profiled op (`scope/name:Type`, as the profiler names it) does in a training step."""
    op = name.rsplit(":", 1)[-1]
    if "MatMul" in op:
        if "Fused" in op:
            return "forward matmul + bias + ELU (fused)"
        return "backward matmuls" if "gradient" in name.lower() else "other matmuls"
    if op in ("BiasAddGrad", "EluGrad"):
        return op
    if re.search(r"(^|/)adam/", name):  # Keras names the optimizer's ops under its name scope
        return "Adam's update"
    return "loss, metrics, penalty, dropout, everything else"


def op_time_by_kind(xplane_path: Path) -> Dict[str, float]:
    """Seconds of op time per kind in a profiler trace, summed over TensorFlow's compute threads."""
    totals: Counter = Counter()
    for plane in compat.read_xplane(xplane_path).planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and not name.startswith(NOT_OPS):
                    totals[op_kind(name)] += event.duration_ps / 1e12
    return dict(totals)


def profile_loop(label: str, cfg, warmup: int, epochs: int, steps_per_epoch: int, logdir: Path) -> Dict[str, Any]:
    """Train `cfg` for warmup + `epochs` epochs, the last `epochs` under TensorFlow's profiler (trace kept in `logdir`)."""
    import tensorflow as tf

    from src.core.errors import JobFailed
    from src.core.runstates import FINISHED
    from src.experiments.train import train

    warmup = max(1, warmup)  # the profiler starts at the end of the last warm-up epoch

    def profile(epoch: int, metrics: Dict[str, float]) -> None:
        if epoch == warmup - 1:
            tf.profiler.experimental.start(str(logdir))
        elif epoch == warmup + epochs - 1:
            tf.profiler.experimental.stop()

    cfg = cfg.copy()
    cfg.train.epochs = warmup + epochs
    result = train(cfg, on_epoch_end=[profile])
    if result.status != FINISHED:
        raise JobFailed(f"{label}: profiled run {result.run_name} ended {result.status}: {result.error}")
    traces = sorted(logdir.glob("**/*.xplane.pb"))
    if not traces:
        raise JobFailed(f"{label}: TensorFlow's profiler wrote no trace into {logdir}")
    seconds = op_time_by_kind(traces[-1])
    total = sum(seconds.values())
    steps = epochs * steps_per_epoch  # the validation batches' ops count too: a step's share of the epoch
    return {
        "label": label,
        "trace": str(traces[-1]),
        "epochs": epochs,
        "steps": steps,
        "median_epoch_seconds": statistics.median(result.history["epoch_seconds"][warmup:]),
        "op_ms_per_step": 1000 * total / steps,
        "shares": {kind: value / total for kind, value in sorted(seconds.items(), key=lambda kv: -kv[1])},
    }
