"""Every measurement of `python -m src.bench`, run in turn: its options, the runs it trains, its results."""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from src.bench.loops import (
    FLOP_CONVENTION,
    dense_shapes,
    epoch_flops,
    machine_info,
    matmul_rate,
    measure_loop,
    pool_rounds,
)
from src.bench.profile import profile_loop
from src.bench.report import README_SWEEP_EPOCHS, build_rows, format_report
from src.bench.bare import measure_bare
from src.bench.jobs import SEARCH_AXES, SWEEP_AXES, measure_multirun
from src.bench.startup import measure_startup
from src.core.config import compose_config, validate
from src.core.errors import JobFailed
from src.core.schema import PROJECT_ROOT

DEFAULT_DATA = os.environ.get("HIGGS_PATH") or str(PROJECT_ROOT.parent / "shared" / "data" / "higgs_sample.csv.gz")
DEFAULT_N_TRAIN = 9984  # the shared sample's 10,984 rows minus the 1,000 validation rows


# --- options -------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line: options, then Hydra overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m src.bench",
        description=__doc__ + " README.md, section Performance, says what is measured and how.",
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
    parser.add_argument("--include-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the tape loop run eagerly (loop.compile=false)")
    parser.add_argument("--eager-epochs", type=int, default=3, help="measured epochs of the eager tape loop")
    parser.add_argument("--eager-warmup", type=int, default=1, help="warm-up epochs of the eager tape loop")
    parser.add_argument("--jit", action="store_true", help="also measure both loops with train.jit_compile=true (XLA)")
    parser.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                        help="measure process start to first training step in a fresh `python -m src.train`")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the loops, alternating (fit, tape, fit, tape, ...): medians pool every round's "
                             "measured epochs, and tape / fit is also given as the median of the rounds' ratios")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also run each loop under TensorFlow's profiler (--profile-epochs after the warm-up), "
                             "keep the traces in DIR (TensorBoard opens them) and print the op time by kind of op")
    parser.add_argument("--profile-epochs", type=int, default=3, help="epochs each profile covers")
    parser.add_argument("--startup-runs", type=int, default=3,
                        help="fresh processes the start-up is measured in; the table shows their median")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time the README's whole sweep (-m reg=none,l2 loop=fit,tape, 4 runs) in a fresh process: minutes",
    )
    parser.add_argument("--sweep-epochs", type=int, default=README_SWEEP_EPOCHS, help="train.epochs of that sweep")
    parser.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a bare Keras fit and a bare compiled tape loop of the same model, data and seed")
    parser.add_argument("--seeds", type=int, default=0,
                        help="also time a sweep over this many seeds of one config (-m seed=0,...) in a fresh process: "
                             "jobs of one graph, the case where a job reuses the previous job's compiled model")
    parser.add_argument("--seeds-epochs", type=int, default=10, help="train.epochs of that seed sweep")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=False,
                        help="also time an Optuna search (`make search`) in a fresh process, job by job")
    parser.add_argument("--search-trials", type=int, default=8, help="hydra.sweeper.n_trials of that search")
    parser.add_argument("--search-epochs", type=int, default=10, help="train.epochs of each trial")
    parser.add_argument("--search-model", default="small", help="model option of the search's trials")
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
    for name in ("epochs", "eager_epochs", "matmul_repeats", "sweep_epochs", "startup_runs", "rounds", "profile_epochs",
                 "seeds_epochs", "search_trials", "search_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "eager_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    return args


def base_overrides(args: argparse.Namespace, tracking_uri: str, artifacts: str) -> List[str]:
    """The overrides every measured run shares: model, data, a quiet private store, the user's own."""
    return [
        f"model={args.model}",
        f"data.path={args.data}",
        f"data.n_train={args.n_train}",
        "quiet=true",
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.artifact_location={artifacts}",
        *args.overrides,
    ]


# --- the table -----------------------------------------------------------------------


# --- main ----------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Every measurement, in a temporary store, as one results dict with its table."""
    load_start = [round(v, 2) for v in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="overfit-bench-"))
    try:
        tracking_uri = args.tracking_uri or f"sqlite:///{workdir}/mlruns/mlflow.db"
        overrides = base_overrides(args, tracking_uri, str(workdir / "mlruns" / "artifacts"))
        cfg = compose_config(overrides)
        validate(cfg)
        # The process-wide settings train() makes, made now so the matmul runs under them.
        from src.training import runtime

        runtime.prepare(cfg)
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
        rounds: Dict[str, List[Dict[str, Any]]] = {}
        for round_number in range(args.rounds):  # alternating: a slow spell of the machine hits both loops alike
            for label, extra, warmup, epochs in variants:
                say(f"{label}: {warmup} warm-up + {epochs} measured epochs"
                    + (f" (round {round_number + 1} of {args.rounds})" if args.rounds > 1 else "") + " ...")
                # a checkpoint after every epoch, to measure what one costs
                run_cfg = compose_config([*overrides, *extra, f"train.epochs={warmup + epochs}",
                                          "train.checkpoint_every=1"])
                rounds.setdefault(label, []).append(measure_loop(label, run_cfg, warmup))
        loops = {label: pool_rounds(measured) for label, measured in rounds.items()}
        if args.bare:  # the script a user would write, beside the loops as configured (checkpoints every 10 epochs)
            for label, extra in (("fit", ["loop=fit"]), ("tape", ["loop=tape"])):
                say(f"bare {label} and {label} as configured: {args.warmup} warm-up + {args.epochs} epochs each ...")
                bare = measure_bare(compose_config(overrides), args.warmup, args.epochs, label)
                loops[f"bare_{label}"] = dict(bare, cores_busy=[], median_cores_busy=None)
                loops[f"{label}_default"] = measure_loop(f"{label}_default", compose_config(
                    [*overrides, *extra, f"train.epochs={args.warmup + args.epochs}"]), args.warmup)

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
        if "bare_fit" in loops:  # the project's loops as configured against the best hand-written one
            best_bare = min(loops["bare_fit"]["median_epoch_seconds"], loops["bare_tape"]["median_epoch_seconds"])
            ratios["fit_over_best_bare"] = loops["fit_default"]["median_epoch_seconds"] / best_bare
            ratios["tape_over_best_bare"] = loops["tape_default"]["median_epoch_seconds"] / best_bare
        if args.rounds > 1:  # each round's tape / fit, side by side in time
            ratios["tape_over_fit_paired"] = statistics.median(
                tape["median_epoch_seconds"] / fit_round["median_epoch_seconds"]
                for tape, fit_round in zip(rounds["tape"], rounds["fit"]))
        if "tape_jit" in loops:
            ratios["tape_jit_over_fit_jit"] = loops["tape_jit"]["median_epoch_seconds"] / loops["fit_jit"]["median_epoch_seconds"]

        profiles = {}
        if args.profile:
            for label, extra, warmup, _ in variants[:2]:  # fit and tape
                say(f"{label}: {args.profile_epochs} epochs under TensorFlow's profiler ...")
                profiles[label] = profile_loop(label, compose_config([*overrides, *extra]), warmup,
                                               args.profile_epochs, steps, Path(args.profile).resolve() / label)

        startup = None
        if args.startup:
            say("start to first step: a fresh `python -m src.train train.epochs=1` ...")
            runs = [measure_startup(overrides, tracking_uri, workdir / f"startup-{i}") for i in range(args.startup_runs)]
            startup = sorted(runs, key=lambda run: run["start_to_first_step_seconds"])[len(runs) // 2]  # the median run
            startup["runs_seconds"] = [run["start_to_first_step_seconds"] for run in runs]

        sweep = None
        if args.sweep:
            say(f"whole sweep: a fresh `python -m src.train -m {' '.join(SWEEP_AXES)} train.epochs={args.sweep_epochs}` ...")
            sweep = measure_multirun("sweep", SWEEP_AXES, overrides, tracking_uri, workdir, args.sweep_epochs)
            # the ideal sweep: start-up once, then every epoch at the bound
            sweep["startup_seconds"] = startup["start_to_first_step_seconds"] if startup else None

        multiruns: Dict[str, Any] = {}  # each also with train.reuse_compiled=false, side by side: what reuse saves
        jobs = []
        if args.seeds:
            jobs.append(("seeds", (f"seed={','.join(str(seed) for seed in range(args.seeds))}",), overrides,
                         args.seeds_epochs))
        if args.search:
            jobs.append(("search", (*SEARCH_AXES, f"hydra.sweeper.n_trials={args.search_trials}",
                                    f"model={args.search_model}"),
                         [o for o in overrides if not o.startswith("model=")], args.search_epochs))
        for name, axes, job_overrides, epochs in jobs:
            for suffix, extra in (("", []), ("_no_reuse", ["train.reuse_compiled=false"])):
                say(f"{name}{suffix}: a fresh `python -m src.train -m {' '.join((*axes, *extra))} "
                    f"train.epochs={epochs}` ...")
                multiruns[name + suffix] = measure_multirun(name + suffix, axes, [*job_overrides, *extra],
                                                            tracking_uri, workdir, epochs)

        results: Dict[str, Any] = {
            "machine": machine,
            "load_average_start": load_start,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "overrides": [o for o in overrides if not o.startswith("mlflow.")],
            "tracking_uri": tracking_uri if args.tracking_uri else "temporary sqlite store (deleted)",
            "epochs": args.epochs,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "batch_size": batch,
            "steps_per_epoch": steps,
            "flop_convention": FLOP_CONVENTION,
            "matmul": mm,
            "flops": flops,
            "bound_seconds": bound,
            "loops": loops,
            "ratios": ratios,
            "profiles": profiles,
            "startup": startup,
            "sweep": sweep,
            **multiruns,
            "peak_rss_mib": {
                "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # KiB on Linux
                "startup_child": startup["peak_rss_mib"] if startup else None,
            },
        }
        results["table"] = build_rows(results)
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """`python -m src.bench`: run, print the report, write the JSON."""
    args = parse_args(argv)
    if not Path(args.data).expanduser().exists():
        print(f"--data {args.data}: no such file (set --data or HIGGS_PATH)", file=sys.stderr)
        sys.exit(2)
    args.data = str(Path(args.data).expanduser().resolve())
    try:
        results = run_bench(args, say=lambda text: print(text, file=sys.stderr, flush=True))
    except JobFailed as exc:
        sys.exit(f"bench: {exc}")
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
