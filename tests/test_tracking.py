"""What a run shows in MLflow besides its curves: the same params for every loop, tags the UI reads, system metrics."""

import getpass

import pytest
import yaml
from mlflow import MlflowClient

from src.core.config import group_options
from src.experiments.train import train
from src.tracking.provenance import flat_params
from src.tracking.run import TrackedRun
from src.tracking.writer import MetricWriter


def test_every_loop_logs_the_same_param_keys_and_fit_says_what_it_does(make_cfg):
    params = {loop: flat_params(make_cfg(f"loop={loop}")) for loop in group_options("loop")}
    keys = {loop: set(p) for loop, p in params.items()}
    assert all(k == keys["tape"] for k in keys.values()), keys
    # fit always minimizes the layers' penalties and always runs compiled
    assert (params["fit"]["loop.include_reg_loss"], params["fit"]["loop.compile"]) == ("True", "True")
    assert flat_params(make_cfg("loop=tape", "loop.include_reg_loss=false"))["loop.include_reg_loss"] == "False"


def test_a_run_shows_its_source_user_and_readable_tags_and_samples_the_machine(make_cfg, tracking_uri, tmp_path):
    escaped = f"mlflow.artifact_location={tmp_path}/mlruns/artifacts".replace(":", "\\:")  # as a sweep's job gets it
    result = train(make_cfg("train.epochs=3", "mlflow.system_metrics_seconds=0.1"), overrides=[escaped, "seed=0"])
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    tags = run.data.tags
    assert (tags["mlflow.source.name"], tags["mlflow.source.type"]) == ("src.train", "LOCAL")
    assert tags["mlflow.user"] == getpass.getuser() and len(tags["mlflow.source.git.commit"]) == 40
    # the options and the task as tags too, so the UI filters by them (tags.reg = 'none')
    assert {k: tags[k] for k in ("loop", "reg", "model", "data", "task")} == {
        k: run.data.params[p] for k, p in (("loop", "loop.name"), ("reg", "reg.name"), ("model", "model.name"),
                                           ("data", "data.name"), ("task", "task"))}
    assert (tags["loop"], tags["task"]) == ("fit", "binary")
    assert tags["strategy"] == "default"
    experiment = client.get_experiment(run.info.experiment_id)  # it says what it holds
    assert experiment.tags["project"] == "overfit-lab" and "python -m src.compare" in experiment.tags["mlflow.note.content"]
    # each epoch's wall time sits with the machine's metrics, and only there
    timing = client.get_metric_history(result.run_id, "system/epoch_seconds")
    assert sorted(m.step for m in timing) == [0, 1, 2] and "epoch_seconds" not in run.data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    overrides = yaml.safe_load(open(client.download_artifacts(result.run_id, "overrides.yaml", str(tmp_path))))
    assert overrides == [f"mlflow.artifact_location={tmp_path}/mlruns/artifacts", "seed=0"]

    quiet = train(make_cfg("train.epochs=2", "mlflow.system_metrics=false", "mlflow.system_metrics_seconds=0.1"))
    assert [k for k in client.get_run(quiet.run_id).data.metrics if k.startswith("system/")] == ["system/epoch_seconds"]


def test_resume_counts_epochs_from_the_epoch_metrics_not_the_machine_samples(tracking_uri, tmp_path):
    """System metrics are logged once per sample (steps 0, 1, 2...): a resumed run must not take them for epochs."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", 1.0, 0, epoch) for epoch in range(2)]
                     + [Metric("system/cpu_utilization_percentage", 50.0, 0, sample) for sample in range(30)])
    writer = MetricWriter(client, run_id, tracking_uri, retry_seconds=0, spill_dir=tmp_path)
    run = TrackedRun(tracking_uri, run_id, "0", "resumed", writer, client=client)
    run.continue_history({"loss": [1.0, 1.0, 0.5, 0.25], "epoch_seconds": [1.0] * 4})
    writer.flush()
    writer.abandon()
    assert [m.step for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)] == [0, 1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(run_id, "system/epoch_seconds")) == [2, 3]


class _RacingStore:
    """A store as a parallel job meets it: its first insert of a shared dataset loses the race to another job's."""

    def __init__(self, first_answer: Exception):
        self.first_answer, self.calls = first_answer, 0

    def log_inputs(self, run_id, datasets):
        self.calls += 1
        if self.calls == 1:
            raise self.first_answer


@pytest.mark.parametrize("message", [
    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest",
    # seen in CI: eight jobs through a server on PostgreSQL
    'BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
    "(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1-higgs-train' for key 'datasets.PRIMARY'\")",
])
def test_a_dataset_that_parallel_jobs_insert_at_once_is_linked_by_a_retry(message):
    import mlflow.data
    import numpy as np
    from mlflow.exceptions import MlflowException

    from src.tracking.datasets import log_datasets

    data = {"training": mlflow.data.from_numpy(np.zeros((4, 28), np.float32), targets=np.zeros((4, 1)), name="t")}
    store = _RacingStore(MlflowException(message))
    log_datasets(store, "run", data)
    assert store.calls == 2  # the retry finds the other job's row and only links it

    other = _RacingStore(MlflowException("BAD_REQUEST: (psycopg2.errors.NotNullViolation) null value"))
    with pytest.raises(MlflowException, match="NotNullViolation"):
        log_datasets(other, "run", data)
    assert other.calls == 1  # any other failure is the store's answer, not a race


def test_printed_links_open_the_model_training_pages_where_the_ui_runs():
    """MLflow 3 opens its GenAI pages for a bare run link in a fresh browser; the workflow type picks Model training."""
    local = TrackedRun("sqlite:////x/mlflow.db", "abc", "1", "fit-none-large", writer=None, client=object(),
                       ui_url="http://127.0.0.1:5055/")
    assert local.ui_hint() == ("MLflow run ID abc: open it with `make ui`, then "
                               "http://127.0.0.1:5055/#/experiments/1/runs/abc?workflowType=machine_learning")
    served = TrackedRun("http://alice:pw@ml.example:8080/mlflow", "abc", "1", "r", writer=None, client=object())
    assert served.ui_hint() == ("MLflow run ID abc: "
                                "http://ml.example:8080/mlflow/#/experiments/1/runs/abc?workflowType=machine_learning")


def test_two_training_sets_that_differ_past_mlflows_first_rows_show_different_digests():
    """MLflow's own digest hashes the first 10,000 values only: a change in the last row would not show."""
    import numpy as np

    from src.data.splits import Splits
    from src.tracking.datasets import split_datasets

    rows = np.random.default_rng(0).normal(size=(2000, 29)).astype(np.float32)
    changed = rows.copy()
    changed[-1, 1] += 1
    digests = [{c: d.digest for c, d in split_datasets(Splits.of((r[100:, 1:], r[100:, 0]), (r[:100, 1:], r[:100, 0]),
                                                                  source="made here", name="made")).items()}
               for r in (rows, changed)]
    assert digests[0]["training"] != digests[1]["training"]


def test_a_logged_models_name_is_its_runs_without_what_mlflow_refuses_in_one():
    from src.tracking.models import model_name

    assert model_name("fit-l2-large", "model") == "fit-l2-large"
    assert model_name("trial 3 fit-l2-my.net", "best_model") == "trial 3 fit-l2-my-net-best"  # '.' is refused
    assert model_name("a/b:c%d\"e'f", "model") == "a-b-c-d-e-f"
