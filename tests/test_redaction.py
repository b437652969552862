"""Secrets out of everything written or printed: a URL's password is masked whole, whatever it holds."""

import pytest

from src.core.redaction import redact


@pytest.mark.parametrize("url, masked", [
    ("http://alice:s3cret@host:5000/x", "http://alice:***@host:5000/x"),
    ("http://alice:p@ssW0rdZ@host", "http://alice:***@host"),  # an @ in the password: to the authority's last @
    ("http://alice:p:a@s@s@host/path?q=1", "http://alice:***@host/path?q=1"),
    ("http://:only-a-secret@host", "http://:***@host"),  # an empty user
    ("postgresql+psycopg2://mlflow:pw@127.0.0.1:5433/mlflow", "postgresql+psycopg2://mlflow:***@127.0.0.1:5433/mlflow"),
    ("http://host:5000/a@b", "http://host:5000/a@b"),  # an @ in the path is no user-info
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_a_urls_password_is_masked_up_to_the_last_at_of_its_authority(url, masked):
    assert redact(f"tracking {url} and http://bob:x@@other/ too") == f"tracking {masked} and http://bob:***@other/ too"


def test_src_data_masks_a_password_in_its_output(tmp_path):
    from tests.helpers import run_module

    proc = run_module("src.data", ["http://alice:p@ssW0rdZ@127.0.0.1:9/x.csv.gz", "--cache-dir", str(tmp_path),
                                   "--rows", "10", "--quiet"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "alice:***@" in proc.stderr
    assert "ssW0rdZ" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_secret_reached_through_an_interpolation_in_a_name_is_written_nowhere(tmp_path, higgs_file):
    """`${oc.env:AWS_SECRET_ACCESS_KEY}` in the experiment's and the model's names: a real run, a real variable; the
    secret is in no output, no file of the run folder and no byte of the store or the artifacts."""
    import json

    from mlflow import MlflowClient

    from tests.helpers import run_module

    secret = "Zq7SECRETinterp0lated"
    store = tmp_path / "mlruns"
    args = [f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_location={store}/artifacts",
            f"data.path={higgs_file}", f"data.cache_dir={tmp_path}/cache", "data.n_validation=100", "data.n_train=500",
            "train.batch_size=100", "train.epochs=1", "model=tiny", "quiet=true", f"hydra.run.dir={tmp_path}/out",
            "mlflow.experiment_name=exp-${oc.env:AWS_SECRET_ACCESS_KEY}", "model.name=m-${oc.env:AWS_SECRET_ACCESS_KEY}"]
    proc = run_module("src.train", args, cwd=tmp_path, env={"AWS_SECRET_ACCESS_KEY": secret})
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    result = json.loads((tmp_path / "out" / "job_result.json").read_text())
    assert result["run_name"] == "fit-none-m-***"
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiment.name == "exp-***"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "fit-none-m-***" and run.info.status == "FINISHED"
