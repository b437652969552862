"""Launchers beyond one machine: the guard rails a remote launch passes before any job starts, SLURM's defaults,
and (slow) a real `submitit_local` sweep with a cap on the jobs running at once."""

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from src.config import CONFIG_DIR
from src.errors import ConfigError
from src.sweep import check_remote_launch
from tests.helpers import error_lines, run_module, split_runs

SERVER = "mlflow.tracking_uri=http://127.0.0.1:5000"
ABSOLUTE = ["data.path=/data/HIGGS.csv.gz", "hydra.sweep.dir=/shared/multirun/x"]


def _composed(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("overrides, message", [
    ([], r"^mlflow.tracking_uri=sqlite:///\S+: hydra/launcher=SlurmLauncher runs jobs on other machines, which "
         r"cannot reach this machine's store; start a tracking server \(`make server`\)"),
    ([SERVER, "data.path=HIGGS.csv.gz", "hydra.sweep.dir=/x"], r"^data.path=HIGGS.csv.gz: .* give an absolute path"),
    ([SERVER, "data.path=/d", "hydra.sweep.dir=multirun/x"], r"^hydra.sweep.dir=multirun/x: .* give an absolute path"),
    ([SERVER, *ABSOLUTE, "hydra/sweeper=optuna"], r"^hydra.sweeper.storage=sqlite:///\S+optuna.db: .* cannot share "
                                                  r"a SQLite file; use a database server"),
])
def test_a_remote_launch_that_could_not_reach_the_store_or_the_files_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_remote_launch(_composed("hydra/launcher=slurm", *overrides))


def test_a_remote_launch_with_a_server_and_absolute_paths_passes_and_local_launchers_are_not_checked():
    check_remote_launch(_composed("hydra/launcher=slurm", SERVER, *ABSOLUTE))
    check_remote_launch(_composed("hydra/launcher=slurm", SERVER, *ABSOLUTE, "hydra/sweeper=optuna",
                                  "hydra.sweeper.storage=postgresql+psycopg2://u@db/optuna"))
    for launcher in ("basic", "joblib", "submitit_local"):  # jobs on this machine reach its files and store
        check_remote_launch(_composed(f"hydra/launcher={launcher}", "data.path=relative.csv.gz"))


def test_the_slurm_launcher_has_the_projects_defaults_over_submitits():
    launcher = _composed("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.max_num_timeout) == (240, 4, 3)


@pytest.mark.slow
def test_a_refused_remote_launch_is_one_line_and_creates_nothing(tmp_path):
    proc = run_module("src.train", ["-m", "hydra/launcher=slurm", "reg=none,l2", f"hydra.sweep.dir={tmp_path}/sweep",
                                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path)
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith("mlflow.tracking_uri=sqlite:///") and "`make server`" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_submitit_local_sweep_runs_every_job_in_its_own_process_at_most_two_at_once(tmp_path, higgs_file):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_module("src.train", [
        "-m", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2", "reg=none,l2", "loop=fit,tape",
        "model=tiny", "train.epochs=2", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
        "quiet=true", "mlflow.log_models=false", f"hydra.sweep.dir={tmp_path}/sweep", f"mlflow.tracking_uri={uri}",
        f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [parent], children = split_runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["pid"] for r in children}) == 4  # a fresh process per job: no state shared
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    for start, _ in spans:  # never more than two running at once
        assert sum(s <= start < e for s, e in spans) <= 2
    assert "4 FINISHED" in proc.stderr
    client = MlflowClient(uri)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 2 for r in children)
