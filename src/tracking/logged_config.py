"""The config a run logged, rebuilt on today's schema: what reproduce reruns and evaluate reads its data settings from."""

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.core.config import compose_config, is_semantic
from src.core.errors import UserError, first_line
from src.tracking.store import CONFIG_ARTIFACT, CONFIG_DIRS_TAG, DIGEST_TAG, is_sweep_parent

GROUPS = ("model", "reg", "loop", "data", "optimizer")  # the config groups whose option a run's config names


class ReproduceError(UserError):
    """A run that cannot be reproduced: unknown, foreign, or without a usable config."""


def logged_config(client, run, *, on_parent: str = "reproduce its children with --sweep {run_id}"
                  ) -> Tuple[DictConfig, Dict[str, Any], Dict[str, Any]]:
    """The run's `config.yaml` rebuilt on today's schema, with the keys filled and dropped (key -> value).
    `on_parent`: what the calling command says to do instead with a sweep's parent ({run_id} filled in)."""
    run_id = run.info.run_id
    if is_sweep_parent(run):
        raise ReproduceError(f"run {run_id} is a sweep parent; {on_parent.format(run_id=run_id)}")
    if DIGEST_TAG not in run.data.tags:
        raise ReproduceError(f"run {run_id}: not a run of this project (no {DIGEST_TAG} tag)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, dst_path=tmp)).read_text()
        except Exception:  # MLflow raises its own or OSError, depending on the artifact store
            raise ReproduceError(f"run {run_id}: no {CONFIG_ARTIFACT} artifact, so its config is unknown") from None
    try:
        logged = OmegaConf.create(text)
    except Exception as exc:  # YAML's own errors
        first = first_line(exc)
        raise ReproduceError(f"run {run_id}: its {CONFIG_ARTIFACT} is not valid YAML ({first})") from None
    try:
        return rebuild_config(logged, json.loads(run.data.tags.get(CONFIG_DIRS_TAG, "[]")))
    except (OmegaConfBaseException, ValueError, UserError) as exc:
        first = first_line(exc)
        raise ReproduceError(f"run {run_id}: {CONFIG_ARTIFACT} does not fit this project's config: {first}") from None
    except Exception as exc:  # Hydra's composition errors (e.g. an option removed since) share no base class
        first = first_line(exc)
        raise ReproduceError(f"run {run_id}: its config options do not compose today: {first}") from None


def rebuild_config(logged: DictConfig, config_dirs: Sequence[str] = ()) -> Tuple[DictConfig, Dict[str, Any], Dict[str, Any]]:
    """Today's config for the logged group options (found in conf/ and in the run's own `config_dirs`: its
    `--config-dir`), with every logged value laid over it (type-checked).

    Returns the config, the keys the run did not log (schema gained since: today's value),
    and the logged keys today's schema lacks (lost since: ignored).
    """
    if not isinstance(logged, DictConfig):
        raise ValueError("not a YAML mapping")
    options = [f"{group}={logged[group].name}" for group in GROUPS if OmegaConf.select(logged, f"{group}.name")]
    cfg = compose_config(options, search_path=config_dirs)
    OmegaConf.resolve(cfg)
    logged_leaves, today_leaves = _leaves(OmegaConf.to_container(logged)), _leaves(OmegaConf.to_container(cfg))
    dropped = {key: value for key, value in logged_leaves.items() if key not in today_leaves}
    filled = {key: value for key, value in today_leaves.items() if key not in logged_leaves}
    for key, value in logged_leaves.items():
        if key not in dropped and not key.startswith("trial."):  # a rerun is never a search's trial again
            OmegaConf.update(cfg, key, value, merge=False)  # the schema checks the type, as at compose time

    def computes(key: str) -> bool:  # tracking settings and the like change no number: not worth a warning
        return is_semantic(key)

    return cfg, {k: v for k, v in filled.items() if computes(k)}, {k: v for k, v in dropped.items() if computes(k)}


def _leaves(node: Any, prefix: str = "") -> Dict[str, Any]:
    """`a.b.c` -> value for every non-mapping value of a nested dict (lists are values)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    found: Dict[str, Any] = {}
    for key, value in node.items():
        found.update(_leaves(value, f"{prefix}{key}."))
    return found
