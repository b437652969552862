"""Hyperparameter search (`hydra/sweeper=optuna`): the search space, the objective, a real search with a pruned
trial recorded on its MLflow parent run, and (slow) two workers sharing one study."""

import subprocess
import sys
import time

import optuna
import optuna.distributions as od
import pytest
from mlflow import MlflowClient

from src.core.errors import ConfigError
from src.core.schema import PROJECT_ROOT
from src.experiments.search import Objective, search_space, trial_overrides
from src.tracking.store import PARENT_TAG
from tests.helpers import error_lines, history, run_module, split_runs


def test_the_search_space_comes_from_hydras_sweep_syntax_and_the_rest_is_fixed():
    fixed, space = search_space(
        ["reg=l2", "reg.l2=tag(log, interval(1e-5, 1e-2))", "train.epochs=20", "model=choice(tiny, large)",
         "train.batch_size=range(100, 400, 100)", "seed=tag(int, interval(0, 9))", "reg.dropout=interval(0.1, 0.5)"],
        {"train.learning_rate": "tag(log, interval(1e-4, 1e-2))", "train.epochs": "5"},
    )
    assert fixed == ["reg=l2", "train.epochs=20"]  # the command line wins over hydra.sweeper.params
    assert space == {
        "train.learning_rate": od.FloatDistribution(1e-4, 1e-2, log=True),
        "reg.l2": od.FloatDistribution(1e-5, 1e-2, log=True),
        "model": od.CategoricalDistribution(["tiny", "large"]),
        "train.batch_size": od.CategoricalDistribution([100, 200, 300]),
        "seed": od.IntDistribution(0, 9),
        "reg.dropout": od.FloatDistribution(0.1, 0.5),
    }
    assert trial_overrides({"reg.l2": 0.1 + 0.2, "model": "tiny"}) == ["reg.l2=0.30000000000000004", "model=tiny"]


@pytest.mark.parametrize("arguments, message", [
    (["reg=l2"], "nothing to search"),
    (["model=glob(*)"], "takes interval(), tag(log, interval()), choice() or range()"),
])
def test_a_search_without_a_search_space_is_a_config_error(arguments, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        search_space(arguments, {})


def test_the_objective_is_the_best_or_last_value_of_a_per_epoch_metric():
    history = {"val_binary_crossentropy": [0.7, 0.6, 0.65], "val_accuracy": [0.5, 0.7, 0.6]}
    assert Objective("val_binary_crossentropy", "minimize", "best").value(history) == 0.6
    assert Objective("val_binary_crossentropy", "minimize", "last").value(history) == 0.65
    assert Objective("val_accuracy", "maximize", "best").value(history) == 0.7
    with pytest.raises(ConfigError, match=r"hydra.sweeper.objective.metric=val_mean_absolute_error: not a per-epoch metric"):
        Objective.from_config(optuna_objective("val_mean_absolute_error", "minimize", "best"))
    with pytest.raises(ConfigError, match=r"objective.direction=down: minimize or maximize"):
        Objective.from_config(optuna_objective("val_loss", "down", "best"))


def optuna_objective(metric, direction, reduce):
    from omegaconf import OmegaConf

    return OmegaConf.create({"metric": metric, "direction": direction, "reduce": reduce})


def _search_args(folder, higgs_file, *extra, tracking_uri=None):
    return [
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0", "reg=l2",
        "reg.l2=tag(log, interval(1e-5, 1e-2))", "train.learning_rate=tag(log, interval(1e-6, 1e-2))",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=1",
        "model=tiny", "train.epochs=4", f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=2000",
        "quiet=true", "mlflow.log_models=false", f"mlflow.tracking_uri={tracking_uri or f'sqlite:///{folder}/mlruns/mlflow.db'}",
        f"mlflow.artifact_location={folder}/mlruns/artifacts", f"hydra.sweeper.storage=sqlite:///{folder}/optuna.db",
        *extra,
    ]


def test_a_search_prunes_hopeless_trials_and_records_the_best_on_its_parent_run(tmp_path, higgs_file, tracking_uri):
    proc = run_module("src.train", _search_args(tmp_path, higgs_file, "hydra.sweeper.n_trials=3",
                                                "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path}/sweep",
                                                tracking_uri=tracking_uri), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = tracking_uri
    client = MlflowClient(uri)
    [parent], trials = split_runs(uri)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states.values()).count("PRUNED") >= 1 and "COMPLETE" in states.values(), states

    assert len(trials) == 3
    for run in trials:
        tags, number = run.data.tags, int(run.data.tags["optuna.trial"])
        assert run.info.status == "FINISHED" and tags[PARENT_TAG] == parent.info.run_id
        assert run.info.run_name.startswith(f"trial {number} ") and tags["optuna.state"] == states[number]
        assert (tags["loop"], tags["reg"], tags["model"], tags["task"]) == ("fit", "l2", "tiny", "binary")  # filterable
        trial = study.trials[number]
        assert float(run.data.params["reg.l2"]) == trial.params["reg.l2"]  # the sampled value, exactly
        epochs = len(history(client, run.info.run_id, ["val_binary_crossentropy"])["val_binary_crossentropy"])
        note = tags["mlflow.note.content"]  # it says what it is: its trial, its study, how it ended, its value
        assert note.startswith(f"Trial {number} of the Optuna study `s`: ")
        if states[number] == "PRUNED":  # stopped after the epoch it was pruned at, as its own state
            assert epochs == int(tags["optuna.pruned_epoch"]) + 1 < 4
            assert run.info.run_name.endswith(" (pruned)") and f"pruned after epoch {tags['optuna.pruned_epoch']}" in note
        else:
            val = history(client, run.info.run_id, ["val_binary_crossentropy"])["val_binary_crossentropy"]
            assert epochs == 4 and trial.value == min(val)
            assert f"complete; best val_binary_crossentropy {trial.value:.6g}" in note

    best = study.best_trial
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("search ")
    assert parent.data.metrics["best_val_binary_crossentropy"] == best.value
    assert parent.data.metrics["trials_pruned"] == list(states.values()).count("PRUNED")
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 3
    # the best values as tags, which a continued search refreshes; never as params, which could not change
    assert {k: float(parent.data.tags[f"best.{k}"]) for k in best.params} == best.params
    assert not set(best.params) & set(parent.data.params) and parent.data.params["model.name"] == "tiny"
    assert parent.data.tags["mlflow.note.content"].endswith(
        f"**Best trial so far**: {best.number}, best_val_binary_crossentropy {best.value:.6g}: "
        + ", ".join(f"`{k}={v!r}`" for k, v in best.params.items()))
    assert parent.info.run_name == "search 3× tiny 4ep reg.l2×train.learning_rate"
    assert parent.data.tags["optuna.best_run_id"] in {r.info.run_id for r in trials}
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    importances = {"optuna/param_importances.png"} if list(states.values()).count("COMPLETE") >= 2 else set()
    assert figures == {"optuna/optimization_history.png", *importances}  # importances need two complete trials
    assert "PRUNED" in proc.stderr and f"best trial {best.number}:" in proc.stderr


def _diverging_search_args(folder, higgs_file, space):
    """A 3-trial search over `space` whose sampler (seed 11) asks for lr=1e30 (the tiny model diverges at once), then 1e-3 twice, when space is
    train.learning_rate=choice(1e30, 1e-3)."""
    args = [a for a in _search_args(folder, higgs_file, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={folder}/sweep")
            if not a.startswith(("hydra.sweeper.sampler.seed=", "reg.l2=", "train.learning_rate=", "train.epochs="))]
    return [*args, "hydra.sweeper.sampler.seed=11", "train.epochs=2", space]


@pytest.mark.slow  # ~18 s: the default suite has a real search already (the pruning one)
def test_a_trial_that_diverges_fails_alone_and_the_search_goes_on(tmp_path, higgs_file, tracking_uri):
    proc = run_module("src.train", _diverging_search_args(tmp_path, higgs_file, "train.learning_rate=choice(1e30, 1e-3)")
                      + [f"mlflow.tracking_uri={tracking_uri}", "hydra.sweeper.study_name=d"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed trial fails the command, after the search
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [(t.params["train.learning_rate"], t.state.name) for t in study.trials] == [
        (1e30, "FAIL"), (1e-3, "COMPLETE"), (1e-3, "COMPLETE")]
    [parent], trials = split_runs(tracking_uri)
    status = {int(r.data.tags["optuna.trial"]): r.info.status for r in trials}
    assert status == {0: "FAILED", 1: "FINISHED", 2: "FINISHED"}
    assert study.trials[0].user_attrs["run_id"] in {r.info.run_id for r in trials}  # the failed trial's run, named
    assert (parent.data.metrics["trials_failed"], parent.data.metrics["trials_complete"]) == (1, 2)
    assert parent.data.metrics["best_val_binary_crossentropy"] == study.best_value
    assert "1 of 3 trials failed" in proc.stderr


@pytest.mark.slow
def test_a_search_whose_first_trials_fail_before_training_stops_there(tmp_path, higgs_file):
    """A trial refused by the config (here every one: the same would happen to a missing data file) trains
    nothing; the search stops instead of failing the same way n_trials times."""
    proc = run_module("src.train", _diverging_search_args(tmp_path, higgs_file, "train.epochs=choice(0, -1)")
                      + ["hydra.sweeper.study_name=c"], cwd=tmp_path)
    assert proc.returncode == 1
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert "train.epochs" in proc.stderr and "1 of 1 trials failed" in proc.stderr


@pytest.mark.slow
def test_a_bad_objective_is_a_one_line_error_before_any_trial_or_parent_run(tmp_path, higgs_file):
    proc = run_module("src.train", _search_args(tmp_path, higgs_file, "hydra.sweeper.objective.metric=val_mean_absolute_error",
                                                f"hydra.sweep.dir={tmp_path}/sweep"), cwd=tmp_path)
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert any("hydra.sweeper.objective.metric=val_mean_absolute_error: not a per-epoch metric" in line for line in lines), lines
    assert not (tmp_path / "sweep" / "0").exists()
    assert split_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == ([], [])


@pytest.mark.slow
@pytest.mark.parametrize("space, message", [
    ("reg.l3=tag(log, interval(1e-5, 1e-2))",
     "reg.l3: no such config key, so the search cannot vary it (reg has name, l2, dropout)"),  # + cannot add it
    ("train.learning_rate=interval(0.1, 0.01)", "train.learning_rate=interval(0.1, 0.01): not a search range"),
])
def test_a_bad_search_space_is_one_line_before_any_study_or_parent_run(tmp_path, higgs_file, space, message):
    """An unknown key once left trial 0 RUNNING in the study and a FAILED parent with an empty summary."""
    proc = run_module("src.train", _search_args(tmp_path, higgs_file, space, f"hydra.sweep.dir={tmp_path}/sweep"),
                      cwd=tmp_path)
    assert proc.returncode == 1
    assert any(message in line for line in error_lines(proc.stderr)), error_lines(proc.stderr)
    assert split_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db") == ([], [])
    if (tmp_path / "optuna.db").exists():  # no study was made, so no trial is left RUNNING in one
        import optuna

        assert optuna.study.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db") == []


@pytest.mark.slow
def test_two_workers_share_one_study_and_its_parent_run_and_a_study_resumes_by_name(tmp_path, higgs_file):
    """Two processes against one study in one storage (Optuna's distributed pattern); then the same command again
    adds trials to the study instead of starting over."""
    def worker(name):
        args = _search_args(tmp_path, higgs_file, "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=shared",
                            f"hydra.sweep.dir={tmp_path}/{name}")
        return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = worker("one")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    deadline = time.monotonic() + 300
    while True:  # the second worker joins once the study (and its parent run) exists
        try:
            if "mlflow_parent_run_id" in optuna.load_study(study_name="shared", storage=storage).user_attrs:
                break
        except KeyError:
            pass
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    second = worker("two")
    for proc in (first, second):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    third = worker("three")
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out[-3000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 9 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    [parent], trials = split_runs(uri)
    assert len(trials) == 9 and {r.data.tags[PARENT_TAG] for r in trials} == {parent.info.run_id}
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == list(range(9))
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 9
    assert parent.data.metrics["best_val_binary_crossentropy"] == study.best_value
    # the continued search's parent stays true: it counts every trial, and no process's end left it "dead"
    assert parent.info.run_name.startswith("search 9×") and ": 9 runs, nested below" in parent.data.tags[
        "mlflow.note.content"]
    assert "dead" not in parent.data.tags and "compare/" not in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["optuna.best_trial"] == str(study.best_trial.number)
    assert {k: float(parent.data.tags[f"best.{k}"]) for k in study.best_params} == study.best_params
    assert not set(study.best_params) & set(parent.data.params)  # no earlier batch's best left as a param
    note = parent.data.tags["mlflow.note.content"]  # one line names the best trial, replaced after every batch
    assert note.count("**Best trial so far**") == 1 and f"**Best trial so far**: {study.best_trial.number}, " in note



@pytest.mark.slow
def test_a_seeded_search_asks_for_the_same_trials_and_gets_the_same_values_again(tmp_path, higgs_file):
    def study(folder):
        proc = run_module("src.train", _search_args(folder, higgs_file, "hydra.sweeper.n_trials=3",
                                                    "hydra.sweeper.study_name=again", f"hydra.sweep.dir={folder}/s"),
                          cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = optuna.load_study(study_name="again", storage=f"sqlite:///{folder}/optuna.db").trials
        return [(t.params, t.state.name, t.value, dict(t.intermediate_values)) for t in trials]

    first = study(tmp_path / "one")
    assert study(tmp_path / "two") == first  # the sampler's seed and bit-identical trials: the same search


@pytest.mark.slow
def test_an_interrupted_search_leaves_no_trial_running_in_its_study(tmp_path, higgs_file):
    import signal

    args = _search_args(tmp_path, higgs_file, "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=cut",
                        "train.epochs=100000", f"hydra.sweep.dir={tmp_path}/sweep")
    proc = subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    log = tmp_path / "sweep" / "0" / "train.log"
    while not (log.exists() and "epoch 2:" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # told, never left RUNNING


def test_parameter_importances_are_drawn_only_when_there_is_more_than_one_parameter():
    import optuna

    from src.experiments.study_summary import _study_figures

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    one = optuna.create_study()
    one.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert set(_study_figures(one)) == {"optimization_history"}  # one parameter has all the importance: no figure
    two = optuna.create_study()
    two.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=3)
    assert set(_study_figures(two)) == {"optimization_history", "param_importances"}


@pytest.mark.slow  # ~9 s each: the command's start-up
@pytest.mark.parametrize("storage, why", [
    ("sqlite:///{tmp}/a_file/optuna.db", "unable to open database file"),  # its folder is a file
    ("postgresql+psycopg2://optuna:s3cretPW@127.0.0.1:{port}/optuna", "Connection refused"),  # no server there
])
def test_a_storage_that_cannot_be_opened_is_one_line_naming_it_and_no_parent_run(tmp_path, higgs_file, storage, why):
    """It once said "sweep: its parent run could not be made (OperationalError: ...)"."""
    from tests.helpers import free_port

    (tmp_path / "a_file").write_text("a file where a folder should be\n")
    storage = storage.format(tmp=tmp_path, port=free_port())
    proc = run_module("src.train", _search_args(tmp_path, higgs_file, "hydra.sweeper.n_trials=1",
                                                f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path}/sweep"),
                      cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "s3cretPW" not in proc.stdout + proc.stderr
    shown = storage.replace(":s3cretPW@", ":***@")
    (line,) = [x for x in error_lines(proc.stderr) if "hydra.sweeper.storage" in x or "Error" in x]
    assert line.startswith(f"hydra.sweeper.storage={shown}: cannot open the study's storage (") and why in line, line
    db = tmp_path / "mlruns" / "mlflow.db"
    assert not db.exists() or not [r for e in MlflowClient(f"sqlite:///{db}").search_experiments()
                                   for r in MlflowClient(f"sqlite:///{db}").search_runs([e.experiment_id])]
