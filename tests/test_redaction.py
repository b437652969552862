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
