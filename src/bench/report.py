"""The bench's report: each measured figure against its goal, as rows and as the printed table."""

from typing import Any, Dict, List, Optional

from src.bench.loops import FLOP_CONVENTION

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
    "sweep_over_bound": ("<=", 1.45, "<= 1.45"),  # wall / (its epochs at the bound)
    "sweep_job_fixed_seconds": ("<=", 1.0, "<= 1 s"),
    "seeds_job_fixed_seconds": ("<=", 1.0, "<= 1 s"),
    "search_fixed_per_trial_seconds": ("<=", 1.25, "<= 1.25 s"),
    "fit_over_best_bare": ("<=", 1.00, "<= 1.00"),
    "tape_over_best_bare": ("<=", 1.00, "<= 1.00"),
}


README_SWEEP_EPOCHS = 100


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
        at_bound = runs * sw["epochs"] * results["bound_seconds"]
        add("sweep_over_bound", f"whole sweep / ({runs * sw['epochs']} epochs at the bound)", sw["wall_seconds"] / at_bound,
            f"{sw['wall_seconds'] / at_bound:.2f} (of {at_bound:.1f} s)")
        _job_rows(add, "sweep", sw)
    for suffix in ("", "_no_reuse"):  # the second: train.reuse_compiled=false, measured next to the first
        if results.get(f"seeds{suffix}"):
            _job_rows(add, f"seeds{suffix}", results[f"seeds{suffix}"])
        if results.get(f"search{suffix}"):
            se = results[f"search{suffix}"]
            trials = len(se["jobs"])
            fixed = (se["wall_seconds"] - se["sum_steady_epoch_seconds"]) / trials
            add(f"search{suffix}_fixed_per_trial_seconds",
                f"search{suffix}: (wall - its epochs at their steady time) / {trials} trials", fixed,
                f"{fixed:.2f} s (wall {se['wall_seconds']:.1f} s; with each first epoch as an epoch: "
                f"{(se['wall_seconds'] - se['sum_epoch_seconds']) / trials:.2f} s)")
            _job_rows(add, f"search{suffix}", se)
    rss = results["peak_rss_mib"]
    add("peak_rss_mib", "peak RSS, bench process", rss["self"], f"{rss['self']:.0f} MiB")
    if rss.get("startup_child"):
        add("startup_peak_rss_mib", "peak RSS, `src.train` subprocess", rss["startup_child"],
            f"{rss['startup_child']:.0f} MiB")
    return rows


def _job_rows(add, name: str, multirun: Dict[str, Any]) -> None:
    """A multirun's per-job fixed cost: the median of its jobs after the first (the first pays the start-up)."""
    median = multirun["median_job_fixed_seconds"]
    if median is not None:
        add(f"{name}_job_fixed_seconds", f"{name}: per job outside its epochs, tracing included (median, jobs 2+)",
            median, f"{median:.2f} s")


def _job_lines(name: str, multirun: Dict[str, Any]) -> List[str]:
    """A multirun's jobs, one line each: where each one's fixed cost went."""
    lines = ["", f"{name}: `{multirun['command'].split(' -m ', 1)[-1]}`; {multirun['method']}:"]
    for job in multirun["jobs"]:
        lines.append(f"  {job['run_name']:<22} {job['status']:<8} epochs {job['sum_epoch_seconds']:6.1f} s (steady "
                     f"{job['steady_epoch_seconds']:.3f} s)  fixed {job['fixed_seconds']:5.2f} s = before "
                     f"{job['before_run_seconds']:.2f} + to first epoch {job['run_to_first_epoch_seconds']:.2f} + "
                     f"tracing {job['first_epoch_extra_seconds']:.2f} + after {job['after_last_epoch_seconds']:.2f}  "
                     f"(between epochs {job['between_epochs_seconds']:.2f} s)")
    lines.append(f"  after the last run: {multirun['after_last_run_seconds']:.2f} s (the parent's summary, exit)")
    return lines


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
    for name in ("sweep", "seeds", "seeds_no_reuse", "search", "search_no_reuse"):
        if results.get(name):
            lines += _job_lines(name, results[name])
    load_end = results.get("load_average_end")
    if load_end and max(results["load_average_start"][0], load_end[0]) > 0.5 * m["cores"]:
        lines += ["", f"warning: load average {results['load_average_start']} -> {load_end} on {m['cores']} cores: "
                  "other processes were using the CPU, so these timings are noisy"]
    return "\n".join(lines)
