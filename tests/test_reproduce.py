"""Reproduce by run ID: the logged config re-runs bit for bit, and a changed config is caught."""

import math
import os
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from src.experiments.train import train
from src.experiments.reproduce import main
from src.experiments.verdict import Difference, compare_histories, dataset_warnings, runtime_warnings
from src.tracking.logged_config import rebuild_config


def _reproduce(tmp_path, *args: str, env=None) -> subprocess.CompletedProcess:
    """`python -m src.reproduce ...` from an unrelated working directory."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "src.reproduce", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def _new_run(client, original_id):
    [run] = client.search_runs(
        [client.get_run(original_id).info.experiment_id], filter_string=f"tags.reproduced_from = '{original_id}'"
    )
    return run


def test_reproduction_is_bit_identical(make_cfg, tracking_uri, tmp_path):
    original = train(make_cfg("reg=l2_dropout"))
    # the store named by the environment, as MLflow's own tools take it
    proc = _reproduce(tmp_path, original.run_id, "--quiet", env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout
    client = MlflowClient(tracking_uri)
    new = _new_run(client, original.run_id)
    assert new.info.run_id != original.run_id and new.info.status == "FINISHED"
    assert new.data.tags["reproduction_verdict"] == "identical"
    # it says what it is: its name marks it, its description links the original and states the verdict
    assert new.info.run_name == "fit-l2_dropout-tiny (reproduction)"
    assert new.data.tags["mlflow.note.content"].startswith(
        f"Reproduction of [fit-l2_dropout-tiny](#/experiments/{new.info.experiment_id}/runs/{original.run_id}): "
        "identical: every value bit-identical")
    assert new.data.tags["reproduction_first_difference"] == "none"
    # the reproduction computed from the same config: same digest, same params (quiet aside)
    assert new.data.tags["config_digest"] == client.get_run(original.run_id).data.tags["config_digest"]
    report = client.download_artifacts(new.info.run_id, "reproduction.txt", str(tmp_path))
    assert "identical" in open(report).read()
    for key, values in original.history.items():
        if key != "epoch_seconds":
            assert [m.value for m in client.get_metric_history(new.info.run_id, key)] == values, key


def test_changed_logged_config_names_first_differing_metric(make_cfg, tracking_uri, tmp_path, capsys):
    original = train(make_cfg())
    client = MlflowClient(tracking_uri)
    path = client.download_artifacts(original.run_id, "config.yaml", str(tmp_path))
    logged = yaml.safe_load(open(path))
    logged["train"]["learning_rate"] = 0.01
    client.log_text(original.run_id, yaml.safe_dump(logged), "config.yaml")  # overwrites the artifact

    # In-process (the subprocess path is covered above): saves a TensorFlow start-up per call.
    assert main([original.run_id, "--tracking-uri", tracking_uri, "--quiet"]) == 1
    out, err = capsys.readouterr()
    # the learning rate acts from the first step: the epoch-0 training loss is the first value to differ
    assert "differs" in out and "first difference: loss at epoch 0" in out
    assert "config digest differs" in err  # the edited artifact no longer matches the run's tag
    new = _new_run(client, original.run_id)
    assert new.data.tags["reproduction_verdict"] == "differs"
    assert new.data.tags["reproduction_first_difference"].startswith("loss at epoch 0")
    assert new.data.params["train.learning_rate"] == "0.01"

    # A tolerance as large as the difference accepts it.
    client.delete_run(new.info.run_id)
    assert main([original.run_id, "--tracking-uri", tracking_uri, "--quiet", "--tolerance", "10"]) == 0
    assert "within_tolerance" in capsys.readouterr().out


def test_refuses_unknown_foreign_and_configless_runs(tracking_uri, tmp_path, capsys):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("other-project")
    foreign = client.create_run(experiment, tags={"sweep": "false"}).info.run_id
    configless = client.create_run(experiment, tags={"config_digest": "0" * 16}).info.run_id
    sweep = client.create_run(experiment, tags={"sweep": "true"}).info.run_id
    for run_id in (foreign, configless, sweep):
        client.set_terminated(run_id)
    capsys.readouterr()  # MLflow's store set-up chatter
    cases = {
        "0123456789abcdef0123456789abcdef": "no such run",
        foreign: "not a run of this project",
        configless: "no config.yaml artifact",
        sweep: "is a sweep parent",
    }
    for run_id, reason in cases.items():
        assert main([run_id, "--tracking-uri", tracking_uri]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and run_id in lines[0] and reason in lines[0], err
    assert main(["--sweep", foreign, "--tracking-uri", tracking_uri]) == 2
    assert "not a sweep parent" in capsys.readouterr().err
    # nothing was started, so nothing is left RUNNING
    assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment]))


def test_unknown_run_from_the_command_line(tracking_uri, tmp_path):
    MlflowClient(tracking_uri).search_experiments()  # creates the store
    proc = _reproduce(tmp_path, "0123456789abcdef0123456789abcdef", "--tracking-uri", tracking_uri)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: run 0123456789abcdef0123456789abcdef: no such run in {tracking_uri}"
    ]


def test_missing_store_is_an_error(tmp_path, capsys):
    assert main(["abc", "--tracking-uri", f"sqlite:///{tmp_path}/none/mlflow.db"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --tracking-uri: no MLflow store at {tmp_path}/none/mlflow.db"
    assert not (tmp_path / "none").exists()


def test_compare_histories_finds_first_difference_and_tolerates():
    original = {"loss": {0: 1.0, 1: 0.5}, "val_loss": {0: 1.1, 1: 0.6}, "epoch_seconds": {0: 1.0, 1: 2.0},
                "system/epoch_seconds": {0: 1.0, 1: 2.0}, "system/cpu_utilization_percentage": {0: 50.0}}
    timing = {"epoch_seconds": {0: 3.0, 1: 4.0}, "system/epoch_seconds": {0: 3.0, 1: 4.0},
              "system/cpu_utilization_percentage": {0: 99.0, 1: 98.0}}
    assert compare_histories(original, {**original, **timing}).status == "identical"
    changed = {**original, "val_loss": {0: 1.1, 1: 0.6 + 1e-7}, "loss": {0: 1.0, 1: 0.5 + 1e-3}}
    verdict = compare_histories(original, changed, order=("val_loss", "loss"))
    assert verdict.status == "differs"
    assert verdict.first == Difference("val_loss", 1, 0.6, 0.6 + 1e-7)  # earliest step, then `order`
    assert verdict.max_abs_diff == pytest.approx(1e-3)
    assert compare_histories(original, changed, tolerance=1e-3 + 1e-12).status == "within_tolerance"
    truncated = {"loss": {0: 1.0}, "val_loss": {0: 1.1}}
    verdict = compare_histories(original, truncated, tolerance=1.0)
    assert verdict.status == "differs" and verdict.first.reproduced is None and math.isinf(verdict.max_abs_diff)
    nan = {"loss": {0: float("nan")}}
    assert compare_histories(nan, {"loss": {0: float("nan")}}).status == "identical"
    # a metric the code learned to log after the original ran (learning_rate) is named, not a difference
    newer = compare_histories(original, {**original, "learning_rate": {0: 1e-3, 1: 1e-3}})
    assert newer.status == "identical" and "not in the original: learning_rate" in newer.summary()


def test_logged_values_are_type_checked_against_todays_schema(make_cfg):
    logged = OmegaConf.to_container(make_cfg("loop=tape", "train.learning_rate=0.01"), resolve=True, enum_to_str=True)
    cfg, filled, dropped = rebuild_config(OmegaConf.create(logged))
    assert cfg.loop.include_reg_loss is True and cfg.train.learning_rate == 0.01 and (filled, dropped) == ({}, {})
    bad_type = OmegaConf.create({**logged, "train": {**logged["train"], "epochs": "two"}})
    with pytest.raises(Exception, match="epochs"):
        rebuild_config(bad_type)
    # a fit run has no include_reg_loss: a logged one does not fit the schema and is reported, not used
    _, _, dropped = rebuild_config(OmegaConf.create({**logged, "loop": {"name": "fit", "include_reg_loss": True}}))
    assert dropped == {"loop.include_reg_loss": True}


@pytest.mark.slow  # a sweep trained and reproduced (~7 s): the default suite keeps its 150 s budget
def test_reproduce_sweep_puts_every_child_under_a_new_parent(make_cfg, tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    client.search_experiments()  # creates the store
    experiment = client.create_experiment("overfit-and-underfit")
    parent = client.create_run(experiment, run_name="sweep reg=none,l2", tags={"sweep": "true"}).info.run_id
    children = [train(make_cfg(f"reg={reg}", "train.epochs=1"), parent_run_id=parent).run_id for reg in ("none", "l2")]
    client.set_terminated(parent)
    capsys.readouterr()

    assert main(["--sweep", parent, "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert out.count(": identical:") == 2
    [new_parent] = client.search_runs([experiment], filter_string=f"tags.reproduced_from = '{parent}'")
    assert new_parent.info.status == "FINISHED" and new_parent.data.tags["sweep"] == "true"
    assert new_parent.data.tags["reproduction_verdict"] == "identical"
    new_children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{new_parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )  # fmt: skip
    assert [c.data.tags["reproduced_from"] for c in new_children] == children
    assert all(c.data.tags["reproduction_verdict"] == "identical" for c in new_children)


def test_schema_drift_since_the_run_is_filled_and_dropped(make_cfg):
    logged = OmegaConf.to_container(make_cfg("model=small", "reg=l2"), resolve=True, enum_to_str=True)
    del logged["seed"], logged["model"]["activation"]  # as if the schema gained them after the run
    logged["data"]["shuffle_buffer"], logged["gone"] = 10000, 1  # as if it had lost these
    cfg, filled, dropped = rebuild_config(OmegaConf.create(logged))
    assert dropped == {"data.shuffle_buffer": 10000, "gone": 1}
    assert filled == {"model.activation": "elu", "seed": 0}
    assert cfg.model.hidden_units == [16, 16] and cfg.reg.l2 == 0.001 and not OmegaConf.missing_keys(cfg)


def test_runtime_and_dataset_differences_are_warned():
    from types import SimpleNamespace as NS

    def run(tags, digests):
        inputs = [
            NS(dataset=NS(name=f"higgs-{c}", digest=d), tags=[NS(key="mlflow.data.context", value=c)])
            for c, d in digests.items()
        ]
        return NS(data=NS(tags=tags), inputs=NS(dataset_inputs=inputs))

    original = run({"devices": "/cpu:0", "strategy": "_DefaultDistributionStrategy"}, {"training": "a", "validation": "b"})
    # a run from before the strategy tag took the option's name is the same strategy as "default" now
    same = run({**original.data.tags, "strategy": "default"}, {"training": "a", "validation": "b"})
    assert runtime_warnings(original, same) == [] and dataset_warnings(original, same) == []
    moved = run({"devices": "/gpu:0,/gpu:1", "strategy": "mirrored"}, {"training": "c", "validation": "b"})
    assert [w.split(":")[0] for w in runtime_warnings(original, moved)] == ["devices differs", "strategy differs"]
    assert dataset_warnings(original, moved) == ["dataset digest differs (training): original a, now c: the data changed"]
    # a run logged before the datasets showed the whole data's digest: its data_sha256 alone says the data is the same
    older = run({"data_sha256": "f" * 64}, {"training": "first-rows", "validation": "b"})
    newer = run({"data_sha256": "f" * 64}, {"training": "f" * 16, "validation": "f" * 16})
    assert dataset_warnings(older, newer) == []
    assert dataset_warnings(older, run({"data_sha256": "e" * 64}, {"training": "e" * 16}))[0].startswith(
        "data digest differs: original ffffffffffffffff, now eeeeeeeeeeeeeeee")
