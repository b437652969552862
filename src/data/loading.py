"""A data option's rows: its `_target_` loader called with the option's own keys, its result checked."""

import dataclasses
import inspect

from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError, first_line
from src.data.splits import Splits

FRAMEWORK_KEYS = ("_target_", "name", "task", "batch_size")  # a data option's keys that are not the loader's


def load_data(data: DictConfig, *, progress: bool = False) -> Splits:
    """The loader's training and validation rows: `Splits`, or ((x_train, y_train), (x_val, y_val)) arrays.

    The loader is called as loader(**the option's other keys), and with `progress` if it takes it.
    """
    from hydra.utils import get_method

    try:
        loader = get_method(data._target_)
    except Exception as exc:  # Hydra's ImportError wrapper: the module or the name is missing
        raise ConfigError(f"data._target_={data._target_}: cannot be imported ({first_line(exc.__cause__ or exc)}); "
                          "put its module "
                          "on PYTHONPATH or in the working directory") from None
    kwargs = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k not in FRAMEWORK_KEYS}
    parameters = inspect.signature(loader).parameters
    if "progress" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        kwargs["progress"] = progress
    try:
        inspect.signature(loader).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"data={data.name}: {data._target_} cannot be called with {', '.join(kwargs) or 'no argument'}"
                          f" ({first_line(exc)})") from None
    got = loader(**kwargs)
    if isinstance(got, Splits):  # a built-in loader's, checked as it read them; named as the option is
        return got if got.name == data.name else dataclasses.replace(got, name=data.name)
    try:
        train, validation = got
    except (TypeError, ValueError):
        raise ConfigError(f"data={data.name}: {data._target_} returned {type(got).__name__}; a loader returns "
                          "Splits or ((x_train, y_train), (x_val, y_val))") from None
    return Splits.of(train, validation, source=data._target_, name=data.name)
