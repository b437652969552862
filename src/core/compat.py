"""Every private TensorFlow, MLflow and Hydra call of the project, each behind one function.

Each has a test in tests/test_compat.py that fails loudly when an upgrade moves or removes it.
Imports happen inside the functions: importing this module costs nothing.
"""

import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def op_determinism_enabled() -> bool:
    """Whether `tf.config.experimental.enable_op_determinism()` is in force (TF has no public getter)."""
    from tensorflow.python.framework import config as tf_framework_config

    return tf_framework_config.is_op_determinism_enabled()


def disable_op_determinism() -> None:
    """Undo `enable_op_determinism()` for the rest of the process (TF has no public call for it)."""
    from tensorflow.python.framework import config as tf_framework_config

    tf_framework_config.disable_op_determinism()


def dataset_entity(dataset) -> Any:
    """An `mlflow.data` dataset as the entity `MlflowClient.log_inputs` takes (the fluent API does this privately)."""
    return dataset._to_mlflow_entity()


def local_dataset_source(path: str) -> Any:
    """MLflow's local-file dataset source; MLflow registers that class twice and warns when it must guess."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return local(path)


def keras_flavor() -> Any:
    """MLflow's Keras 3 flavor for `Model.log`, made to work with an input example.

    Its `save_model` writes the input example into the model's folder before it creates that folder (MLflow 3.17;
    FileNotFoundError). This flavor creates the folder first and is otherwise `mlflow.keras` itself; the test in
    tests/test_compat.py fails once MLflow fixes it, and then this can go.
    """
    import types

    import mlflow.keras

    def save_model(path, **kwargs):
        os.makedirs(path)
        return mlflow.keras.save_model(path=path, **kwargs)

    return types.SimpleNamespace(__name__=mlflow.keras.__name__, save_model=save_model)


def job_exception(result) -> BaseException:
    """The exception a failed Hydra job raised; `JobReturn.return_value` would re-raise it and print its overrides."""
    return result._return_value


def one_line_config_errors(one_line: Callable[[Exception], str]) -> None:
    """Make Hydra print a bad override as `one_line(exc)` (it prints several lines: option lists, hints).

    hydra-core 1.3's `_run_hydra` calls the module global `run_and_report`; there is no
    public hook for how a composition error is printed. HYDRA_FULL_ERROR=1 keeps Hydra's output.
    """
    import hydra._internal.utils as hydra_utils
    from hydra.errors import ConfigCompositionException, OverrideParseException

    report = hydra_utils.run_and_report

    def run_and_report(func):
        def condensed():
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as exc:
                if os.environ.get("HYDRA_FULL_ERROR"):
                    raise
                print(one_line(exc), file=sys.stderr)
                sys.exit(1)

        return report(condensed)

    hydra_utils.run_and_report = run_and_report


def optuna_trial_id(trial) -> int:
    """The storage's ID of a trial the sweeper asked for: what a trial's job needs to report to it from elsewhere.
    (Optuna's `Trial` keeps it private; `trial.number` is per study, the storage's methods take the ID.)"""
    return trial._trial_id


def optuna_trial(study, trial_id: int):
    """The running trial `trial_id` of `study`, in another process than the one that asked for it: Optuna's
    distributed pattern (its docs note the constructor is not meant for everyday use; it is public)."""
    import optuna

    return optuna.trial.Trial(study, trial_id)


def read_xplane(path) -> Any:
    """A TensorFlow profiler trace (`*.xplane.pb`) as its protobuf; TensorFlow has no public reader for it
    (TensorBoard's profile plugin parses the same file)."""
    from pathlib import Path

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    return space


# What Keras imports at its own import and this project never uses from Keras: its scikit-learn wrappers
# (scikit-learn, and SciPy with it) and its image gallery (matplotlib). Keras tries each, and leaves it out when missing.
KERAS_OPTIONAL_IMPORTS = ("sklearn", "matplotlib")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras without the optional modules Keras imports for features this project never uses.

    Keras 3 tries `import sklearn` (its `keras.wrappers`) and `import matplotlib.pyplot` (its
    `keras.visualization`) when it is imported; they took ~0.7 s of the start-up here. Marked as
    missing while TensorFlow imports, Keras leaves those two features out for this process, and
    both modules import normally afterwards (the curve figures, `src.evaluate`'s ROC). Nothing
    happens if TensorFlow is imported already.
    """
    if "tensorflow" in sys.modules:
        return
    blocked = [name for name in KERAS_OPTIONAL_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's "not installed": Keras catches the ImportError
    try:
        import keras  # noqa: F401  (imports TensorFlow: the backend)
        import tensorflow  # noqa: F401
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@contextmanager
def serving_input_check_skipped() -> Iterator[None]:
    """MLflow's `log_model` without its checks that the saved model serves its input example (~0.45 s a model) and
    that this environment satisfies the model's requirements.

    The check reloads the model just saved and predicts on the example; a failure only logs a
    warning, never fails the logging. That these models load and score is tested here instead
    (tests/test_models.py). `Model.log` imports the private helper at each call, so replacing it
    for the block is enough.
    """
    import mlflow.models.utils as model_utils
    import mlflow.utils.environment as environment

    check = model_utils._validate_serving_input
    model_utils._validate_serving_input = lambda model_uri, serving_input: None
    # and its check that the running environment has the model's requirements (~80 ms a model, reading every
    # installed package's metadata): they are this environment's own versions (TrackedRun.log_model)
    requirements_check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        model_utils._validate_serving_input = check
        environment.warn_dependency_requirement_mismatches = requirements_check


def sublayers(model) -> list:
    """Every layer inside a Keras model, nested ones too (Keras 3 has no public walk of them)."""
    return list(model._flatten_layers(include_self=False))


def compose_each_sweep_job_once() -> None:
    """Hydra's sweepers compose every job's config before launching any (to refuse a bad one early) and its
    launchers compose each again to run it: the second composition, the same overrides on the same config, is now
    a copy of the first (0.2–0.4 s a job here). Hydra marks its check "a bit slow for large jobs" (basic_sweeper.py);
    its result is not changed, only not computed twice."""
    from collections import OrderedDict
    from copy import deepcopy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    compose = ConfigLoaderImpl.load_sweep_config
    if getattr(compose, "composes_once", False):
        return
    composed: "OrderedDict[tuple, Any]" = OrderedDict()

    def load_sweep_config(self, master_config, sweep_overrides):
        key = (id(self), id(master_config), tuple(sweep_overrides))
        config = composed.pop(key, None)
        if config is not None:  # as load_sweep_config ends: the master's resolver cache, as it is now
            OmegaConf.copy_cache(from_config=master_config, to_config=config)
            return config
        config = compose(self, master_config, sweep_overrides)
        composed[key] = deepcopy(config)  # its caller may change it (the launcher sets the job's number)
        while len(composed) > 1024:  # a job composed once only (a later batch of a search): its copy goes
            composed.popitem(last=False)
        return config

    load_sweep_config.composes_once = True
    ConfigLoaderImpl.load_sweep_config = load_sweep_config
