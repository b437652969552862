"""`python -m src.bench`: how close the training loops come to the machine's matmul rate."""

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

from src.bench_loops import (FLOP_CONVENTION, dense_shapes, epoch_flops, machine_info, matmul_rate, measure_loop,
                              pool_rounds)
from src.bench_profile import profile_loop
from src.bench_startup import SWEEP_AXES, measure_startup, measure_sweep
from src.config import PROJECT_ROOT, compose_config, validate
from src.errors import JobFailed

DEFAULT_DATA = os.environ.get("HIGGS_PATH") or str(PROJECT_ROOT.parent / "shared" / "data" / "higgs_sample.csv.gz")
DEFAULT_N_TRAIN = 9984  # the shared sample's 10,984 rows minus the 1,000 validation rows

# metric -> (comparison, threshold, how the goal is printed)
GOALS: Dict[str, tuple] = {
    "fit_fraction_of_bound": (">=", 0.85, ">= 85 %"),
    "tape_fraction_of_bound": (">=", 0.85, ">= 85 %"),
    "tape_over_fit": ("<=", 1.00, "<= 1.00"),
    "tape_over_fit_paired": ("<=", 1.00, "<= 1.00"),
    "fit_logging_share": ("<=", 0.02, "<= 2 %"),
    "tape_logging_share": ("<=", 0.02, "<= 2 %"),
    "fit_checkpoint_share": ("<=", 0.03, "<= 3 %"),
    "tape_checkpoint_share": ("<=", 0.03, "<= 3 %"),
    "start_to_first_step_seconds": ("<=", 5.0, "<= 5 s"),
    "sweep_wall_seconds": ("<=", 120.0, "<= 2 min"),  # at the README's 100 epochs
    "sweep_over_ideal": ("<=", 1.25, "<= 1.25"),
    "sweep_job_overhead_seconds": ("<=", 1.0, "<= 1 s"),
}
README_SWEEP_EPOCHS = 100


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
    for name in ("epochs", "eager_epochs", "matmul_repeats", "sweep_epochs", "startup_runs", "rounds", "profile_epochs"):
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


def _met(key: str, value: Optional[float]) -> Optional[bool]:
    """Whether `value` meets its goal; None without a goal or a value."""
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
        add(f"{label}_median_epoch_seconds", f"{label}: median epoch_seconds", loop["median_epoch_seconds"],
            f"{loop['median_epoch_seconds']:.3f} s")
        add(f"{label}_fraction_of_bound", f"{label}: bound / epoch", loop["fraction_of_bound"],
            f"{100 * loop['fraction_of_bound']:.1f} %")
        if loop["median_cores_busy"] is not None:
            add(f"{label}_cores_busy", f"{label}: cores busy (CPU s / epoch s)", loop["median_cores_busy"],
                f"{loop['median_cores_busy']:.2f}")
    for key, value in results["ratios"].items():
        if key == "tape_over_fit_paired":
            add(key, "tape / fit (median of the rounds' ratios)", value, f"{value:.3f}")
        else:
            add(key, key.replace("_over_", " / ") + " (median epoch)", value, f"{value:.3f}")
    for label in ("fit", "tape"):
        if label in loops:
            loop = loops[label]
            add(f"{label}_logging_share", f"{label}: MLflow log_epoch / epoch", loop["logging_share"],
                f"{100 * loop['logging_share']:.2f} % ({1000 * loop['median_log_epoch_seconds']:.1f} ms)")
            add(f"{label}_checkpoint_share", f"{label}: checkpoint every epoch / epoch", loop["checkpoint_share"],
                f"{100 * loop['checkpoint_share']:.2f} % ({1000 * loop['median_checkpoint_seconds']:.1f} ms copy + "
                f"{1000 * loop['median_checkpoint_write_seconds']:.1f} ms write)")
    if results.get("startup"):
        s = results["startup"]
        each = s.get("runs_seconds") or [s["start_to_first_step_seconds"]]
        add("start_to_first_step_seconds", "process start -> first training step", s["start_to_first_step_seconds"],
            f"{s['start_to_first_step_seconds']:.2f} s" + (
                f" (median of {len(each)}: {', '.join(f'{v:.2f}' for v in each)})" if len(each) > 1 else ""))
    if results.get("sweep"):
        sw = results["sweep"]
        runs = len(sw["jobs"])
        key = "sweep_wall_seconds" if sw["epochs"] == README_SWEEP_EPOCHS else "sweep_wall_seconds_fewer_epochs"
        add(key, f"whole sweep: {runs} runs x {sw['epochs']} epochs, wall", sw["wall_seconds"],
            f"{sw['wall_seconds']:.1f} s (epochs {sw['sum_epoch_seconds']:.1f} s, between them "
            f"{sw['between_epochs_seconds']:.1f} s)")
        ideal = runs * sw["epochs"] * results["bound_seconds"] + (sw["startup_seconds"] or 0.0)
        add("sweep_over_ideal", f"whole sweep / ({runs * sw['epochs']} x bound + start-up)", sw["wall_seconds"] / ideal,
            f"{sw['wall_seconds'] / ideal:.2f} (of {ideal:.1f} s)")
        if sw["median_job_overhead_seconds"] is not None:
            add("sweep_job_overhead_seconds", "sweep: per-job overhead (median of jobs after the first)",
                sw["median_job_overhead_seconds"], f"{sw['median_job_overhead_seconds']:.2f} s")
    rss = results["peak_rss_mib"]
    add("peak_rss_mib", "peak RSS, bench process", rss["self"], f"{rss['self']:.0f} MiB")
    if rss.get("startup_child"):
        add("startup_peak_rss_mib", "peak RSS, `src.train` subprocess", rss["startup_child"],
            f"{rss['startup_child']:.0f} MiB")
    return rows


def format_report(results: Dict[str, Any]) -> str:
    """The printed report: machine and config, then the table."""
    m = results["machine"]
    lines = [
        f"cores: {m['cores']} ({m['cpu']}); TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}",
        f"threads: intra-op {m['intra_op_threads']}, inter-op {m['inter_op_threads']} (0 = TensorFlow's default, all cores); "
        f"oneDNN: {m['TF_ENABLE_ONEDNN_OPTS']}; load average at start {results['load_average_start']}",
        f"config: {' '.join(results['overrides'])}",
        f"epochs: {results['epochs']} measured after {results['warmup']} warm-up per loop"
        + (f", in {results['rounds']} alternating rounds" if results.get("rounds", 1) > 1 else "") + "; "
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
    for label, p in (results.get("profiles") or {}).items():
        kinds = ", ".join(f"{kind} {100 * share:.1f} %" for kind, share in p["shares"].items())
        lines += ["", f"op profile of {label} ({p['epochs']} epochs, median {p['median_epoch_seconds']:.3f} s; "
                  f"{p['op_ms_per_step']:.1f} ms of op time per step, summed over the compute threads): {kinds}; "
                  f"trace: {p['trace']}"]
    if results.get("startup"):
        s = results["startup"]
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in s["phases_since_start_seconds"].items())
        lines += ["", f"start to first step: {s['method']}; since start: {phases}, first epoch ends "
                  f"{s['start_to_first_epoch_end_seconds']:.2f} s"]
    if results.get("sweep"):
        sw = results["sweep"]
        lines += ["", f"whole sweep: {sw['method']}; per job: overhead = before its run + its run's start to its "
                  "first epoch + its last epoch to its run's end; between epochs (grows with them); its first epoch "
                  "over its median one (tracing):"]
        for job in sw["jobs"]:
            extra = job["first_epoch_extra_seconds"]
            lines.append(f"  {job['run_name']:<16} {job['status']:<8} epochs {job['sum_epoch_seconds']:7.1f} s  overhead "
                         f"{job['overhead_seconds']:5.2f} s = {job['before_run_seconds']:.2f} + "
                         f"{job['run_to_first_epoch_seconds'] or 0:.2f} + {job['after_last_epoch_seconds'] or 0:.2f}  "
                         f"between epochs {job['between_epochs_seconds']:.2f} s  first epoch +"
                         f"{'-' if extra is None else f'{extra:.2f} s'}")
        lines.append(f"  after the last run: {sw['after_last_run_seconds']:.2f} s (the parent's comparison, exit)")
    load_end = results.get("load_average_end")
    if load_end and max(results["load_average_start"][0], load_end[0]) > 0.5 * m["cores"]:
        lines += ["", f"warning: load average {results['load_average_start']} -> {load_end} on {m['cores']} cores: "
                  "other processes were using the CPU, so these timings are noisy"]
    return "\n".join(lines)


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
        from src import runtime

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
            sweep = measure_sweep(overrides, tracking_uri, workdir, args.sweep_epochs)
            # the ideal sweep: start-up once, then every epoch at the bound
            sweep["startup_seconds"] = startup["start_to_first_step_seconds"] if startup else None

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
