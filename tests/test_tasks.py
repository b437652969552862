"""Your model, your data, your task: every guarantee of the tutorial's runs holds for the other tasks, the CNN, a
table read from a CSV file and a model built in a folder of the user's own."""

import csv
import textwrap
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import DictConfig

from src.core.errors import ConfigError, DataError
from src.core.metrics import epoch_metrics
from src.core.schema import CONFIG_DIR
from src.experiments.train import train
from tests.helpers import all_runs, run_module

SYSTEM = ("epoch_seconds",)


@pytest.fixture
def task_cfg(tmp_path, tracking_uri) -> Callable[..., DictConfig]:
    """Compose the real config for a data option other than HIGGS, quiet, two epochs, this test's store."""

    def make(*overrides: str, search_path: str = "") -> DictConfig:
        base = ["train.epochs=2", "quiet=true", "mlflow.log_models=false", f"mlflow.tracking_uri={tracking_uri}",
                f"mlflow.artifact_location={tmp_path}/mlruns/artifacts"]
        if search_path:
            base.append(f"hydra.searchpath=[file://{search_path}]")
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=[*base, *overrides])

    return make


def _max_diffs(a: Dict[str, List[float]], b: Dict[str, List[float]], keys) -> Dict[str, float]:
    return {key: max(abs(x - y) for x, y in zip(a[key], b[key])) for key in keys if key not in SYSTEM}


@pytest.mark.parametrize("data, model, reg", [
    ("digits", "cnn", "l2_dropout"),  # multiclass, images, the CNN
    ("breast_cancer", "small", "l2_dropout"),  # binary, a table
    ("diabetes", "small", "l2"),  # regression
])
def test_fit_and_tape_are_twins_for_every_task(task_cfg, data, model, reg):
    fit = train(task_cfg(f"data={data}", f"model={model}", f"reg={reg}", "loop=fit"))
    tape = train(task_cfg(f"data={data}", f"model={model}", f"reg={reg}", "loop=tape"))
    assert fit.status == tape.status == "FINISHED"
    task = {"digits": "multiclass", "breast_cancer": "binary", "diabetes": "regression"}[data]
    assert set(fit.history) == set(epoch_metrics(task))  # the task's own metrics, each with its val_ twin
    diffs = _max_diffs(fit.history, tape.history, epoch_metrics(task))
    assert max(diffs.values()) == 0.0, diffs


def test_the_articles_finding_holds_on_the_cnn(task_cfg):
    """Without sum(model.losses) the tape loop's L2 run is bit for bit the unregularized one; with it, it is not."""
    none = train(task_cfg("data=digits", "model=cnn", "reg=none", "loop=tape"))
    ignored = train(task_cfg("data=digits", "model=cnn", "reg=l2", "loop=tape", "loop.include_reg_loss=false"))
    applied = train(task_cfg("data=digits", "model=cnn", "reg=l2", "loop=tape"))
    keys = [k for k in epoch_metrics("multiclass") if k != "reg_loss"]
    assert max(_max_diffs(none.history, ignored.history, keys).values()) == 0.0
    assert min(ignored.history["reg_loss"]) > 0  # the layers carry the penalty; nothing minimizes it
    assert applied.history["loss"] != ignored.history["loss"]


USER_MODEL = '''
import keras


def build_net(input_shape, n_outputs, units, dropout=0.0, name="my_net"):
    """A user's own model: no kernel_regularizer argument, so the project puts reg's L2 on every kernel."""
    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Dense(units, activation="tanh")(inputs)
    hidden = keras.layers.Dropout(dropout)(hidden) if dropout else hidden
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(hidden), name=name)


def build_plain(input_shape, n_outputs, units):
    """No dropout argument either."""
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(keras.layers.Dense(units)(inputs)))
'''


@pytest.fixture
def user_model(tmp_path, monkeypatch) -> Path:
    """A builder module and its config folder outside src/, as a user writes them."""
    folder = tmp_path / "mine"
    (folder / "my_conf" / "model").mkdir(parents=True)
    (folder / "my_models.py").write_text(USER_MODEL)
    (folder / "my_conf" / "model" / "my_net.yaml").write_text("_target_: my_models.build_net\nname: my_net\nunits: 16\n")
    (folder / "my_conf" / "model" / "plain.yaml").write_text("_target_: my_models.build_plain\nname: plain\nunits: 8\n")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_users_own_model_keeps_the_twins_and_the_articles_finding(task_cfg, user_model):
    conf = str(user_model / "my_conf")
    runs = {name: train(task_cfg("data=breast_cancer", "model=my_net", *extra, search_path=conf)).history
            for name, extra in {"fit": ["reg=l2", "loop=fit"], "tape": ["reg=l2", "loop=tape"],
                                "none": ["reg=none", "loop=tape"],
                                "ignored": ["reg=l2", "loop=tape", "loop.include_reg_loss=false"]}.items()}
    keys = epoch_metrics("binary")
    assert max(_max_diffs(runs["fit"], runs["tape"], keys).values()) == 0.0
    assert min(runs["fit"]["reg_loss"]) > 0  # L2 reached the kernels of a model that never asked for it
    assert max(_max_diffs(runs["none"], runs["ignored"], [k for k in keys if k != "reg_loss"]).values()) == 0.0


def test_dropout_on_a_model_without_a_dropout_argument_is_one_line_before_any_run(task_cfg, user_model,
                                                                                   tracking_uri):
    with pytest.raises(ConfigError, match=r"^reg=dropout: model=plain's builder my_models.build_plain takes no "
                                          r"`dropout` argument"):
        train(task_cfg("data=breast_cancer", "model=plain", "reg=dropout", search_path=str(user_model / "my_conf")))
    assert all_runs(tracking_uri) == []


@pytest.mark.slow  # two processes (~17 s): the in-process tests above keep the user model in the default suite
def test_a_users_model_from_the_command_line_with_config_dir(user_model, tmp_path, tracking_uri):
    """The README's command: `python -m src.train --config-dir my_conf model=my_net`, from the user's folder."""
    proc = run_module("src.train", ["--config-dir", "my_conf", "model=my_net", "data=breast_cancer", "reg=l2",
                                    "train.epochs=1", "quiet=true", f"mlflow.tracking_uri={tracking_uri}",
                                    f"mlflow.artifact_location={tmp_path}/mlruns/artifacts"], cwd=user_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "fit-l2-my_net-breast_cancer"
    assert run.data.params["model._target_"] == "my_models.build_net" and run.data.params["task"] == "binary"
    assert run.data.tags["config_dirs"] == f'["{user_model / "my_conf"}"]'
    # src.reproduce finds the option in the run's own config folder and reruns it bit for bit
    proc = run_module("src.reproduce", [run.info.run_id, "--tracking-uri", tracking_uri], cwd=user_model)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": identical: every value bit-identical" in proc.stdout, proc.stdout


def _write_table(path: Path, rows: int = 300, nan_at: int = -1, text_column: bool = False) -> None:
    rng = np.random.RandomState(0)
    x = rng.normal(size=(rows, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c", "target", *(["note"] if text_column else [])])
        for i in range(rows):
            values = [*("nan" if i == nan_at and j == 1 else f"{v:.6f}" for j, v in enumerate(x[i])), y[i]]
            writer.writerow([*values, *(["x"] if text_column else [])])


def test_a_csv_with_a_header_end_to_end(task_cfg, tmp_path, tracking_uri):
    table = tmp_path / "table.csv"
    _write_table(table)
    args = ("data=csv", f"data.path={table}", "data.label=target", "data.n_validation=100", "model=small",
            f"data.cache_dir={tmp_path}/cache", "train.batch_size=50")
    fit = train(task_cfg(*args, "loop=fit"))
    tape = train(task_cfg(*args, "loop=tape"))
    assert fit.status == tape.status == "FINISHED"
    assert max(_max_diffs(fit.history, tape.history, epoch_metrics("binary")).values()) == 0.0
    assert list((tmp_path / "cache").glob("table-*.rows"))  # parsed once into the shared cache
    run = MlflowClient(tracking_uri).get_run(fit.run_id)
    assert run.data.params["data.label"] == "target" and run.info.run_name == "fit-none-small-csv"
    assert sorted(i.dataset.name for i in run.inputs.dataset_inputs) == ["csv-train", "csv-val"]


@pytest.mark.parametrize("case, message", [
    ("no file", r"^data.path: \S+missing.csv: no such file"),
    ("no label", r"^data.label=label: no such column in \S+table.csv \(columns: a, b, c, target\)"),
    ("text", r"^\S+table.csv: column note is not numeric \(string\)"),
    ("nan", r"^\S+table.csv line 12: column b has no value|^\S+table.csv line 12: column b holds NaN"),
    ("few rows", r"^train.batch_size=500: larger than the 200 training rows"),
])
def test_bad_tables_are_one_line_before_any_run(task_cfg, tmp_path, tracking_uri, case, message):
    table = tmp_path / "table.csv"
    _write_table(table, nan_at=10 if case == "nan" else -1, text_column=case == "text")
    args = ["data=csv", f"data.path={tmp_path / 'missing.csv' if case == 'no file' else table}",
            f"data.label={'label' if case == 'no label' else 'target'}", "data.n_validation=100",
            f"data.cache_dir={tmp_path}/cache", *(["data.features=[a,b,c,note]"] if case == "text" else []),
            "train.batch_size=500"]
    with pytest.raises((ConfigError, DataError), match=message):
        train(task_cfg(*args))
    assert all_runs(tracking_uri) == []
    assert not list((tmp_path / "cache").glob("*.rows")) or case == "few rows"  # nothing half-cached


def test_evaluate_scores_a_multiclass_and_a_regression_run_as_they_trained(task_cfg, tracking_uri, capsys):
    from src.analysis.evaluate import main

    for data, model, loss in (("digits", "cnn", "sparse_categorical_crossentropy"),
                              ("diabetes", "small", "mean_squared_error")):
        result = train(task_cfg(f"data={data}", f"model={model}", "mlflow.log_models=true"))
        capsys.readouterr()
        assert main([result.run_id, "--tracking-uri", tracking_uri]) == 0
        printed = dict(line.split() for line in capsys.readouterr().out.splitlines()[1:] if len(line.split()) == 2)
        assert float(printed[loss]) == pytest.approx(result.history[f"val_{loss}"][-1], rel=1e-5)
        evaluation = [r for r in all_runs(tracking_uri) if r.data.tags.get("evaluated_run_id") == result.run_id]
        figure = "confusion_matrix.png" if data == "digits" else "residuals.png"
        assert [a.path for a in MlflowClient(tracking_uri).list_artifacts(evaluation[0].info.run_id)] == [figure]
        assert f"eval_{loss}" in evaluation[0].data.metrics


def test_the_task_picks_the_loss_and_is_defaulted_by_the_data(task_cfg):
    assert task_cfg("data=digits").task.value == "multiclass"
    assert task_cfg("data=diabetes").task.value == "regression"
    assert task_cfg("data=diabetes", "task=binary").task.value == "binary"  # overridable
    cfg = task_cfg("data=diabetes")
    assert cfg.train.early_stopping.monitor == "val_mean_squared_error" and cfg.train.batch_size == 100
    with pytest.raises(Exception, match="task"):
        task_cfg("task=ranking")


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adamw", marks=pytest.mark.slow)])
def test_the_optimizer_is_a_plug_in_and_keeps_the_twins(task_cfg, optimizer):
    fit = train(task_cfg("data=breast_cancer", "model=small", f"optimizer={optimizer}", "loop=fit"))
    tape = train(task_cfg("data=breast_cancer", "model=small", f"optimizer={optimizer}", "loop=tape"))
    assert max(_max_diffs(fit.history, tape.history, epoch_metrics("binary")).values()) == 0.0
    adam = train(task_cfg("data=breast_cancer", "model=small", "loop=fit"))
    assert adam.history["loss"] != fit.history["loss"]  # a different optimizer, a different descent


def test_a_users_loader_returning_arrays(task_cfg, tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(textwrap.dedent('''
        import numpy as np

        def load(rows):
            rng = np.random.RandomState(1)
            x = rng.normal(size=(rows, 4)).astype("float64")
            y = (x.sum(axis=1) > 0).astype(int)
            return (x[50:], y[50:]), (x[:50], y[:50])

        def load_bad(rows):
            x = np.ones((rows, 4)); x[7, 2] = 1e39  # finite in float64, infinite in float32
            return (x, np.zeros(rows)), (x[:5], np.zeros(5))
    '''))
    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text(
        "_target_: my_data.load\nname: mine\ntask: binary\nbatch_size: 50\nrows: 250\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = str(tmp_path / "my_conf")
    result = train(task_cfg("data=mine", "model=small", search_path=conf))
    assert result.status == "FINISHED" and len(result.history["loss"]) == 2
    with pytest.raises(DataError, match=r"^data=mine: its training features: row 7 holds a NaN or an infinite value"):
        train(task_cfg("data=mine", "data._target_=my_data.load_bad", "model=small", search_path=conf))


def _task_history(client, run_id: str, task: str) -> Dict[str, list]:
    """Every epoch metric of the task, (step, value) by step, system ones left out."""
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in epoch_metrics(task) if key not in SYSTEM}


@pytest.mark.slow
def test_a_cnn_run_killed_with_sigkill_resumes_bit_identically(tmp_path):
    from tests.test_resume import _job, _kill_after_epochs, _output

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["data=digits", "model=cnn", "reg=l2_dropout", "loop=tape", "train.epochs=8", "train.checkpoint_every=1",
              "quiet=true", "mlflow.log_models=false", f"mlflow.tracking_uri={uri}",
              f"mlflow.artifact_location={tmp_path}/art"]
    whole = _job(tmp_path, "whole", *common, "mlflow.experiment_name=whole")
    assert whole.wait(600) == 0, _output(tmp_path, "whole")
    _kill_after_epochs({"cut": _job(tmp_path, "cut", *common, "mlflow.experiment_name=cut")}, tmp_path, {"cut": 3})
    again = _job(tmp_path, "again", *common, "mlflow.experiment_name=cut", "resume=true")
    assert again.wait(600) == 0, _output(tmp_path, "again")
    client = MlflowClient(uri)
    (cut,) = client.search_runs([client.get_experiment_by_name("cut").experiment_id])
    (reference,) = client.search_runs([client.get_experiment_by_name("whole").experiment_id])
    assert cut.info.status == "FINISHED" and cut.data.tags["resumed"] == "1"
    assert _task_history(client, cut.info.run_id, "multiclass") == _task_history(client, reference.info.run_id,
                                                                               "multiclass")


@pytest.mark.slow
def test_a_joblib_sweep_of_a_regression_picks_its_best_child_by_the_tasks_loss(tmp_path, tracking_uri):
    from tests.helpers import split_runs

    proc = run_module("src.train", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data=diabetes",
                                    "model=small", "loop=fit,tape", "reg=l2", "train.epochs=3", "quiet=true",
                                    f"mlflow.tracking_uri={tracking_uri}",
                                    f"mlflow.artifact_location={tmp_path}/mlruns/artifacts",
                                    f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (parent,), children = split_runs(tracking_uri)
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"] and parent.info.status == "FINISHED"
    client = MlflowClient(tracking_uri)
    fit, tape = sorted(children, key=lambda c: c.info.run_name)
    assert _task_history(client, fit.info.run_id, "regression") == _task_history(client, tape.info.run_id,
                                                                                  "regression")
    best = min(m.value for m in client.get_metric_history(fit.info.run_id, "val_mean_squared_error"))
    assert client.get_run(parent.info.run_id).data.metrics["best_val_mean_squared_error"] == best
    assert "final val_mse" in proc.stderr and "val_mae" in proc.stderr  # compare's table, by the task


@pytest.mark.parametrize("overrides, message", [
    (["model._target_=nope_mod.build"], r"^model._target_=nope_mod.build: cannot be imported \(No module named "
                                        r"'nope_mod'\); put its module on PYTHONPATH"),
    (["data._target_=nope_mod.load"], r"^data._target_=nope_mod.load: cannot be imported \(No module named "),
    (["model=cnn"], r"^model=cnn: needs images \(height, width, channels\), got input shape \(30,\)"),
    (["data=diabetes", "task=binary"], r"^task=binary: the training labels must be 0 or 1"),
    (["optimizer._partial_=false"], r"^optimizer._partial_=False: must be true"),
    # a key the built-in option's schema lacks and its builder does not take: refused when the config is checked
    (["+model.depth=3"], r"^model\.depth: no such config key \(model has _target_, name, hidden_units, activation; nor "
                         r"is it an argument of src\.training\.models\.dense\)$"),
])
def test_a_plug_in_that_cannot_work_is_one_line_before_any_run(task_cfg, tracking_uri, overrides, message):
    with pytest.raises((ConfigError, DataError), match=message):
        train(task_cfg("data=breast_cancer", "model=small", *overrides))
    assert all_runs(tracking_uri) == []


def test_compare_refuses_runs_of_different_tasks_by_name(task_cfg, tracking_uri, capsys):
    from src.analysis.compare import main

    a = train(task_cfg("data=breast_cancer", "model=small", "train.epochs=1")).run_id
    b = train(task_cfg("data=diabetes", "model=small", "train.epochs=1")).run_id
    capsys.readouterr()
    assert main([a, b, "--tracking-uri", tracking_uri, "--no-log"]) == 2
    assert capsys.readouterr().err.strip() == ("error: runs of different tasks cannot share one table: "
                                              "fit-none-small-breast_cancer (binary), fit-none-small-diabetes "
                                              "(regression)")
