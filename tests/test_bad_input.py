"""Bad input to `python -m src.train`: one clear line on stderr, a non-zero exit, no run left RUNNING.

Each case runs the real command line in a subprocess, from a temporary
directory, with its store, artifacts, cache and Hydra output there too.
"""

import gzip
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "runs as root, where file permissions do not block access"

# Lines that are not the error. TensorFlow/absl start-up chatter and MLflow's INFO
# logging may precede it; Hydra frames a job's error with the first and last line.
NOISE = [
    re.compile(p)
    for p in (
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
        r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ",  # absl / TensorFlow C++ log line
        r"^To enable the following instructions: .* with the appropriate compiler flags\.$",
        r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO ",  # MLflow's INFO log, e.g. creating a new store
        r"^Error executing job with overrides: \[.*\]$",
        r"^Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace\.$",
    )
]

# The small data set every case trains on unless it overrides it: the bad rows of
# the data cases are within these first 600 rows.
SMALL = ["data.n_validation=100", "data.n_train=500", "train.batch_size=100"]

# (case id, extra overrides, expected regex in the one error line).
# {data}: a folder of good and bad data files (below); {tmp}: the case's own folder;
# {sample}: the real HIGGS sample; {port}: a local port nobody listens on.
CASES = [
    # --- config ---
    ("unknown-group-option", ["model=huge"], r"model[=/]huge"),
    ("misspelled-key", ["train.epoch=3"], r"train\.epoch\b"),
    ("wrong-type", ["train.epochs=abc"], r"train\.epochs=abc"),
    ("epochs-zero", ["train.epochs=0"], r"^train\.epochs=0: must be at least 1$"),
    ("epochs-negative", ["train.epochs=-1"], r"^train\.epochs=-1: must be at least 1$"),
    ("batch-larger-than-n_train", ["train.batch_size=1000"], r"^train\.batch_size=1000: larger than data\.n_train=500"),
    (
        "n_train-larger-than-file",
        ["data.path={sample}", "data.n_train=20000"],
        r"^{sample} has 10984 rows, .*set data\.n_train to at most 10884$",
    ),
    ("l2-negative", ["reg=l2", "reg.l2=-1"], r"^reg\.l2=-1\.0: must be 0 or positive$"),
    ("dropout-one", ["reg=dropout", "reg.dropout=1.0"], r"^reg\.dropout=1\.0: must be in \[0, 1\)$"),
    ("l2-contradicts-reg-none", ["reg=none", "reg.l2=0.01"], r"^reg\.l2=0\.01: contradicts reg=none"),
    # --- data ---
    ("missing-file", ["data.path={data}/missing.csv.gz"], r"^data\.path: {data}/missing\.csv\.gz: no such file$"),
    pytest.param(
        "unreadable-file",
        ["data.path={data}/unreadable.csv.gz"],
        r"^data\.path: {data}/unreadable\.csv\.gz: permission denied$",
        marks=pytest.mark.skipif(IS_ROOT, reason=ROOT_REASON),
        id="unreadable-file",
    ),
    ("directory-not-file", ["data.path={data}"], r"^data\.path: {data}: is a directory, not a file$"),
    (
        "truncated-gzip",
        ["data.path={data}/truncated.csv.gz"],
        r"^{data}/truncated\.csv\.gz: corrupt or truncated gzip data after line \d+: Compressed file ended",
    ),
    (
        "corrupt-gzip",
        ["data.path={data}/corrupt.csv.gz"],
        r"^{data}/corrupt\.csv\.gz: corrupt or truncated gzip data before the first line: ",
    ),
    ("empty-file", ["data.path={data}/empty.csv.gz"], r"^{data}/empty\.csv\.gz: no data rows \(empty file\?\)$"),
    (
        "header-line",
        ["data.path={data}/header.csv.gz"],
        r"^{data}/header\.csv\.gz line 1: non-numeric value 'label' .*no header line",
    ),
    (
        "28-fields",
        ["data.path={data}/fields28.csv.gz"],
        r"^{data}/fields28\.csv\.gz line 3: expected 29 comma-separated values .*got 28$",
    ),
    (
        "30-fields",
        ["data.path={data}/fields30.csv.gz"],
        r"^{data}/fields30\.csv\.gz line 3: expected 29 comma-separated values .*got 30$",
    ),
    (
        "non-numeric",
        ["data.path={data}/non_numeric.csv.gz"],
        r"^{data}/non_numeric\.csv\.gz line 3: non-numeric value 'abc' in column 5$",
    ),
    (
        "nan-feature",
        ["data.path={data}/nan.csv.gz"],
        r"^{data}/nan\.csv\.gz line 3: non-finite value 'nan' in column 2 \(feature 1\)$",
    ),
    (
        "inf-feature",
        ["data.path={data}/inf.csv.gz"],
        r"^{data}/inf\.csv\.gz line 3: non-finite value 'inf' in column 29 \(feature 28\)$",
    ),
    ("label-not-0-1", ["data.path={data}/label2.csv.gz"], r"^{data}/label2\.csv\.gz line 3: label must be 0 or 1, got '2'$"),
    # --- tracking ---
    (
        "store-dir-cannot-be-created",
        ["mlflow.tracking_uri=sqlite:///{data}/a_file/mlruns/mlflow.db"],
        r"^mlflow\.tracking_uri: cannot create {data}/a_file/mlruns: Not a directory$",
    ),
    pytest.param(
        "store-dir-unwritable",
        ["mlflow.tracking_uri=sqlite:///{data}/read_only/mlruns/mlflow.db"],
        r"^mlflow\.tracking_uri: .*{data}/read_only/mlruns",
        marks=pytest.mark.skipif(IS_ROOT, reason=ROOT_REASON),
        id="store-dir-unwritable",
    ),
    ("tracking-uri-unknown-scheme", ["mlflow.tracking_uri=notascheme://x"], r"^mlflow\.tracking_uri=notascheme://x: "),
    (
        "tracking-server-not-listening",
        ["mlflow.tracking_uri=http://127.0.0.1:{port}"],
        r"^mlflow\.tracking_uri: no MLflow server at http://127\.0\.0\.1:{port} ",
    ),
]


def _case_id(case) -> str:
    return case.id if hasattr(case, "id") and case.id else case[0]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, higgs_file) -> Path:
    """Small data files, good and bad, built from the first rows of the real sample."""
    folder = tmp_path_factory.mktemp("bad_data")
    with gzip.open(higgs_file, "rt") as f:
        lines = [next(f).rstrip("\n") for _ in range(700)]
    fields = lines[2].split(",")

    def write(name: str, rows) -> bytes:
        raw = gzip.compress(("\n".join(rows) + "\n").encode())
        (folder / name).write_bytes(raw)
        return raw

    good = write("good.csv.gz", lines)
    (folder / "truncated.csv.gz").write_bytes(good[: len(good) // 3])
    (folder / "corrupt.csv.gz").write_bytes(good[:10] + bytes(range(256)) * 40)  # valid header, garbage after
    (folder / "empty.csv.gz").write_bytes(b"")
    write("header.csv.gz", [",".join(["label"] + [f"feature_{i}" for i in range(1, 29)])] + lines)
    write("fields28.csv.gz", lines[:2] + [",".join(fields[:-1])] + lines[3:])
    write("fields30.csv.gz", lines[:2] + [",".join(fields + ["0.5"])] + lines[3:])
    write("non_numeric.csv.gz", lines[:2] + [",".join(fields[:4] + ["abc"] + fields[5:])] + lines[3:])
    write("nan.csv.gz", lines[:2] + [",".join(fields[:1] + ["nan"] + fields[2:])] + lines[3:])
    write("inf.csv.gz", lines[:2] + [",".join(fields[:-1] + ["inf"])] + lines[3:])
    write("label2.csv.gz", lines[:2] + [",".join(["2"] + fields[1:])] + lines[3:])
    unreadable = folder / "unreadable.csv.gz"
    unreadable.write_bytes(good)
    unreadable.chmod(0)
    (folder / "a_file").write_text("a file where the store's folder should be\n")
    read_only = folder / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    yield folder
    read_only.chmod(0o755)
    unreadable.chmod(0o644)


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> dict:
    """The first empty store a case creates, copied into later cases: creating a store costs seconds."""
    return {"dir": tmp_path_factory.mktemp("store_template")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.strip() and not any(p.search(line) for p in NOISE)]


def _runs(db: Path):
    """(run ID, name, status) of every run in the store; none if the store was never created."""
    if not db.exists():
        return []
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(f"sqlite:///{db}")
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiment_ids:
        return []
    runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL)
    return [(r.info.run_id, r.info.run_name, r.info.status) for r in runs]


@pytest.mark.parametrize("case, extra, expected", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_fails_with_one_clear_line(tmp_path, bad_data, store_template, higgs_file, case, extra, expected):
    places = {
        "{data}": str(bad_data.resolve()),
        "{tmp}": str(tmp_path.resolve()),
        "{sample}": str(Path(higgs_file).resolve()),
        "{port}": str(_free_port()),
    }

    def fill(text: str, escape=lambda s: s) -> str:
        for key, value in places.items():
            text = text.replace(key, escape(value))
        return text

    db = tmp_path / "mlruns" / "mlflow.db"
    if "db" in store_template:
        db.parent.mkdir()
        shutil.copy(store_template["db"], db)
    command = [
        sys.executable,
        "-m",
        "src.train",
        f"mlflow.tracking_uri=sqlite:///{db}",
        f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
        f"data.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={tmp_path}/outputs",
        f"data.path={bad_data}/good.csv.gz",
        "model=tiny",
        "train.epochs=1",
        "quiet=true",
        *SMALL,
        *(fill(o) for o in extra),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "HIGGS_PATH")}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    stderr = proc.stderr

    assert proc.returncode != 0, f"{case}: exit 0\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1, f"{case}: expected one error line, got {len(lines)}:\n" + "\n".join(lines)
    assert re.search(fill(expected, re.escape), lines[0]), f"{case}: {lines[0]!r} does not match {expected!r}"
    runs = _runs(db)
    assert not [run for run in runs if run[2] == "RUNNING"], f"{case}: runs left RUNNING: {runs}"
    if db.exists() and not runs and "db" not in store_template:
        store_template["db"] = shutil.copy(db, store_template["dir"] / "mlflow.db")
