"""MLflow's UI in a real headless Chromium, as a user opens it with `make ui`: a printed run link opens the Model
training pages in a fresh browser profile; the runs page lists the sweep parent with its children, a child's page shows
its curves and logged models, the parent's description names the sweep; a continued search's parent counts every trial;
an evaluation links the run it scored; a reproduction says it is one. It also takes the docs' screenshots
(tests/screenshots/, copied into docs/img/)."""

import os
import re
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
    """One store holding what a user makes first: a 2-job sweep (models logged), a 2-trial search continued by one
    more trial, an evaluation of a child and its reproduction; and `mlflow ui` over it started as `make ui` starts it.
    (URL, store, the lines the sweep's jobs printed, with their run links)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    port = free_port()
    small = ["model=tiny", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=1000",
             "quiet=true", f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art",
             f"mlflow.ui_url=http://127.0.0.1:{port}"]
    sweep = run_module("src.train", ["-m", "reg=none,l2", "train.epochs=3", *small, f"hydra.sweep.dir={tmp_path}/sweep"],
                       cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    for trials in (2, 1):  # the same study again: the continued search's parent counts all three trials
        search = run_module("src.train", [
            "-m", "hydra/sweeper=optuna", "reg=l2", "reg.l2=tag(log, interval(1e-5, 1e-2))", *small,
            "train.epochs=2", "mlflow.log_models=false", "mlflow.experiment_name=search", "hydra.sweeper.study_name=ui",
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
            f"hydra.sweep.dir={tmp_path}/search{trials}"], cwd=tmp_path)
        assert search.returncode == 0, search.stderr[-3000:]
    child = _sweep_children(uri)[0]
    for command, args in (("src.evaluate", []), ("src.reproduce", ["--quiet"])):
        done = run_module(command, [child.info.run_id, "--tracking-uri", uri, *args], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
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
        # the jobs' own lines (quiet=true keeps them off the terminal, not out of the job's log)
        yield url, uri, "".join(log.read_text() for log in sorted((tmp_path / "sweep").glob("*/train.log")))
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


def _sweep_children(uri: str):
    """The sweep's children, in creation order (the experiment also holds an evaluation and a reproduction)."""
    [parent], _ = split_runs(uri)
    client = MlflowClient(uri)
    return sorted(client.search_runs([parent.info.experiment_id],
                                     filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"),
                  key=lambda r: r.info.start_time)


def _fresh_profile_mode(playwright, link: str, profile) -> str:
    """Which of MLflow 3's modes ("GenAI", "Model training") `link` opens in a browser profile never used before:
    the experiment's sidebar tells them apart (GenAI's lists Sessions and Judges; Model training's the registry)."""
    context = playwright.chromium.launch_persistent_context(str(profile), executable_path=_chromium(),
                                                            args=CHROMIUM_FLAGS)
    try:
        page = context.new_page()
        page.goto(link)
        page.get_by_text("Overview").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # the sidebar follows the mode once the experiment has loaded
        sidebar = page.inner_text("aside").splitlines()
        if "Model registry" in sidebar and "Sessions" not in sidebar:
            return "Model training"
        return "GenAI" if "Sessions" in sidebar and "Judges" in sidebar else f"unknown: {sidebar}"
    finally:
        context.close()


def _text(page, wanted: str) -> str:
    """The page's text once `wanted` shows in it (MLflow's pages draw after their data arrives)."""
    page.get_by_text(wanted).first.wait_for(timeout=60_000)
    return page.inner_text("body")


def test_the_ui_lists_the_sweep_shows_curves_and_the_model_and_describes_the_parent(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    url, uri, printed = ui
    client = MlflowClient(uri)
    [parent], _ = split_runs(uri)
    experiment = parent.info.experiment_id
    children = _sweep_children(uri)
    child = children[0]
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        # a printed link, opened in a fresh profile (as a new user's browser): the Model training run page
        link = re.search(rf"http://127\.0\.0\.1:\d+/#/experiments/{experiment}/runs/{child.info.run_id}\S*", printed)
        assert link and link.group(0).startswith(url) and link.group(0).endswith("?workflowType=machine_learning")
        for suffix, mode in (("?workflowType=machine_learning", "Model training"), ("", "GenAI")):
            assert _fresh_profile_mode(playwright, link.group(0).split("?")[0] + suffix, tmp_path / mode) == mode
        # the link as printed, in yet another fresh profile: the run's own page, its dataset showing the whole digest
        fresh = playwright.chromium.launch_persistent_context(
            str(tmp_path / "fresh-profile"), executable_path=_chromium(), args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 900})
        page = fresh.new_page()
        page.goto(link.group(0))
        body = _text(page, "Model metrics")
        assert child.info.run_name in body and f"higgs-train ({child.data.tags['data_sha256'][:16]})" in body
        assert all(re.search(rf"\b{key}\s*:\s*{value}\b", body) for key, value in (("loop", "fit"), ("reg", "none")))  # tags
        fresh.close()

        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{url}/#/experiments/{experiment}/runs?workflowType=machine_learning")  # as the printed links
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
        close = page.get_by_role("button", name="Close")
        if close.count():
            close.first.click()  # MLflow's assistant panel, open on a fresh browser
        name_cell = page.locator('[role="gridcell"]', has_text=parent.info.run_name).first
        name_cell.locator("button").first.click()  # expand the parent: its children nest below it
        for run in children:
            page.get_by_text(run.info.run_name).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "runs.png"))

        page.goto(f"{url}/#/experiments/{experiment}/runs/{child.info.run_id}?workflowType=machine_learning")
        body = _text(page, f"{child.info.run_name}-best")  # "Logged models": named after the run
        assert "Parent run" in body or parent.info.run_name in body
        page.screenshot(path=str(SCREENSHOTS / "child_overview.png"))

        page.get_by_text("Model metrics", exact=True).first.click()
        page.get_by_placeholder("Search metric charts").fill("val_binary_crossentropy")  # charts below the fold
        page.get_by_text("val_binary_crossentropy", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # the charts draw after their data arrives
        page.screenshot(path=str(SCREENSHOTS / "child_metrics.png"))

        page.goto(f"{url}/#/experiments/{experiment}/runs/{parent.info.run_id}?workflowType=machine_learning")
        body = _text(page, "python -m src.train -m")
        assert f"{parent.info.run_name}: 2 runs, nested below." in body and "reg: none, l2" in body
        assert "best_val_binary_crossentropy" in body
        page.screenshot(path=str(SCREENSHOTS / "parent.png"))

        # the continued search's parent: its description counts all three trials, and names the best so far
        search_id = client.get_experiment_by_name("search").experiment_id
        [search] = client.search_runs([search_id], filter_string="tags.sweep = 'true'")
        page.goto(f"{url}/#/experiments/{search_id}/runs/{search.info.run_id}?workflowType=machine_learning")
        body = _text(page, "Best trial so far")
        assert search.info.run_name.startswith("search 3×") and f"{search.info.run_name}: 3 runs, nested below" in body
        page.screenshot(path=str(SCREENSHOTS / "search_parent.png"))

        # the evaluation links the run it scored; the reproduction says so in its name and description
        [evaluation] = client.search_runs([experiment], filter_string=f"tags.evaluated_run_id = '{child.info.run_id}'")
        page.goto(f"{url}/#/experiments/{experiment}/runs/{evaluation.info.run_id}?workflowType=machine_learning")
        _text(page, "Evaluation of the logged model")
        page.screenshot(path=str(SCREENSHOTS / "evaluation.png"))
        # its description's link to the scored run (MLflow opens a description's links in a new tab: followed here)
        href = page.locator("a", has_text=child.info.run_name).first.get_attribute("href")
        assert href.endswith(f"#/experiments/{experiment}/runs/{child.info.run_id}"), href
        page.goto(page.evaluate("h => new URL(h, location.href).href", href))
        _text(page, f"{child.info.run_name}-best")
        [copy] = client.search_runs([experiment], filter_string=f"tags.reproduced_from = '{child.info.run_id}'")
        notes = [m.tags["mlflow.note.content"] for m in client.search_logged_models([experiment])
                 if m.source_run_id == copy.info.run_id]  # its models link it by its new name
        assert len(notes) == 2 and all(
            f"[{child.info.run_name} (reproduction)](#/experiments/{experiment}/runs/{copy.info.run_id})" in n
            for n in notes)
        page.goto(f"{url}/#/experiments/{experiment}/runs/{copy.info.run_id}?workflowType=machine_learning")
        body = _text(page, f"{child.info.run_name} (reproduction)")
        assert f"Reproduction of {child.info.run_name}: identical" in body
        page.screenshot(path=str(SCREENSHOTS / "reproduction.png"))
        browser.close()
    assert client.get_run(child.info.run_id).info.status == "FINISHED"
    assert all((SCREENSHOTS / f"{name}.png").stat().st_size > 10_000
               for name in ("runs", "child_metrics", "child_overview", "parent", "search_parent", "reproduction"))
