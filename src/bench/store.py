"""`python -m src.bench_store --tracking-uri URI [--calls N] [--clients K]`: what one epoch's metrics cost to log into a
store: the latency of `log_batch` with the per-epoch metrics (EPOCH_METRICS), as every run calls it once an epoch, from K clients
at once (each its own run), as median and 90th percentile in milliseconds."""

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from src.core.errors import UserError
from src.core.metrics import EPOCH_METRICS
from src.core.redaction import redact
from src.tracking.store import client, ensure_store, experiment_id


def _one_client(tracking_uri: str, exp_id: str, calls: int) -> List[float]:
    """One run logging `calls` epochs; the seconds each log_batch took."""
    from mlflow.entities import Metric

    mlflow_client = client(tracking_uri)
    run_id = mlflow_client.create_run(exp_id, run_name="bench_store").info.run_id
    seconds = []
    try:
        for step in range(calls):
            now = int(time.time() * 1000)
            metrics = [Metric(key, 0.5 + step * 1e-3, now, step) for key in EPOCH_METRICS]
            started = time.perf_counter()
            mlflow_client.log_batch(run_id, metrics=metrics)
            seconds.append(time.perf_counter() - started)
    finally:
        mlflow_client.delete_run(run_id)  # a measurement, not a result: out of the runs table
    return seconds


def measure(tracking_uri: str, calls: int, clients: int, experiment: str = "bench_store") -> Dict[str, float]:
    """Median and 90th percentile of one log_batch call, in ms, with `clients` runs logging at once."""
    ensure_store(tracking_uri)
    exp_id = experiment_id(tracking_uri, experiment, None)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda _: _one_client(tracking_uri, exp_id, calls), range(clients)))
    all_ms = sorted(1000 * s for seconds in results for s in seconds[1:])  # the first call opens the connection
    return {"median_ms": statistics.median(all_ms), "p90_ms": all_ms[int(0.9 * (len(all_ms) - 1))],
            "calls": len(all_ms), "clients": clients}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench_store",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--tracking-uri", required=True, help="the store to measure (a database URI or a server)")
    parser.add_argument("--calls", type=int, default=200, help="log_batch calls per client (default: 200)")
    parser.add_argument("--clients", type=int, default=1, help="clients logging at once (default: 1)")
    args = parser.parse_args(argv)
    try:
        figures = measure(args.tracking_uri, args.calls, args.clients)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{redact(args.tracking_uri)}: log_batch of {len(EPOCH_METRICS)} metrics, {figures['clients']} client(s), "
          f"{figures['calls']} calls: median {figures['median_ms']:.1f} ms, p90 {figures['p90_ms']:.1f} ms")
    return 0

