"""Issue 10's targets on a 1,001,000-row synthetic file in the UCI layout: ingest speed, per-step cost, peak memory.

Each compares two figures measured side by side in this run (never a bare time against a threshold).
"""

import argparse
from pathlib import Path

import pytest

from src.bench import ingest as bench_ingest
from src.bench import pipeline as bench_pipeline
from src.data.synthetic import write_uci_gzip

pytestmark = pytest.mark.slow

GiB = 2**30


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "higgs-1m.csv.gz"
    write_uci_gzip(path, 1_001_000)
    return path


def test_ingest_takes_at_most_1_25_times_gunzip_to_dev_null(big_file):
    result = bench_ingest.measure(big_file, repeats=1)
    print(result)
    assert result["rows"] == 1_001_000
    assert result["ingest_seconds"] <= 1.25 * result["gzip_seconds"], result


def test_per_step_time_and_peak_memory_do_not_grow_with_the_rows(big_file, tmp_path):
    import subprocess
    import sys

    from src.core.schema import PROJECT_ROOT

    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "src.data", str(big_file), "--cache-dir", str(cache), "--quiet"],
                   cwd=PROJECT_ROOT, check=True)
    args = argparse.Namespace(rows=[99_000, 990_000], loop="fit", model="tiny", epochs=3, batch_size=500)
    per_step = bench_pipeline.per_step_seconds(args, big_file, cache)
    print({n: f"{1000 * s:.2f} ms" for n, s in per_step.items()})
    assert per_step[990_000] <= 1.5 * per_step[99_000], per_step

    # a whole run's peak RSS grows by at most one copy of the rows: a second copy (numpy and a
    # tf.constant, say) would add another 116 bytes per row
    rss = {n: bench_pipeline.peak_rss_bytes(args, big_file, cache, n, tmp_path) for n in args.rows}
    per_row = (rss[990_000] - rss[99_000]) / (990_000 - 99_000)
    row_bytes = 29 * 4
    print(f"peak RSS {rss[99_000] / GiB:.2f} / {rss[990_000] / GiB:.2f} GiB: {per_row:.0f} bytes per row")
    assert per_row <= 1.5 * row_bytes, rss
    assert rss[990_000] <= (1000 + 990_000) * row_bytes + 1.5 * GiB, rss
