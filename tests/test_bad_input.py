"""Bad input to `python -m src.train`: one clear line, a non-zero exit, no run left RUNNING.

The whole matrix is checked in-process, through the same steps the command takes before any
run exists (compose, then `train()`'s checks of config, data and store); one case of each
error family also runs the real command line in a subprocess.
"""

import gzip
import os
import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, OverrideParseException

from src.core.config import compose_config
from src.core.errors import UserError, composition_error_line
from src.experiments.train import train
from tests.helpers import error_lines, free_port, run_module

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "runs as root, where file permissions do not block access"

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
    # Hydra's + adds a key even in struct mode: the schema refuses it, naming the nearest key
    ("added-unknown-key", ["+train.epochz=3"], r"^train\.epochz: no such config key \(did you mean train\.epochs\?\)$"),
    ("added-unknown-optimizer-key", ["+optimizer.beta_one=0.8"],
     r"^optimizer\.beta_one: no such config key \(optimizer has _target_, _partial_, name; nor is it an argument of "
     r"keras\.optimizers\.Adam\)$"),
    ("wrong-type", ["train.epochs=abc"], r"train\.epochs=abc"),
    ("epochs-zero", ["train.epochs=0"], r"^train\.epochs=0: must be at least 1$"),
    ("epochs-negative", ["train.epochs=-1"], r"^train\.epochs=-1: must be at least 1$"),
    ("seed-negative", ["seed=-1"], r"^seed=-1: must be in \[0, 2\*\*32\)$"),
    ("device-unknown", ["device=tpu"], r"^Error merging override device=tpu: Invalid value 'tpu', expected one of \[auto, cpu, gpu\]$"),
    ("experiment-name-empty", ["mlflow.experiment_name=''"], r"^mlflow\.experiment_name=: must not be empty$"),
    ("batch-larger-than-n_train", ["train.batch_size=1000"], r"^train\.batch_size=1000: larger than data\.n_train=500"),
    (
        "n_train-larger-than-file",
        ["data.path={sample}", "data.n_train=20000"],
        r"^{sample} has 10984 rows, .*set data\.n_train to at most 10884$",
    ),
    ("l2-negative", ["reg=l2", "reg.l2=-1"], r"^reg\.l2=-1\.0: must be 0 or a positive finite number$"),
    ("l2-infinite", ["reg=l2", "reg.l2=inf"], r"^reg\.l2=inf: must be 0 or a positive finite number$"),
    ("lr-infinite", ["train.learning_rate=inf"], r"^train\.learning_rate=inf: must be a positive finite number$"),
    ("threads-beyond-machine", ["train.threads=4096"], r"^train\.threads=4096: must be 0 \(all cores\) or a count up to "
                                                      r"this machine's \d+ cores$"),
    ("activation-unknown", ["model.activation=elux"], r"^model\.activation=elux: not an activation Keras knows"),
    ("batch-not-a-multiple-of-replicas", ["train.logical_cpus=3"], r"^train\.batch_size=100: must be a multiple of "
                                                                   r"train\.logical_cpus=3"),
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
    ("symlink-loop", ["data.path={data}/loop_a"], r"^data\.path: {data}/loop_a: a symlink loop \(a link that leads back "
                                                 r"to itself\)$"),
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


# One case per error family, also run as the real command line.
CLI_CASES = ("unknown-group-option", "epochs-zero", "28-fields", "tracking-server-not-listening")


def _case_id(case) -> str:
    return case.id if hasattr(case, "id") and case.id else case[0]


def _case(case_id: str):
    return next(c for c in CASES if _case_id(c) == case_id)


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
    (folder / "loop_a").symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(folder / "loop_a")
    (folder / "a_file").write_text("a file where the store's folder should be\n")
    read_only = folder / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    yield folder
    read_only.chmod(0o755)
    unreadable.chmod(0o644)


def _places(bad_data: Path, higgs_file, tmp_path: Path) -> dict:
    return {
        "{data}": str(bad_data.resolve()),
        "{tmp}": str(tmp_path.resolve()),
        "{sample}": str(Path(higgs_file).resolve()),
        "{port}": str(free_port()),
    }


def _fill(text: str, places: dict, escape=lambda s: s) -> str:
    for key, value in places.items():
        text = text.replace(key, escape(value))
    return text


def _overrides(tmp_path: Path, bad_data: Path, extra, places) -> list:
    """The case's overrides after a small, quiet base whose store, artifacts and outputs are the case's own."""
    return [
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
        f"data.cache_dir={tmp_path}/cache",
        f"data.path={bad_data}/good.csv.gz",
        "model=tiny",
        "train.epochs=1",
        "quiet=true",
        *SMALL,
        *(_fill(o, places) for o in extra),
    ]


def _no_run_left_running(db: Path) -> None:
    if not db.exists():
        return
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(f"sqlite:///{db}")
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL) if experiments else []
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.parametrize("case, extra, expected", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_naming_the_key_or_file(tmp_path, bad_data, higgs_file, case, extra, expected):
    places = _places(bad_data, higgs_file, tmp_path)
    try:
        cfg = compose_config(_overrides(tmp_path, bad_data, extra, places))
    except (ConfigCompositionException, OverrideParseException) as exc:  # Hydra's, MissingConfigException included
        line = composition_error_line(exc)
    else:
        with pytest.raises(UserError) as err:
            train(cfg)
        line = str(err.value)
    assert "\n" not in line, line
    assert re.search(_fill(expected, places, re.escape), line), f"{case}: {line!r} does not match {expected!r}"
    _no_run_left_running(tmp_path / "mlruns" / "mlflow.db")


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_the_command_line_prints_that_one_line_and_exits_non_zero(tmp_path, bad_data, higgs_file, case_id):
    _, extra, expected = _case(case_id)
    places = _places(bad_data, higgs_file, tmp_path)
    args = [*_overrides(tmp_path, bad_data, extra, places), f"hydra.run.dir={tmp_path}/outputs"]
    proc = run_module("src.train", args, cwd=tmp_path, env_drop=("HYDRA_FULL_ERROR", "HIGGS_PATH"))
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, f"{case_id}: expected one error line, got:\n" + "\n".join(lines)
    assert re.search(_fill(expected, places, re.escape), lines[0]), lines[0]
    _no_run_left_running(tmp_path / "mlruns" / "mlflow.db")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_source_that_is_not_a_file_is_refused_before_any_read(tmp_path, kind):
    """A FIFO would block for ever, /dev/zero grow without end: both are refused by their stat, in one line."""
    path = {"fifo": tmp_path / "pipe", "device": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    proc = run_module("src.data", [str(path), "--cache-dir", str(tmp_path / "cache"), "--quiet"], cwd=tmp_path,
                      timeout=60)
    what = {"fifo": "is a FIFO (named pipe)", "device": "is a character device", "directory": "is a directory"}[kind]
    assert proc.returncode == 2 and error_lines(proc.stderr) == [f"error: data.path: {path}: {what}, not a file"]


def test_a_process_substitution_is_named_as_a_pipe_not_a_missing_file(tmp_path, higgs_file):
    """`<(zcat FILE)` is /dev/fd/N, a pipe whose resolved name (pipe:[N]) is no path: it was "no such file"."""
    import shlex
    import subprocess
    import sys

    command = (f"{shlex.quote(sys.executable)} -m src.data <(gzip -dc {shlex.quote(str(higgs_file))}) "
               f"--cache-dir {shlex.quote(str(tmp_path / 'cache'))} --quiet")
    proc = subprocess.run(["bash", "-c", command], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert re.fullmatch(r"error: data\.path: /dev/fd/\d+: is a FIFO \(named pipe\), not a file \(a process "
                        r"substitution, <\(\.\.\.\), is one: the rows are read more than once, so write them to a file "
                        r"first\)", "\n".join(error_lines(proc.stderr))), proc.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.rows"))
