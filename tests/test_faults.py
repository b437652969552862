"""Faults with real processes and a real store: nothing lost, nothing left half-written, one line each."""

import gzip
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from src.core.errors import TrackingError
from src.tracking.store import ensure_store
from tests.helpers import all_runs, cli

ERROR_LINE = re.compile(r"store stopped taking writes \((?P<why>[^)]*)\); run (?P<run>\w+) stopped, "
                        r"its metrics from epoch (?P<epoch>\d+) on are kept in (?P<file>\S+)$")


@pytest.mark.slow
def test_concurrent_first_opens_of_a_new_store_never_corrupt_it(tmp_path):
    """Three commands starting at once on a store nobody has created yet (MLflow's first open does not lock)."""
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    code = f"from src.tracking.store import ensure_store; ensure_store({uri!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    client = MlflowClient(uri)
    client.create_run(client.create_experiment("after"))  # every table is there and writable


def test_half_migrated_store_is_refused_in_one_line(tmp_path):
    db = tmp_path / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:  # what an interrupted Alembic batch migration leaves behind
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key TEXT)")
    with pytest.raises(TrackingError, match=r"half-migrated .* _alembic_tmp_latest_metrics.*DROP TABLE") as err:
        ensure_store(f"sqlite:///{db}")
    assert "\n" not in str(err.value)
    (tmp_path / "text.db").write_text("not a database\n" * 100)
    with pytest.raises(TrackingError, match=r"text\.db is not a readable SQLite store"):
        ensure_store(f"sqlite:///{tmp_path}/text.db")


def test_a_store_whose_writer_was_killed_mid_transaction_takes_the_next_run(tmp_path):
    """`kill -9` during a write leaves a hot journal beside the store; the next command rolls it back and goes on."""
    db = tmp_path / "killed" / "mlflow.db"
    uri = f"sqlite:///{db}"
    ensure_store(uri)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sqlite3, time
connection = sqlite3.connect({str(db)!r}, isolation_level=None)
connection.execute('PRAGMA cache_size=1')  # spill to the file, so the journal is on disk and synced
connection.execute('BEGIN IMMEDIATE')
connection.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES ('k', zeroblob(1000000), 0)")
print('writing', flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    assert db.with_name("mlflow.db-journal").stat().st_size > 0  # the hot journal a killed writer leaves
    ensure_store(uri)  # what every command does first (it read the store read-only, which cannot roll back)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("after")).info.run_id
    client.set_terminated(run)
    assert client.get_run(run).info.status == "FINISHED" and not db.with_name("mlflow.db-journal").exists()


def _start_training(tmp_path, higgs_file, *extra):
    """A long tiny-model run in its own process, its store, artifacts and output folder under tmp_path."""
    args = [
        "model=tiny", "train.epochs=100000", f"data.path={higgs_file}", "data.n_validation=500",
        "data.n_train=1000", "quiet=true", "mlflow.log_models=false", f"mlflow.tracking_uri=sqlite:///{tmp_path}/store/mlflow.db",
        f"mlflow.artifact_location={tmp_path}/store/artifacts", f"hydra.run.dir={tmp_path}/out", *extra,
    ]
    return subprocess.Popen(cli(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(proc, uri: str, epochs: int, timeout: float = 180) -> str:
    """The run's ID once the store holds `epochs` epochs of it."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {epochs} epochs in the store after {timeout} s"
        runs = all_runs(uri)  # through the store's lock: the job may still be creating it
        if runs and len(MlflowClient(uri).get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            return runs[0].info.run_id
        time.sleep(0.5)


@pytest.mark.slow  # ~14 s: a CLI run whose store is deleted under it
def test_store_deleted_mid_run_stops_within_an_epoch_and_keeps_the_metrics(tmp_path, higgs_file):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    proc = _start_training(tmp_path, higgs_file)
    try:
        run_id = _wait_for_epochs(proc, uri, 3)
        (tmp_path / "store" / "mlflow.db").unlink()
        deleted = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - deleted
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "stopped taking writes" in line]
    match = ERROR_LINE.search(line)
    assert match and match["run"] == run_id and str(tmp_path / "store" / "mlflow.db") in line, line
    # the epochs the store did not take are in the job's folder, from the one named on, in order
    spilled = [json.loads(row) for row in Path(match["file"]).read_text().splitlines()]
    assert Path(match["file"]).parent == tmp_path / "out"
    steps = [row["step"] for row in spilled]
    assert steps[0] == int(match["epoch"]) and steps == list(range(steps[0], steps[0] + len(steps)))
    assert {row["run_id"] for row in spilled} == {run_id} and set(spilled[0]["metrics"]) >= {"loss", "val_loss"}
    job = json.loads((tmp_path / "out" / "job_result.json").read_text())
    assert job["status"] == "FAILED" and job["run_id"] == run_id
    assert took < 60, f"kept training {took:.0f} s after the store went away"


@pytest.mark.slow  # the store's own busy timeout is 20 s, so a lock must outlast it to reach the retry
def test_store_locked_for_half_a_minute_loses_no_epoch(tmp_path, higgs_file):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    proc = _start_training(tmp_path, higgs_file, "train.epochs=1500")
    try:
        run_id = _wait_for_epochs(proc, uri, 3)
        with sqlite3.connect(tmp_path / "store" / "mlflow.db", isolation_level=None) as holder:
            holder.execute("BEGIN EXCLUSIVE")  # another process's long write transaction
            time.sleep(30)
            holder.execute("COMMIT")
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    job_log = (tmp_path / "out" / "train.log").read_text()
    assert "retrying for up to" in job_log and "takes writes again" in job_log and "Traceback" not in stderr
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == list(range(1500))
    assert not (tmp_path / "out" / "unwritten_metrics.jsonl").exists()


def test_a_changed_training_value_is_caught_by_the_data_digest(make_cfg, tracking_uri, tmp_path, higgs_file, capsys):
    """MLflow's dataset digest reads only the first 10,000 values (~357 rows); the run's own digest reads all."""
    from src.experiments.train import train
    from src.experiments.reproduce import main

    lines = gzip.open(higgs_file, "rt").read().splitlines(keepends=True)[:2600]
    data = tmp_path / "data.csv"
    data.write_text("".join(lines))
    original = train(make_cfg(f"data.path={data}", "data.n_validation=500", "data.n_train=2000", "train.epochs=1"))
    fields = lines[1000].split(",")  # training row 500
    fields[3] = f"{float(fields[3]) + 1.0:.18e}"
    lines[1000] = ",".join(fields)
    data.write_text("".join(lines))
    capsys.readouterr()
    assert main([original.run_id, "--tracking-uri", tracking_uri, "--quiet"]) == 1
    assert "data digest differs" in capsys.readouterr().err


def test_deleted_experiment_and_moved_artifact_location_are_said_in_one_line(tracking_uri, tmp_path, caplog):
    from src.tracking.store import experiment_id

    ensure_store(tracking_uri)
    first = experiment_id(tracking_uri, "exp", str(tmp_path / "a"))
    with caplog.at_level("WARNING", logger="src.tracking.store"):
        assert experiment_id(tracking_uri, "exp", str(tmp_path / "b")) == first
    assert "mlflow.artifact_location=" in caplog.text and "is not used" in caplog.text and str(tmp_path / "a") in caplog.text
    MlflowClient(tracking_uri).delete_experiment(first)
    with pytest.raises(TrackingError, match=rf"mlflow.experiment_name=exp: the experiment is deleted .*restore --experiment-id {first}"):
        experiment_id(tracking_uri, "exp", None)
    with pytest.raises(TrackingError, match="mlflow.experiment_name: must not be empty"):
        experiment_id(tracking_uri, " ", None)


@pytest.mark.slow  # TensorFlow takes ~10 s to give up on 40 GB
def test_a_model_too_large_for_memory_is_a_config_error(make_cfg):
    from src.core.errors import ConfigError
    from src.training.models import build_model

    cfg = make_cfg("model.hidden_units=[100000,100000]")
    with pytest.raises(ConfigError, match=r"^model.hidden_units=\[100000, 100000\]: the model's weights do not fit"):
        build_model(cfg.model, cfg.reg, cfg.data.n_features)


def test_reproduce_refuses_a_broken_config_artifact_in_one_line(make_cfg, tracking_uri, capsys):
    from src.experiments.train import train
    from src.experiments.reproduce import main

    run = train(make_cfg("train.epochs=1"))
    MlflowClient(tracking_uri).log_text(run.run_id, "model: [unclosed\n  reg: {", "config.yaml")
    capsys.readouterr()
    assert main([run.run_id, "--tracking-uri", tracking_uri]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: run {run.run_id}: its config.yaml is not valid YAML")


@pytest.mark.slow  # a second process trained, killed, then a run after it
def test_a_run_killed_with_sigkill_is_marked_dead_by_the_next_run(tmp_path, higgs_file, make_cfg):
    from src.experiments.train import train

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    proc = _start_training(tmp_path, higgs_file)
    try:
        killed = _wait_for_epochs(proc, uri, 2)
    finally:
        proc.kill()  # SIGKILL: nothing in the process can end its run
        proc.wait()
    assert MlflowClient(uri).get_run(killed).info.status == "RUNNING"
    store = [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/store/artifacts"]
    assert train(make_cfg("train.epochs=1", *store)).status == "FINISHED"
    dead = MlflowClient(uri).get_run(killed)
    assert dead.info.status == "FAILED" and f"process {proc.pid}" in dead.data.tags["dead"]


def test_compare_says_when_a_group_mixes_runs_of_different_lengths():
    from src.analysis.report import RunData, format_table, group_runs, table_rows

    def run(run_id, epochs):
        history = {k: [0.5] * epochs for k in ("binary_crossentropy", "val_binary_crossentropy", "val_accuracy")}
        return RunData(run_id, "fit-none-tiny", {"seed": run_id, "loop.name": "fit"}, history)

    table = format_table(table_rows(group_runs([run("0", 7), run("1", 40)])))
    assert "fit-none-tiny*" in table and "different numbers of epochs" in table
    assert "*" not in format_table(table_rows(group_runs([run("0", 40), run("1", 40)])))


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["sigterm-to-sweep", "sigterm-to-process-group"])
def test_sigterm_to_a_parallel_sweep_ends_every_run_killed_and_leaves_no_worker(tmp_path, higgs_file, to_group):
    import os
    import signal

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", "model=tiny", "train.epochs=100000",
            f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000", "quiet=true",
            f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = subprocess.Popen(cli(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len([r for r in all_runs(uri) if r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM) if to_group else proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "worker processes outlived their sweep"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    statuses = sorted((r.data.tags.get("sweep") == "true", r.info.status) for r in all_runs(uri))
    assert statuses == [(False, "KILLED"), (False, "KILLED"), (True, "KILLED")]
    assert "2 KILLED" in stderr


@pytest.mark.slow
def test_a_diverging_job_under_joblib_is_data_and_the_others_finish(tmp_path, higgs_file):
    """Its exception once could not cross the process boundary, crashing the pool and every other job."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.learning_rate=1e30,0.001,0.002", "model=tiny",
        "train.epochs=2", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000", "quiet=true",
        f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art", f"hydra.sweep.dir={tmp_path}/sweep",
    ), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = {r.data.params.get("train.learning_rate"): r for r in all_runs(uri) if r.data.tags.get("sweep") != "true"}
    # a finite rate that diverges in training (an infinite one is refused before any run exists)
    assert runs["1e+30"].info.status == "FAILED" and "diverged" in runs["1e+30"].data.tags["error"]
    assert runs["0.001"].info.status == runs["0.002"].info.status == "FINISHED"
    assert "1 FAILED, 2 FINISHED" in proc.stderr


@pytest.mark.slow  # a real server's start-up is most of it
def test_a_server_that_dies_mid_run_stops_the_run_in_bounded_time_and_sigterm_is_honoured(tmp_path, higgs_file, mlflow_server):
    """Once this job ran 9 minutes after its server died and ignored SIGTERM for 4."""
    import signal

    args = ["model=tiny", "train.epochs=100000", f"data.path={higgs_file}", "data.n_validation=500",
            "data.n_train=1000", "quiet=true", f"mlflow.tracking_uri={mlflow_server.url}", f"hydra.run.dir={tmp_path}/out"]
    # retry budget 5 s: the job stops by itself
    proc = subprocess.Popen(cli(*args, "mlflow.retry_seconds=5"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    second = None
    try:
        run_id = _wait_for_epochs(proc, mlflow_server.url, 2)
        # a second job with the default budget (120 s), to be stopped by SIGTERM while it retries
        second = subprocess.Popen(cli(*args[:-1], f"hydra.run.dir={tmp_path}/out2"), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(all_runs(mlflow_server.url)) < 2:
            assert second.poll() is None and time.monotonic() < deadline, second.communicate()[1][-3000:]
            time.sleep(0.5)
        time.sleep(3)
        mlflow_server.stop()
        stopped = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        by_itself = time.monotonic() - stopped
        time.sleep(max(0.0, 8 - by_itself))  # the second job is retrying by now
        second.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, second_stderr = second.communicate(timeout=120)
        after_sigterm = time.monotonic() - signalled
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "stopped taking writes" in line]
    assert "no answer from the server" in line and run_id in line and by_itself < 60, (line, by_itself)
    assert (tmp_path / "out" / "unwritten_metrics.jsonl").exists()
    assert second.returncode == 130 and "interrupted" in second_stderr and after_sigterm < 30, after_sigterm


def test_a_reused_sweep_folder_counts_only_the_current_sweeps_jobs(tmp_path):
    """`resume=true` into a killed sweep's folder once marked the new parent KILLED from the old job files."""
    from src.experiments.sweep import JobResult

    for job, parent, status in ((0, "old", "RUNNING"), (1, "old", "KILLED"), (0, "new", "FINISHED")):
        (tmp_path / f"{parent}{job}").mkdir()
        JobResult(job=job, run_name="fit-none-tiny", parent_run_id=parent, status=status).write(tmp_path / f"{parent}{job}")
    (tmp_path / "legacy").mkdir()  # a job file written before job results named their sweep
    (tmp_path / "legacy" / "job_result.json").write_text(json.dumps({"job": 3, "run_name": "x", "status": "RUNNING"}))
    assert [(r.job, r.status) for r in JobResult.read_all(tmp_path, "new")] == [(0, "FINISHED")]


def test_an_artifact_location_that_cannot_be_written_is_one_line_and_the_run_failed(make_cfg, tracking_uri, tmp_path):
    from src.experiments.train import train

    (tmp_path / "a_file").write_text("not a folder\n")
    cfg = make_cfg(f"mlflow.artifact_location={tmp_path}/a_file/artifacts", "mlflow.experiment_name=unwritable")
    with pytest.raises(TrackingError, match=r"^run \w+: cannot log its config, params and datasets to sqlite:") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    [run] = MlflowClient(tracking_uri).search_runs(
        [MlflowClient(tracking_uri).get_experiment_by_name("unwritable").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow  # a whole CLI sweep with its own store (~10 s)
def test_no_password_in_anything_a_sweep_writes_or_prints(tmp_path, higgs_file):
    """A password in any override (here a data URL the run does not need) is masked everywhere."""
    secret = "hunter2-" + "x" * 8
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = subprocess.run(cli(
        "-m", "seed=0,1", "model=tiny", "train.epochs=1", f"data.path={higgs_file}", "data.n_validation=500",
        "data.n_train=1000", f"data.url=http://bob:{secret}@127.0.0.1:9/HIGGS.csv.gz", "quiet=false",
        f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert secret not in console and ":***@127.0.0.1" in console  # Hydra's listing of the jobs, masked
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks  # the store, artifacts, job files, Hydra's .hydra/ and multirun.yaml, logs


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs, mounted for the test and unmounted after it (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill: {mounted.stderr.strip() or 'mount failed'}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_under_the_store_stops_the_run_and_keeps_the_metrics(tmp_path, higgs_file, small_disk):
    """Once training went on for 373 epochs writing nothing, with 32,000 lines of tracebacks."""
    args = ["model=tiny", "train.epochs=100000", f"data.path={higgs_file}", "data.n_validation=500",
            "data.n_train=1000", "quiet=true", f"mlflow.tracking_uri=sqlite:///{small_disk}/mlflow.db",
            f"mlflow.artifact_location={tmp_path}/artifacts", f"hydra.run.dir={tmp_path}/out"]
    proc = subprocess.Popen(cli(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_for_epochs(proc, f"sqlite:///{small_disk}/mlflow.db", 3)
        subprocess.run(["dd", "if=/dev/zero", f"of={small_disk}/filler", "bs=64k"], capture_output=True)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and stderr.count("Traceback") == 0, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "stopped taking writes" in line]
    assert "disk is full" in line and run_id in line, line
    assert (tmp_path / "out" / "unwritten_metrics.jsonl").read_text().count("\n") >= 1


def test_a_server_that_refuses_or_is_not_mlflow_is_one_line_and_credentials_go_as_basic_auth():
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["authorization"] = self.headers.get("Authorization")
            self.send_response(403 if self.path.startswith("/forbidden") else 200)
            self.end_headers()
            self.wfile.write(b"OK" if self.server.is_mlflow else b"<html>a web page</html>")

        def log_message(self, *args):
            pass

    for is_mlflow in (True, False):
        server = HTTPServer(("127.0.0.1", 0), Handler)
        server.is_mlflow = is_mlflow
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            with pytest.raises(TrackingError, match=r"^mlflow.tracking_uri: no MLflow server at .*/forbidden \(Forbidden\)"):
                ensure_store(f"{base}/forbidden")
            credentialed = base.replace("http://", "http://bob:pa55word@")
            if is_mlflow:
                ensure_store(credentialed)
                assert base64.b64decode(seen["authorization"].split()[1]) == b"bob:pa55word"
            else:
                with pytest.raises(TrackingError, match=r"answers, but not as an MLflow server does") as err:
                    ensure_store(credentialed)
                assert "pa55word" not in str(err.value) and "bob:***@" in str(err.value)
        finally:
            server.shutdown()


@pytest.mark.slow  # a real server's start-up is most of it
def test_a_server_lost_during_the_final_writes_is_one_line_naming_the_store(tmp_path, higgs_file, mlflow_server):
    """Every epoch in the store, then the server gone while the run's tags, models and figures are written: once
    five chained tracebacks (in the job's log) and a line that named no store."""
    epochs = 30
    args = ["model=tiny", f"train.epochs={epochs}", f"data.path={higgs_file}", "data.n_validation=500",
            "data.n_train=1000", "quiet=true", f"mlflow.tracking_uri={mlflow_server.url}", "mlflow.retry_seconds=5",
            f"hydra.run.dir={tmp_path}/out"]
    proc = subprocess.Popen(cli(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = _wait_for_epochs(proc, mlflow_server.url, epochs)
        mlflow_server.stop()
        stopped = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and time.monotonic() - stopped < 60
    line = (f"mlflow.tracking_uri={mlflow_server.url}: the store stopped answering while run {run_id}'s results were "
            f"written (no answer from the server: [Errno 111] Connection refused); the run is marked FAILED by the "
            f"next run of the experiment if the store cannot be told now")
    # the lines that name the store (Hydra's own "Error executing job with overrides" echoes the command line)
    about_the_store = [x for x in stderr.splitlines() if mlflow_server.url in x and "Error executing job" not in x]
    assert about_the_store == [line] and "Traceback" not in stderr and "WARNING mlflow" not in stderr, stderr[-3000:]
    assert "Traceback" not in (tmp_path / "out" / "train.log").read_text()
    assert json.loads((tmp_path / "out" / "job_result.json").read_text())["error"] == line
