"""MLflow's UI in a real headless Chromium, as a user opens it with `make ui`: the runs page lists the sweep parent
with its children, a child's page shows its curves and logged model, the parent's description names the sweep.
It also takes the README's screenshots (tests/screenshots/)."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from src.core.schema import PROJECT_ROOT
from tests.helpers import free_port, run_module, split_runs

pytestmark = pytest.mark.slow

SCREENSHOTS = PROJECT_ROOT / "tests" / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # no calls to the closed network at start


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium here: install it with `apt-get install chromium`")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")
    return found


@pytest.fixture
def ui(tmp_path, higgs_file):
    """A 2-job sweep (models logged) in its own store, and `mlflow ui` over it started as `make ui` starts it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_module("src.train", [
        "-m", "reg=none,l2", "model=tiny", "train.epochs=3", f"data.path={higgs_file}", "data.n_validation=500",
        "data.n_train=2000", "quiet=true", f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = free_port()
    make = subprocess.run(["make", "-n", "ui", f"PORT={port}", f"STORE={uri}", f"PY={sys.executable}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    started = time.monotonic()
    server = subprocess.Popen(make.stdout.strip(), shell=True, cwd=PROJECT_ROOT, start_new_session=True,
                              stdout=open(tmp_path / "ui.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() - started < 120, (tmp_path / "ui.log").read_text()
                time.sleep(0.2)
        print(f"make ui answered in {time.monotonic() - started:.1f} s")  # the README's figure
        yield url, uri
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in the terminal running `make ui`
        stopping, left = time.monotonic(), ["?"]
        while left and time.monotonic() - stopping < 30:
            time.sleep(0.5)
            server.poll()  # reap the shell, as the terminal would
            left = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, text=True).stdout.split()
        print(f"make ui stopped in {time.monotonic() - stopping:.1f} s")
        if left:
            os.killpg(server.pid, signal.SIGKILL)
        assert not left, f"processes left behind by make ui 30 s after Ctrl-C: {left}"


def test_the_ui_lists_the_sweep_shows_curves_and_the_model_and_describes_the_parent(ui):
    from playwright.sync_api import sync_playwright

    url, uri = ui
    client = MlflowClient(uri)
    [parent], children = split_runs(uri)
    experiment = parent.info.experiment_id
    child = children[0]
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})

        page.goto(f"{url}/#/experiments/{experiment}/runs")  # the model-training runs page every link points at
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
        close = page.get_by_role("button", name="Close")
        if close.count():
            close.first.click()  # MLflow's assistant panel, open on a fresh browser
        name_cell = page.locator('[role="gridcell"]', has_text=parent.info.run_name).first
        name_cell.locator("button").first.click()  # expand the parent: its children nest below it
        for run in children:
            page.get_by_text(run.info.run_name).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "runs.png"))

        page.goto(f"{url}/#/experiments/{experiment}/runs/{child.info.run_id}")
        page.get_by_text("best_model", exact=True).first.wait_for(timeout=60_000)  # in "Logged models"
        assert page.get_by_text("model", exact=True).count()  # the final model beside the best one
        page.screenshot(path=str(SCREENSHOTS / "child_overview.png"))

        page.get_by_text("Model metrics", exact=True).first.click()
        page.get_by_placeholder("Search metric charts").fill("val_binary_crossentropy")  # charts below the fold
        page.get_by_text("val_binary_crossentropy", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # the charts draw after their data arrives
        page.screenshot(path=str(SCREENSHOTS / "child_metrics.png"))

        page.goto(f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}")
        page.get_by_text("python -m src.train -m").first.wait_for(timeout=60_000)
        body = page.inner_text("body")
        assert f"{parent.info.run_name}: 2 runs, nested below." in body and "reg: none, l2" in body
        assert "best_val_binary_crossentropy" in body
        page.screenshot(path=str(SCREENSHOTS / "parent.png"))
        browser.close()
    assert client.get_run(child.info.run_id).info.status == "FINISHED"
    assert all((SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
               for name in ("runs", "child_metrics", "child_overview", "parent"))
