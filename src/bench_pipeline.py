"""`python -m src.bench_pipeline`: per-step time of a loop at several training-set sizes (it must not grow with n)."""

import argparse
import statistics
import sys
from typing import Dict, Optional, Sequence


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.bench_pipeline",
        description="Train the given model on synthetic rows in the UCI layout's shape at each size, and print the "
        "median per-step time of the epochs after the first, and its ratio to the smallest size's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[99_000, 990_000], help="training rows of each run")
    parser.add_argument("--loop", default="fit", help="loop option (conf/loop/)")
    parser.add_argument("--model", default="tiny", help="model option (conf/model/)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per size; the first is not measured")
    parser.add_argument("--batch-size", type=int, default=500, help="train.batch_size")
    args = parser.parse_args(argv)
    if args.epochs < 2 or min(args.rows) < args.batch_size:
        parser.error("--epochs must be at least 2 and every --rows at least --batch-size")
    return args


def per_step_seconds(args: argparse.Namespace) -> Dict[int, float]:
    """Median seconds per training step of the epochs after the first, for each size in args.rows."""
    import numpy as np

    from src import loops, runtime
    from src.config import compose_config
    from src.data import HiggsSplits, make_datasets
    from src.models import build_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000 + max(args.rows), 28)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.float32)[:, None]
    cfg = compose_config([f"model={args.model}", f"loop={args.loop}"])
    result = {}
    for n in args.rows:
        splits = HiggsSplits(x[:1000], y[:1000], x[1000 : 1000 + n], y[1000 : 1000 + n], "synthetic")
        strategy, _ = runtime.prepare(cfg)
        train_ds, val_ds = make_datasets(splits, args.batch_size, cfg.seed)
        model = build_model(cfg.model, cfg.reg, x.shape[1])
        seconds = []
        settings = loops.LoopSettings(
            strategy=strategy, epochs=args.epochs, steps_per_epoch=n // args.batch_size, learning_rate=1e-3,
            jit_compile=False, progress=False, on_epoch_end=[lambda epoch, m: seconds.append(m["epoch_seconds"])],
        )
        loops.LOOPS[args.loop](model, train_ds, val_ds, cfg.loop, settings)
        result[n] = statistics.median(seconds[1:]) / (n // args.batch_size)
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[int, float]:
    args = parse_args(argv)
    result = per_step_seconds(args)
    smallest = min(result)
    print(f"{'training rows':>14}  {'ms per step':>11}  {'vs ' + str(smallest):>10}")
    for n, seconds in result.items():
        print(f"{n:>14,}  {1000 * seconds:>11.2f}  {seconds / result[smallest]:>10.2f}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
