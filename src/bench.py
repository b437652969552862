"""`python -m src.bench`: how close the training loops come to the machine's matmul rate.

In one process, on the real data and (by default) the large model, after warm-up:

* the float32 matmul rate at the model's layer shape, (batch x 512) @ (512 x 512);
* the FLOPs of one epoch (Dense layers only, see FLOP_CONVENTION) over that rate = the bound;
* median `epoch_seconds` of `fit` and of `tape` (and of the eager tape loop, and with XLA
  when asked), each as bound / epoch time, and tape / fit;
* the time the run's MLflow `log_epoch` calls take, as a share of the epoch;
* peak RSS.

Then, in a fresh `python -m src.train` subprocess, the time from process start to the first
training step. Every training run goes through `src.train.train` with configs composed
from the project's `conf/`, so the bench measures the real configs.

Prints one table (metric, value, goal, met?) and writes it as JSON with `--json FILE`.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import threading
import warnings
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from src.config import CONFIG_DIR, PROJECT_ROOT

DEFAULT_DATA = os.environ.get("HIGGS_PATH") or str(PROJECT_ROOT.parent / "shared" / "data" / "higgs_sample.csv.gz")
DEFAULT_N_TRAIN = 9984  # the shared sample's 10,984 rows minus the 1,000 validation rows
STARTUP_EXPERIMENT = "bench-startup"

FLOP_CONVENTION = (
    "Dense layers only: forward = 2*in*out FLOPs per row per layer; backward = 2 x forward; "
    "an epoch = 3 x forward on the rows its steps train on (steps_per_epoch * batch_size) "
    "+ 1 x forward on the validation rows. Bias adds, activations, loss, metrics and the "
    "optimizer update are not counted."
)

# metric -> (comparison, threshold, how the goal is printed)
GOALS: Dict[str, tuple] = {
    "fit_fraction_of_bound": (">=", 0.85, ">= 85 %"),
    "tape_fraction_of_bound": (">=", 0.85, ">= 85 %"),
    "tape_over_fit": ("<=", 1.00, "<= 1.00"),
    "fit_logging_share": ("<=", 0.02, "<= 2 %"),
    "tape_logging_share": ("<=", 0.02, "<= 2 %"),
    "start_to_first_step_seconds": ("<=", 10.0, "<= 10 s"),
}


# --- options -------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench",
        description=__doc__.split("\n\n")[0] + " See the module docstring for what is measured.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=10, help="measured epochs per loop (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up epochs per loop, not measured")
    parser.add_argument("--model", default="large", help="model option (conf/model/)")
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help="HIGGS CSV(.gz); default $HIGGS_PATH, else the shared sample"
    )
    parser.add_argument(
        "--n-train", type=int, default=DEFAULT_N_TRAIN, help="data.n_train (the shared sample holds 9984 after validation)"
    )
    parser.add_argument(
        "--include-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the tape loop run eagerly (loop.compile=false)",
    )
    parser.add_argument("--eager-epochs", type=int, default=3, help="measured epochs of the eager tape loop")
    parser.add_argument("--eager-warmup", type=int, default=1, help="warm-up epochs of the eager tape loop")
    parser.add_argument("--jit", action="store_true", help="also measure both loops with train.jit_compile=true (XLA)")
    parser.add_argument(
        "--startup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure process start to first training step in a fresh `python -m src.train`",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for the bench's runs (default: a temporary sqlite store, deleted afterwards)",
    )
    parser.add_argument("--matmul-repeats", type=int, default=7, help="timed repeats of the matmul loop (median)")
    parser.add_argument(
        "--matmul-seconds", type=float, default=0.3, help="target duration of one timed matmul repeat"
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="extra Hydra overrides for every measured run, e.g. train.threads=2 train.batch_size=1000",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "eager_epochs", "matmul_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "eager_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    return args


# --- configs -------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace, tracking_uri: str, artifacts: str) -> List[str]:
    return [
        f"model={args.model}",
        f"data.path={args.data}",
        f"data.n_train={args.n_train}",
        "quiet=true",
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.artifact_location={artifacts}",
        *args.overrides,
    ]


def compose_cfg(overrides: Sequence[str]):
    """The project's config, composed from conf/ with these overrides (as `python -m src.train` would)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- FLOPs and the matmul rate ---------------------------------------------------------


def dense_shapes(cfg) -> List[tuple]:
    """(in, out) of every Dense layer of the configured model, read from the built model."""
    import keras

    from src.models import build_model

    model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
    return [tuple(layer.kernel.shape) for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def epoch_flops(shapes: Sequence[tuple], train_rows: int, val_rows: int) -> Dict[str, float]:
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
    """float32 FLOP/s of (batch x width) @ (width x width), chained in a tf.function loop; median of repeats.

    The chain x <- x @ W with an orthogonal W keeps the values bounded and makes every
    product depend on the previous one, as the model's layers do.
    """
    import numpy as np
    import tensorflow as tf

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


# --- the loops -----------------------------------------------------------------------


@contextmanager
def timed_log_epoch() -> Iterator[List[Dict[str, float]]]:
    """Time every `TrackedRun.log_epoch` call (the per-epoch MLflow logging) while inside.

    Each call is recorded with the process's CPU time at its start and end, so the CPU
    time of the epochs between two calls is known too (CPU seconds / epoch seconds =
    how many cores the loop kept busy).
    """
    from src import tracking

    original = tracking.TrackedRun.log_epoch
    calls: List[Dict[str, float]] = []

    def log_epoch(self, epoch, metrics):
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return original(self, epoch, metrics)
        finally:
            calls.append(
                {
                    "seconds": time.perf_counter() - started,
                    "cpu_at_start": cpu_started,
                    "cpu_at_end": time.process_time(),
                }
            )

    tracking.TrackedRun.log_epoch = log_epoch
    try:
        yield calls
    finally:
        tracking.TrackedRun.log_epoch = original


def measure_loop(label: str, cfg, warmup: int) -> Dict[str, Any]:
    """Train `cfg` for warmup + measured epochs in this process; epoch and logging times."""
    from src.train import train

    with timed_log_epoch() as log_calls, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - started
    # Keras's compile() turns jit_compile=True off, with only a warning, when op
    # determinism is on (train.deterministic=true): fit then runs without XLA.
    jit_fell_back = any("jit_compile=False" in str(w.message) for w in caught)
    for w in caught:
        if "jit_compile=False" not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    epochs = result["history"]["epoch_seconds"]
    log_seconds = [call["seconds"] for call in log_calls]
    # CPU time of epoch k: from the end of log_epoch k-1 to the start of log_epoch k
    # (epoch 0 has no start mark: a warm-up epoch anyway)
    epoch_cpu = [b["cpu_at_start"] - a["cpu_at_end"] for a, b in zip(log_calls, log_calls[1:])]
    cores_busy = [cpu / wall for cpu, wall in zip(epoch_cpu, epochs[1:])][max(0, warmup - 1):]
    measured, logged = epochs[warmup:], log_seconds[warmup:]
    median = statistics.median(measured)
    log_median = statistics.median(logged) if logged else float("nan")
    return {
        "label": label,
        "loop": cfg.loop.name,
        "compile": bool(cfg.loop.get("compile", True)),
        "jit_compile": bool(cfg.train.jit_compile),
        "xla_used": bool(cfg.train.jit_compile) and not jit_fell_back,
        "warmup_epochs": warmup,
        "epoch_seconds": epochs,
        "median_epoch_seconds": median,
        "min_epoch_seconds": min(measured),
        "first_epoch_seconds": epochs[0],
        "log_epoch_seconds": log_seconds,
        "median_log_epoch_seconds": log_median,
        "logging_share": log_median / median,
        "cores_busy": cores_busy,
        "median_cores_busy": statistics.median(cores_busy) if cores_busy else None,
        "run_wall_seconds": wall,
        "run_id": result["run_id"],
    }


# --- start to first step ---------------------------------------------------------------


def _proc_start_wall_time(pid: int) -> Optional[float]:
    """Wall-clock start time of a process from /proc (10 ms resolution), None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the ")"
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        now = time.time()
        return now - (since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _PeakRss:
    """Peak RSS of a child process, polled from /proc/<pid>/status (VmHWM) until it exits.

    (getrusage(RUSAGE_CHILDREN) would report the parent's size: the forked child
    counts the parent's pages until it execs.)
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.mib: Optional[float] = None
        self._path = Path(f"/proc/{pid}/status")
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mib = int(line.split()[1]) / 1024.0
            except (OSError, ValueError, IndexError):
                return  # exited (or not Linux)
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[\w+\] - (.*)$")


def _log_times(log_file: Path) -> List[tuple]:
    """(wall time, logger, message) of each line of a Hydra job log."""
    if not log_file.exists():
        return []
    out = []
    for line in log_file.read_text().splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, match.group(2), match.group(3)))
    return out


def measure_startup(overrides: Sequence[str], tracking_uri: str, workdir: Path) -> Dict[str, Any]:
    """Process start to the first training step of a fresh `python -m src.train` (1 epoch).

    No hook in the loops is needed: `log_epoch` stamps epoch 0's metrics with the wall
    time of its call, right after the epoch, and epoch 0's `epoch_seconds` says how long
    the epoch took, so the epoch (its first step) began at timestamp - epoch_seconds.
    Accurate to the millisecond resolution of MLflow timestamps plus the few
    milliseconds between the epoch's end and the `log_epoch` call.
    """
    from mlflow import MlflowClient

    run_dir = workdir / "startup"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        *overrides,
        "train.epochs=1",
        f"mlflow.experiment_name={STARTUP_EXPERIMENT}",
        f"hydra.run.dir={run_dir}",
    ]
    before = time.time()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc_start = _proc_start_wall_time(proc.pid)
    peak = _PeakRss(proc.pid)
    stdout, stderr = proc.communicate()
    peak.stop()
    ended = time.time()
    if proc.returncode != 0:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"startup run failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(STARTUP_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    (point,) = client.get_metric_history(run.info.run_id, "epoch_seconds")
    epoch_end = point.timestamp / 1000.0
    first_step = epoch_end - point.value
    # Every line of the job's log before the first step, with its time since start: a
    # log line added in src/train.py (e.g. after an import) shows up here as a phase.
    phases: Dict[str, float] = {"mlflow run start_time": run.info.start_time / 1000.0 - before}
    for stamp, logger, message in _log_times(run_dir / "train.log"):
        if stamp <= first_step + 0.001:
            phases[f"log {logger}: {message[:60]}"] = stamp - before
    return {
        "command": " ".join(cmd),
        "start_to_first_step_seconds": first_step - before,
        "start_to_first_epoch_end_seconds": epoch_end - before,
        "first_epoch_seconds": point.value,
        "process_wall_seconds": ended - before,
        "peak_rss_mib": peak.mib,
        "popen_to_process_start_seconds": None if proc_start is None else proc_start - before,
        "phases_since_start_seconds": phases,
        "method": "parent's clock just before Popen -> (epoch 0 metric timestamp - epoch 0 epoch_seconds)",
    }


# --- machine -------------------------------------------------------------------------


def machine_info() -> Dict[str, Any]:
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


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


# --- the table -----------------------------------------------------------------------


def _met(key: str, value: Optional[float]) -> Optional[bool]:
    if key not in GOALS or value is None:
        return None
    op, threshold, _ = GOALS[key]
    return value >= threshold if op == ">=" else value <= threshold


def build_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The table: one row per metric, with its goal and whether it is met."""
    rows: List[Dict[str, Any]] = []

    def add(key: str, metric: str, value: Optional[float], shown: str) -> None:
        rows.append(
            {
                "key": key,
                "metric": metric,
                "value": value,
                "shown": shown,
                "goal": GOALS[key][2] if key in GOALS else "",
                "met": _met(key, value),
            }
        )

    mm, fl, loops = results["matmul"], results["flops"], results["loops"]
    add("matmul_gflop_per_s", f"matmul rate {mm['shape']} float32", mm["flop_per_s"] / 1e9,
        f"{mm['flop_per_s'] / 1e9:.1f} GFLOP/s (before {mm['flop_per_s_before_loops'] / 1e9:.1f}, "
        f"after {mm['flop_per_s_after_loops'] / 1e9:.1f})")
    add("matmul_cores_busy", "matmul: cores busy (CPU s / s)", mm["cores_busy"], f"{mm['cores_busy']:.2f}")
    add("epoch_gflop", "epoch FLOPs (see convention)", fl["epoch"] / 1e9, f"{fl['epoch'] / 1e9:.2f} GFLOP")
    add("bound_seconds", "bound = epoch FLOPs / matmul rate", results["bound_seconds"],
        f"{results['bound_seconds']:.3f} s")
    for label, loop in loops.items():
        label_shown = f"{label}*" if loop["jit_compile"] and not loop["xla_used"] else label
        add(f"{label}_median_epoch_seconds", f"{label_shown}: median epoch_seconds", loop["median_epoch_seconds"],
            f"{loop['median_epoch_seconds']:.3f} s")
        add(f"{label}_fraction_of_bound", f"{label}: bound / epoch", loop["fraction_of_bound"],
            f"{100 * loop['fraction_of_bound']:.1f} %")
        if loop["median_cores_busy"] is not None:
            add(f"{label}_cores_busy", f"{label}: cores busy (CPU s / epoch s)", loop["median_cores_busy"],
                f"{loop['median_cores_busy']:.2f}")
    for key, value in results["ratios"].items():
        add(key, key.replace("_over_", " / ") + " (median epoch)", value, f"{value:.3f}")
    for label in ("fit", "tape"):
        if label in loops:
            loop = loops[label]
            add(f"{label}_logging_share", f"{label}: MLflow log_epoch / epoch", loop["logging_share"],
                f"{100 * loop['logging_share']:.2f} % ({1000 * loop['median_log_epoch_seconds']:.1f} ms)")
    if results.get("startup"):
        s = results["startup"]
        add("start_to_first_step_seconds", "process start -> first training step", s["start_to_first_step_seconds"],
            f"{s['start_to_first_step_seconds']:.2f} s")
    rss = results["peak_rss_mib"]
    add("peak_rss_mib", "peak RSS, bench process", rss["self"], f"{rss['self']:.0f} MiB")
    if rss.get("startup_child"):
        add("startup_peak_rss_mib", "peak RSS, `src.train` subprocess", rss["startup_child"],
            f"{rss['startup_child']:.0f} MiB")
    return rows


def format_report(results: Dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"cores: {m['cores']} ({m['cpu']}); TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}",
        f"threads: intra-op {m['intra_op_threads']}, inter-op {m['inter_op_threads']} (0 = TensorFlow's default, all cores); "
        f"oneDNN: {m['TF_ENABLE_ONEDNN_OPTS']}; load average at start {results['load_average_start']}",
        f"config: {' '.join(results['overrides'])}",
        f"epochs: {results['epochs']} measured after {results['warmup']} warm-up per loop; "
        f"steps_per_epoch {results['steps_per_epoch']} x batch {results['batch_size']}",
        f"FLOPs: {FLOP_CONVENTION}",
        "",
    ]
    width = max(len(r["metric"]) for r in results["table"])
    value_width = max(len(r["shown"]) for r in results["table"])
    lines.append(f"{'metric':<{width}}  {'value':>{value_width}}  {'goal':<9}  met")
    lines.append("-" * (width + value_width + 18))
    for r in results["table"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"{r['metric']:<{width}}  {r['shown']:>{value_width}}  {r['goal']:<9}  {met}")
    if results.get("startup"):
        s = results["startup"]
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in s["phases_since_start_seconds"].items())
        lines += ["", f"start to first step: {s['method']}; since start: {phases}, first epoch ends "
                  f"{s['start_to_first_epoch_end_seconds']:.2f} s"]
    fell_back = [label for label, loop in results["loops"].items() if loop["jit_compile"] and not loop["xla_used"]]
    if fell_back:
        lines += ["", f"* {', '.join(fell_back)}: ran WITHOUT XLA. Keras's compile() drops jit_compile=True "
                  "(warning only) while op determinism is on; add train.deterministic=false to measure XLA in fit"]
    load_end = results.get("load_average_end")
    if load_end and max(results["load_average_start"][0], load_end[0]) > 0.5 * m["cores"]:
        lines += ["", f"warning: load average {results['load_average_start']} -> {load_end} on {m['cores']} cores: "
                  "other processes were using the CPU, so these timings are noisy"]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, say: Callable[[str], None] = print) -> Dict[str, Any]:
    load_start = [round(v, 2) for v in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="overfit-bench-"))
    try:
        tracking_uri = args.tracking_uri or f"sqlite:///{workdir}/mlruns/mlflow.db"
        overrides = base_overrides(args, tracking_uri, str(workdir / "mlruns" / "artifacts"))
        cfg = compose_cfg(overrides)
        from src.config import validate

        validate(cfg)
        # The process-wide settings train() makes, made now so the matmul runs under them.
        from src import runtime

        runtime.configure_threads(cfg.train.threads)
        runtime.configure_devices(cfg.device, cfg.train.logical_cpus)
        runtime.configure_determinism(cfg.train.deterministic)
        machine = machine_info()

        batch = cfg.train.batch_size
        steps = cfg.data.n_train // batch
        say(f"matmul rate at ({batch} x 512) @ (512 x 512) ...")
        mm_before = matmul_rate(batch, 512, args.matmul_repeats, args.matmul_seconds)
        flops = epoch_flops(dense_shapes(cfg), steps * batch, cfg.data.n_validation)

        variants = [("fit", ["loop=fit"], args.warmup, args.epochs), ("tape", ["loop=tape"], args.warmup, args.epochs)]
        if args.include_eager:
            variants.append(("tape_eager", ["loop=tape", "loop.compile=false"], args.eager_warmup, args.eager_epochs))
        if args.jit:
            variants += [
                ("fit_jit", ["loop=fit", "train.jit_compile=true", "train.deterministic=false"], args.warmup, args.epochs),
                ("tape_jit", ["loop=tape", "train.jit_compile=true", "train.deterministic=false"], args.warmup, args.epochs),
            ]
        loops: Dict[str, Dict[str, Any]] = {}
        for label, extra, warmup, epochs in variants:
            say(f"{label}: {warmup} warm-up + {epochs} measured epochs ...")
            run_cfg = compose_cfg([*overrides, *extra, f"train.epochs={warmup + epochs}"])
            loops[label] = measure_loop(label, run_cfg, warmup)

        say("matmul rate again ...")
        mm_after = matmul_rate(batch, 512, args.matmul_repeats, args.matmul_seconds)
        # The machine's rate is the better of the two medians (another process may have
        # slowed one of them); a higher rate means a tighter bound.
        mm = dict(max(mm_before, mm_after, key=lambda m: m["flop_per_s"]))
        mm["flop_per_s_before_loops"] = mm_before["flop_per_s"]
        mm["flop_per_s_after_loops"] = mm_after["flop_per_s"]
        bound = flops["epoch"] / mm["flop_per_s"]
        for loop in loops.values():
            loop["fraction_of_bound"] = bound / loop["median_epoch_seconds"]

        ratios = {}
        fit = loops["fit"]["median_epoch_seconds"]
        for label in ("tape", "tape_eager", "fit_jit", "tape_jit"):
            if label in loops:
                ratios[f"{label}_over_fit"] = loops[label]["median_epoch_seconds"] / fit
        if "tape_jit" in loops:
            ratios["tape_jit_over_fit_jit"] = loops["tape_jit"]["median_epoch_seconds"] / loops["fit_jit"]["median_epoch_seconds"]

        startup = None
        if args.startup:
            say("start to first step: a fresh `python -m src.train train.epochs=1` ...")
            startup = measure_startup(overrides, tracking_uri, workdir)

        results: Dict[str, Any] = {
            "machine": machine,
            "load_average_start": load_start,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "overrides": [o for o in overrides if not o.startswith("mlflow.")],
            "tracking_uri": tracking_uri if args.tracking_uri else "temporary sqlite store (deleted)",
            "epochs": args.epochs,
            "warmup": args.warmup,
            "batch_size": batch,
            "steps_per_epoch": steps,
            "flop_convention": FLOP_CONVENTION,
            "matmul": mm,
            "flops": flops,
            "bound_seconds": bound,
            "loops": loops,
            "ratios": ratios,
            "startup": startup,
            "peak_rss_mib": {
                "self": _peak_rss_mib(resource.RUSAGE_SELF),
                "startup_child": startup["peak_rss_mib"] if startup else None,
            },
        }
        results["table"] = build_rows(results)
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if not Path(args.data).expanduser().exists():
        print(f"--data {args.data}: no such file (set --data or HIGGS_PATH)", file=sys.stderr)
        sys.exit(2)
    args.data = str(Path(args.data).expanduser().resolve())
    results = run_bench(args, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
