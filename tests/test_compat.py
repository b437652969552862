"""Every private TensorFlow, MLflow and Hydra call of src/core/compat.py still works: an upgrade that breaks one fails here."""

import mlflow.data
import numpy as np
import pytest
from mlflow.entities import Dataset

from src.core import compat
from src.core.errors import composition_error_line
from tests.helpers import error_lines, run_module


def test_op_determinism_can_be_read_and_switched_off():
    import tensorflow as tf

    was_on = compat.op_determinism_enabled()
    try:
        tf.config.experimental.enable_op_determinism()
        assert compat.op_determinism_enabled() is True
        compat.disable_op_determinism()
        assert compat.op_determinism_enabled() is False
    finally:
        if was_on:
            tf.config.experimental.enable_op_determinism()


def test_a_numpy_dataset_becomes_the_entity_log_inputs_takes(tmp_path):
    source = compat.local_dataset_source(str(tmp_path / "higgs.csv.gz"))
    assert source._get_source_type() == "local" and str(tmp_path / "higgs.csv.gz") in source.to_json()
    dataset = mlflow.data.from_numpy(np.ones((3, 2), np.float32), targets=np.zeros((3, 1), np.float32),
                                     source=source, name="higgs-train")
    entity = compat.dataset_entity(dataset)
    assert isinstance(entity, Dataset)
    assert (entity.name, entity.digest, entity.source_type) == ("higgs-train", dataset.digest, "local")


def test_hydra_prints_a_bad_override_as_one_line(tmp_path):
    proc = run_module("src.train", ["train.epoch=3"], cwd=tmp_path, env_drop=("HYDRA_FULL_ERROR",))
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == ["Could not override 'train.epoch': Key 'epoch' not in 'TrainConfig'"]
    # HYDRA_FULL_ERROR=1 gives Hydra's own report back
    full = run_module("src.train", ["train.epoch=3"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and len(error_lines(full.stderr)) > 1


def test_composition_errors_keep_the_attributes_the_one_line_reads():
    from hydra.errors import MissingConfigException

    from src.core.config import compose_config

    try:
        compose_config(["model=huge"])
    except MissingConfigException as exc:
        assert composition_error_line(exc) == "model=huge: no such option (available: cnn, large, medium, small, tiny)"
    else:
        raise AssertionError("model=huge composed")


def test_a_profiler_trace_reads_back_with_its_ops(tmp_path):
    import tensorflow as tf

    from src.core.compat import read_xplane

    x = tf.ones((64, 64))
    step = tf.function(lambda a: tf.matmul(a, a))
    step(x)  # traced before the profile
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(5):
        step(x)
    tf.profiler.experimental.stop()
    (trace,) = tmp_path.glob("**/*.xplane.pb")
    names = {meta.name for plane in read_xplane(trace).planes for meta in plane.event_metadata.values()}
    assert any("MatMul" in name for name in names), sorted(names)[:20]


def test_a_failed_hydra_job_gives_back_the_exception_it_raised(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from src.core.errors import JobFailed

    raised = JobFailed("training diverged", run_id="abc")
    result = JobReturn(status=JobStatus.FAILED)
    result.return_value = raised  # what hydra.core.utils.run_job does when the task raises
    assert compat.job_exception(result) is raised and compat.job_exception(result).run_id == "abc"


@pytest.mark.slow  # ~7 s (Keras saves and loads); what it guards only changes with an MLflow upgrade
def test_mlflows_keras_flavor_still_writes_the_input_example_before_its_folder(tmp_path):
    """When this fails, MLflow has fixed its Keras flavor: `compat.keras_flavor` can go (use `mlflow.keras`)."""
    import keras
    import mlflow.keras

    model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
    example = np.zeros((1, 2), np.float32)
    with pytest.raises(FileNotFoundError):
        mlflow.keras.save_model(model, path=str(tmp_path / "plain"), input_example=example)
    compat.keras_flavor().save_model(path=str(tmp_path / "fixed"), model=model, input_example=example)
    assert mlflow.keras.load_model(str(tmp_path / "fixed")).count_params() == 3


def test_a_sweep_composes_each_jobs_config_once(monkeypatch):
    import inspect

    from hydra import compose, initialize_config_dir
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins import basic_launcher, basic_sweeper
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from src.core.schema import CONFIG_DIR

    # what the patch relies on: the sweeper composes every job to check it, then the launcher composes it again
    assert "self.validate_batch_is_legal(batch)" in inspect.getsource(basic_sweeper.BasicSweeper.sweep)
    assert "load_sweep_config(" in inspect.getsource(basic_launcher.BasicLauncher.launch)
    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", ConfigLoaderImpl.load_sweep_config)  # undone after
    compat.compose_each_sweep_job_once()
    compositions = []
    load = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration",
                        lambda self, *a, **k: compositions.append(1) or load(self, *a, **k))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        master = compose("config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        compositions.clear()
        checked = loader.load_sweep_config(master, ["reg=l2", "seed=3"])  # the sweeper's check
        launched = loader.load_sweep_config(master, ["reg=l2", "seed=3"])  # the launcher's
        other = loader.load_sweep_config(master, ["reg=none"])
    assert len(compositions) == 2  # the job of seed 3 once, the other job once
    assert launched is not checked and OmegaConf.to_container(launched) == OmegaConf.to_container(checked)
    assert launched.seed == 3 and launched.reg.l2 == 0.001 and other.reg.l2 == 0
