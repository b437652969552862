"""`python -m src.bench_pipeline`: per-step time and peak memory against the number of training rows (neither may grow per row beyond the data)."""

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from src.core.schema import PROJECT_ROOT

N_VALIDATION = 1000
FULL_HIGGS_TRAIN_ROWS = 10_500_000
GiB = 2**30


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench_pipeline",
        description="Ingest a synthetic UCI file (or --data) into a fresh cache, then at each size: train the model "
        "in-process and print the median per-step time of the epochs after the first and its ratio to the smallest "
        "size's; and run a whole `python -m src.train` and print its peak RSS against the training rows' bytes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[99_000, 990_000], help="training rows of each run")
    parser.add_argument("--data", type=Path, default=None, help="a UCI file with enough rows (default: synthetic)")
    parser.add_argument("--loop", default="fit", help="loop option (conf/loop/)")
    parser.add_argument("--model", default="tiny", help="model option (conf/model/)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs of the largest size (smaller ones run as many steps); the first is not measured")
    parser.add_argument("--batch-size", type=int, default=500, help="train.batch_size")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a whole `python -m src.train`'s peak RSS at each size")
    args = parser.parse_args(argv)
    if args.epochs < 2 or min(args.rows) < args.batch_size:
        parser.error("--epochs must be at least 2 and every --rows at least --batch-size")
    return args


def _data_overrides(data: Path, cache: Path, n_train: int) -> List[str]:
    return [f"data.path={data}", f"data.cache_dir={cache}", f"data.n_validation={N_VALIDATION}", f"data.n_train={n_train}"]


def per_step_seconds(args: argparse.Namespace, data: Path, cache: Path) -> Dict[int, float]:
    """Median seconds per training step of the epochs after the first, for each size in args.rows."""
    from src.core.config import compose_config
    from src.data.higgs import load_higgs
    from src.data.pipeline import make_datasets
    from src.training import loops, runtime
    from src.training.loop_settings import LoopSettings
    from src.training.models import build_model

    result = {}
    for n in args.rows:
        # every size measures as many steps as the largest: a short epoch alone is noise
        epochs = 1 + math.ceil((args.epochs - 1) * max(args.rows) / n)
        cfg = compose_config([f"model={args.model}", f"loop={args.loop}", f"train.epochs={epochs}",
                              f"train.batch_size={args.batch_size}", *_data_overrides(data, cache, n)])
        splits = load_higgs(cfg.data)  # memory-mapped from the cache, as a run reads it
        strategy, _ = runtime.prepare(cfg)
        train_ds, val_ds = make_datasets(splits, args.batch_size, cfg.seed)
        model = build_model(cfg.model, cfg.reg, cfg.data.n_features)
        seconds = []
        settings = LoopSettings.from_config(
            cfg, strategy=strategy, steps_per_epoch=n // args.batch_size, progress=False,
            on_epoch_end=[lambda epoch, m: seconds.append(m["epoch_seconds"])],
        )
        loops.LOOPS[args.loop](model, train_ds, val_ds, cfg.loop, settings)
        result[n] = statistics.median(seconds[1:]) / (n // args.batch_size)
    return result


def peak_rss_bytes(args: argparse.Namespace, data: Path, cache: Path, n: int, tmp: Path) -> int:
    """Peak resident memory of a whole `python -m src.train` of 2 epochs on `n` training rows."""
    command = [
        sys.executable, "-m", "src.train", *_data_overrides(data, cache, n), f"model={args.model}",
        f"loop={args.loop}", "train.epochs=2", f"train.batch_size={args.batch_size}", "quiet=true",
        f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"mlflow.artifact_location={tmp}/artifacts",
        f"hydra.run.dir={tmp}/outputs/{n}",
    ]
    # the child's own high-water mark (VmHWM), read while it runs: its ru_maxrss would start from this process's RSS
    # at the fork (Linux keeps the larger of the two across exec), which in a long test session is over a GiB
    peak = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None:
            peak = max(peak, _high_water_mark(proc.pid))
            time.sleep(0.02)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
    return peak


def _high_water_mark(pid: int) -> int:
    """A running process's peak resident memory so far, in bytes (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[int, float]]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        data = args.data
        if data is None:
            from src.data.synthetic import write_uci_gzip

            data = tmp / "higgs-synthetic.csv.gz"
            write_uci_gzip(data, N_VALIDATION + max(args.rows))
        cache = tmp / "cache"
        subprocess.run([sys.executable, "-m", "src.data", str(data), "--cache-dir", str(cache), "--quiet"],
                       cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL)
        per_step = per_step_seconds(args, data, cache)
        rss = {n: peak_rss_bytes(args, data, cache, n, tmp) for n in args.rows} if args.rss else {}
    smallest = min(per_step)
    print(f"{'training rows':>14}  {'ms per step':>11}  {'vs ' + str(smallest):>10}  {'peak RSS':>9}  "
          f"{'rows bytes':>10}  {'RSS - rows':>10}")
    for n, seconds in per_step.items():
        row_bytes = n * 29 * 4
        memory = (f"  {rss[n] / GiB:>5.2f} GiB  {row_bytes / GiB:>6.2f} GiB  {(rss[n] - row_bytes) / GiB:>6.2f} GiB"
                  if n in rss else "")
        print(f"{n:>14,}  {1000 * seconds:>11.2f}  {seconds / per_step[smallest]:>10.2f}{memory}")
    if len(rss) >= 2:
        (n0, r0), (n1, r1) = sorted(rss.items())[0], sorted(rss.items())[-1]
        per_row = (r1 - r0) / (n1 - n0)
        projected = r1 + per_row * (FULL_HIGGS_TRAIN_ROWS - n1)
        budget = FULL_HIGGS_TRAIN_ROWS * 29 * 4 + 1.5 * GiB
        print(f"peak RSS grows {per_row:.0f} bytes per training row (a row is {29 * 4} bytes); projected for "
              f"{FULL_HIGGS_TRAIN_ROWS:,} rows: {projected / GiB:.2f} GiB (budget: rows + 1.5 GiB = {budget / GiB:.2f} GiB)")
    return {"per_step_seconds": per_step, "peak_rss_bytes": rss}

