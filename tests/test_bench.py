"""`python -m src.bench` runs end to end on a tiny config and writes a complete, sane JSON table.

A smoke test, not a timing assertion: the numbers depend on the machine and its load.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from src.bench import run as bench
from src.core.schema import PROJECT_ROOT


def test_help_documents_every_option_with_its_default():
    out = subprocess.run(
        [sys.executable, "-m", "src.bench", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for option in ("--epochs", "--warmup", "--model", "--data", "--json", "--include-eager", "--no-include-eager",
                   "--eager-epochs", "--jit", "--tracking-uri", "--startup", "--startup-runs", "--n-train"):
        assert option in text, option
    assert "(default: 10)" in text and "(default: large)" in text


@pytest.mark.slow  # ~20 s: a whole (short) bench
def test_bench_runs_and_writes_the_table_as_json(higgs_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main([
        "--model", "tiny",
        "--epochs", "2",
        "--warmup", "1",
        "--eager-epochs", "1",
        "--eager-warmup", "0",
        "--matmul-repeats", "2",
        "--matmul-seconds", "0.05",
        "--startup-runs", "2",
        "--profile", str(tmp_path / "profiles"),
        "--profile-epochs", "1",
        "--data", str(higgs_file),
        "--n-train", "2000",
        "--json", str(out),
        "data.n_validation=500",
    ])
    printed = capsys.readouterr().out
    assert "cores: " in printed and "bound / epoch" in printed and "met" in printed
    data = json.loads(out.read_text())
    assert data["table"] == json.loads(json.dumps(results["table"]))

    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["tensorflow"] and machine["keras"]

    mm = data["matmul"]
    assert mm["shape"] == "(500 x 512) @ (512 x 512)"
    assert 1e8 < mm["flop_per_s"] < 1e14  # 0.1 GFLOP/s .. 100 TFLOP/s
    assert mm["flop_per_s"] == max(mm["flop_per_s_before_loops"], mm["flop_per_s_after_loops"])

    flops = data["flops"]
    forward = 2 * (28 * 16 + 16 * 1)  # tiny: 28 -> 16 -> 1
    assert flops["forward_per_row"] == forward
    assert flops["train_rows"] == (2000 // 500) * 500 and flops["val_rows"] == 500
    assert flops["epoch"] == 3 * forward * 2000 + forward * 500
    assert math.isclose(data["bound_seconds"], flops["epoch"] / mm["flop_per_s"])

    loops = data["loops"]
    # the bare Keras loops, each beside the project's loop as configured (checkpoints every 10 epochs)
    assert set(loops) == {"fit", "tape", "tape_eager", "bare_fit", "fit_default", "bare_tape", "tape_default"}
    assert loops["tape_eager"]["compile"] is False and loops["tape"]["compile"] is True
    best_bare = min(loops["bare_fit"]["median_epoch_seconds"], loops["bare_tape"]["median_epoch_seconds"])
    for label in ("fit", "tape"):
        assert len(loops[f"bare_{label}"]["epoch_seconds"]) == 3 and loops[f"{label}_default"]["loop"] == label
        assert math.isclose(data["ratios"][f"{label}_over_best_bare"],
                            loops[f"{label}_default"]["median_epoch_seconds"] / best_bare)
    for label, loop in loops.items():
        if label.startswith("bare_"):
            continue
        n_epochs = 1 if label == "tape_eager" else 3
        assert len(loop["epoch_seconds"]) == n_epochs and len(loop["log_epoch_seconds"]) == n_epochs, label
        # CPU time per epoch comes from the marks at the end of consecutive epochs: the
        # measured epochs after the first (which has no start mark)
        assert len(loop["cores_busy"]) == n_epochs - max(1, loop["warmup_epochs"]), label
        assert all(0 < busy < 2 * machine["cores"] for busy in loop["cores_busy"]), loop["cores_busy"]  # CPU s / wall s
        assert (loop["median_cores_busy"] is None) == (not loop["cores_busy"])
        assert "xla_used" not in loop
        measured = loop["epoch_seconds"][loop["warmup_epochs"]:]
        assert loop["median_epoch_seconds"] in measured or min(measured) <= loop["median_epoch_seconds"] <= max(measured)
        assert 0 < loop["median_epoch_seconds"] < 60
        assert math.isclose(loop["fraction_of_bound"], data["bound_seconds"] / loop["median_epoch_seconds"])
        assert 0 < loop["median_log_epoch_seconds"] < 10
        assert math.isclose(loop["logging_share"], loop["median_log_epoch_seconds"] / loop["median_epoch_seconds"])
    assert math.isclose(
        data["ratios"]["tape_over_fit"], loops["tape"]["median_epoch_seconds"] / loops["fit"]["median_epoch_seconds"]
    )

    startup = data["startup"]
    assert 0 < startup["start_to_first_step_seconds"] < startup["start_to_first_epoch_end_seconds"]
    assert startup["start_to_first_epoch_end_seconds"] < startup["process_wall_seconds"] < 600
    assert "train.epochs=1" in startup["command"]
    assert len(startup["runs_seconds"]) == 2 and startup["start_to_first_step_seconds"] in startup["runs_seconds"]

    for label in ("fit", "tape"):  # every op of a step falls in a kind; the backward matmuls are among them
        profile = data["profiles"][label]
        assert math.isclose(sum(profile["shares"].values()), 1.0) and profile["op_ms_per_step"] > 0, profile
        assert "backward matmuls" in profile["shares"] and Path(profile["trace"]).is_file()
        assert f"op profile of {label} (1 epochs" in printed

    rss = data["peak_rss_mib"]
    assert 50 < rss["self"] < 64_000 and 50 < rss["startup_child"] < 64_000

    rows = {row["key"]: row for row in data["table"]}
    for key in ("fit_fraction_of_bound", "tape_fraction_of_bound", "tape_over_fit", "fit_logging_share",
                "tape_logging_share", "start_to_first_step_seconds"):
        assert rows[key]["goal"] and isinstance(rows[key]["met"], bool), key
    assert rows["tape_over_fit"]["met"] == (data["ratios"]["tape_over_fit"] <= 1.0)
    for key in ("matmul_gflop_per_s", "bound_seconds", "peak_rss_mib", "tape_eager_median_epoch_seconds"):
        assert key in rows and rows[key]["met"] is None, key


@pytest.mark.slow
def test_a_run_that_does_not_finish_stops_the_bench_with_one_line(higgs_file, capsys):
    # lr=1e6 makes the large model's loss NaN in its first epoch: the run ends FAILED
    with pytest.raises(SystemExit) as stopped:
        bench.main([
            "--model", "large",
            "--epochs", "1",
            "--warmup", "0",
            "--no-include-eager",
            "--no-startup",
            "--matmul-repeats", "1",
            "--matmul-seconds", "0.01",
            "--data", str(higgs_file),
            "--n-train", "2000",
            "data.n_validation=500",
            "train.learning_rate=1e6",
        ])
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith("bench: fit: run fit-none-large ended FAILED: ") and "diverged" in message, message
    assert "cores: " not in capsys.readouterr().out  # no report for a half-run bench


def test_bench_pipeline_prints_per_step_time_for_each_size(capsys):
    from src.bench import pipeline as bench_pipeline

    result = bench_pipeline.main(["--rows", "1000", "3000", "--epochs", "2", "--no-rss"])
    per_step = result["per_step_seconds"]
    assert set(per_step) == {1000, 3000} and all(0 < s < 10 for s in per_step.values())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["training", "rows", "ms", "per", "step", "vs", "1000"] and len(lines) == 3
    assert lines[1].split()[0] == "1,000" and lines[1].split()[2] == "1.00"


def test_rounds_pool_every_measured_epoch_and_keep_each_rounds_median():
    from src.bench.loops import pool_rounds

    def round_of(epochs, logs):
        return {"warmup_epochs": 1, "epoch_seconds": epochs, "median_epoch_seconds": sorted(epochs[1:])[1],
                "log_epoch_seconds": logs, "checkpoint_seconds": [0.01, 0.01, 0.03],
                "checkpoint_write_seconds": [0.02, 0.02, 0.02], "cores_busy": [1.8, 1.9], "run_id": "r"}

    # a warm-up epoch (9.0, never counted), then three measured epochs per round
    first, second = round_of([9.0, 0.40, 0.42, 0.44], [1, 0.001, 0.001, 0.001]), round_of([9.0, 0.30, 0.50, 0.52], [1, 0.002, 0.002, 0.002])
    assert pool_rounds([first]) is first  # one round: as measured
    pooled = pool_rounds([first, second])
    assert pooled["median_epoch_seconds"] == 0.43  # the median of 0.30 0.40 0.42 0.44 0.50 0.52
    assert pooled["round_medians"] == [0.42, 0.50] and pooled["min_epoch_seconds"] == 0.30
    assert pooled["logging_share"] == 0.0015 / 0.43
    assert pooled["checkpoint_share"] == (0.01 + 0.02) / 0.43 and pooled["median_cores_busy"] == 1.85


def test_the_paired_tape_over_fit_ratio_has_the_same_goal_as_the_pooled_one():
    from src.bench import run as bench
    from tests.helpers import bench_results

    results = bench_results(sweep_epochs=100)
    results["ratios"] = {"tape_over_fit": 1.02, "tape_over_fit_paired": 0.98}
    rows = {row["key"]: row for row in bench.build_rows(results)}
    assert rows["tape_over_fit"]["met"] is False and rows["tape_over_fit_paired"]["met"] is True
    assert rows["tape_over_fit_paired"]["metric"] == "tape / fit (median of the rounds' ratios)"


@pytest.mark.parametrize("name, kind", [
    # as TensorFlow's profiler names a step's ops (the tape loop's multi-step call, the large model)
    ("while/body/_1/while/StatefulPartitionedCall/gradient_tape/large_1/dense_1/MatMul/MatMul:_MklMatMul",
     "backward matmuls"),
    ("while/body/_1/while/StatefulPartitionedCall/large_1/dense_1/Elu:_MklNativeFusedMatMul",
     "forward matmul + bias + ELU (fused)"),
    ("while/body/_1/while/StatefulPartitionedCall/gradient_tape/large_1/dense_2_1/BiasAdd/BiasAddGrad:BiasAddGrad",
     "BiasAddGrad"),
    ("while/body/_1/while/StatefulPartitionedCall/gradient_tape/large_1/dense_3_1/EluGrad:EluGrad", "EluGrad"),
    ("while/body/_1/while/StatefulPartitionedCall/adam/Sub_31:Sub", "Adam's update"),
    ("adam/AssignSubVariableOp_2:AssignSubVariableOp", "Adam's update"),  # one call per step: no outer scope
    ("while/body/_1/while/StatefulPartitionedCall/logistic_loss/sub:Sub", "loss, metrics, penalty, dropout, everything else"),
])
def test_the_op_profile_sorts_a_steps_ops_by_what_they_do(name, kind):
    from src.bench.profile import op_kind

    assert op_kind(name) == kind
