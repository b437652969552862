"""Shared fixtures: the real HIGGS sample (or a synthetic file in its layout) and a private MLflow store."""

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.core.schema import CONFIG_DIR, PROJECT_ROOT
from tests.helpers import free_port

SAMPLE = Path(os.environ.get("HIGGS_SAMPLE", PROJECT_ROOT.parent / "shared" / "data" / "higgs_sample.csv.gz"))


def write_uci_file(path: Path, n_rows: int, seed: int = 0) -> Path:
    """A gzip CSV in the UCI HIGGS layout (label first, 28 features, no header)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, 28)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) + rng.normal(scale=1.0, size=n_rows) > 0).astype(np.float32)
    with gzip.open(path, "wt") as f:
        for label, row in zip(y, x):
            f.write(",".join(f"{v:.18e}" for v in (label, *row)) + "\n")
    return path


@pytest.fixture(scope="session")
def higgs_file(tmp_path_factory) -> Path:
    """The real 10,984-row sample when present (always in CI), else a synthetic stand-in."""
    if SAMPLE.exists():
        return SAMPLE
    return write_uci_file(tmp_path_factory.mktemp("data") / "higgs_synthetic.csv.gz", 10_984)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty store, created and migrated by the project's own `ensure_store` once per session (per xdist
    worker): each test starts from a copy instead of paying MLflow's ~2 s of schema migrations."""
    from src.tracking.store import ensure_store

    db = tmp_path_factory.mktemp("migrated_store") / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def tracking_uri(tmp_path, migrated_store) -> str:
    """This test's own store: a copy of the migrated empty one. (Creating a store from nothing is tested by the
    command-line tests and the store tests of tests/test_faults.py, which use URIs of their own.)"""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def store_overrides(tmp_path, tracking_uri) -> List[str]:
    """Overrides that send runs, artifacts and caches to this test's temporary folder."""
    return [
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
        f"data.cache_dir={tmp_path}/cache",
    ]


@pytest.fixture
def make_cfg(higgs_file, store_overrides) -> Callable[..., DictConfig]:
    """Compose the real config with a small, quiet slice of the data plus any overrides."""

    def make(*overrides: str) -> DictConfig:
        base = [
            f"data.path={higgs_file}",
            "data.n_validation=500",
            "data.n_train=2000",
            "train.epochs=2",
            "model=tiny",
            "quiet=true",
            "mlflow.log_models=false",  # ~1.5 s a run; tests/test_models.py turns it on
            *store_overrides,
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=[*base, *overrides])

    return make


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 over a SQLite store (.url, .stop()); it and its workers end with the test."""
    yield from serve_mlflow(tmp_path, f"sqlite:///{tmp_path}/server.db")


def serve_mlflow(tmp_path, backend_store_uri: str):
    """Run `make server` itself (over `backend_store_uri`, artifacts served through it) until the generator is
    closed."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "server", f"PY={sys.executable}", f"PORT={port}", f"DB={backend_store_uri}",
         f"ARTIFACTS={tmp_path / 'server-artifacts'}"],
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # make, mlflow, gunicorn
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        yield SimpleNamespace(url=url, stop=lambda: _stop_group(proc))
    finally:
        _stop_group(proc)
        log.close()


@pytest.fixture
def postgres(tmp_path_factory):
    """A real PostgreSQL cluster (Debian's server programs, run as a non-root user) on a free port, with databases
    mlflow and optuna; stopped after the test."""
    import tempfile

    from src.ops.db import Cluster, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed here")
    # a folder of its own under /tmp: pytest's are private to root, and PostgreSQL runs as another user
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp")), free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a process and everything it started, SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
