"""What a run records about where it came from: its config's digest and params, git state, source, software."""

import hashlib
import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional

from omegaconf import DictConfig

from src.core.config import semantic_part, to_plain
from src.core.redaction import redact
from src.core.schema import IMPLIED_LOOP_PARAMS, LOOP_SCHEMAS, PROJECT_ROOT


def config_digest(cfg: DictConfig) -> str:
    """A digest of everything that changes what a run computes (for resume and reproduce)."""
    semantic = semantic_part(to_plain(cfg))
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]


def flat_params(cfg: DictConfig) -> Dict[str, str]:
    """The resolved config as `section.key` params, without the tracking settings and a trial's identity (tags);
    a loop's params include what it does for the keys only other loops have (IMPLIED_LOOP_PARAMS)."""
    from dataclasses import fields

    params: Dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            params[prefix[:-1]] = redact(str(node))

    plain = {key: value for key, value in to_plain(cfg).items() if key not in ("mlflow", "trial")}
    implied = IMPLIED_LOOP_PARAMS.get(cfg.loop.name, {})
    other_keys = {f.name for schema in LOOP_SCHEMAS.values() for f in fields(schema)} - set(plain["loop"])
    plain["loop"] = {**plain["loop"], **{key: implied[key] for key in sorted(other_keys) if key in implied}}
    walk("", plain)
    return params


OPTION_TAGS = ("loop", "reg", "model", "data")  # the config groups whose option a run is also tagged with


def option_tags(cfg: DictConfig) -> Dict[str, str]:
    """The run's loop, regularizer, model and data options and its task as tags: the UI filters runs by tags
    (`tags.reg = 'l2'`), and a param's column cannot be told apart from the other hundred at a glance."""
    tags = {group: redact(str(cfg[group].name)) for group in OPTION_TAGS}  # a name may be an interpolated secret
    tags["task"] = str(getattr(cfg.task, "value", cfg.task))
    return tags


def git_state() -> Dict[str, str]:
    """The project's git commit and whether the work tree had uncommitted changes."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
    }


def source_tags(command: str) -> Dict[str, str]:
    """What MLflow's UI shows as a run's Source, its User and its git commit: `command` is `src.train`, ..."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        user = f"uid {os.getuid()}"
    return {"mlflow.source.name": command, "mlflow.source.type": "LOCAL", "mlflow.user": user,
            **git_state()}


def software_versions() -> Dict[str, str]:
    import keras
    import mlflow
    import numpy
    import tensorflow as tf

    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "mlflow_version": mlflow.__version__,
        "numpy_version": numpy.__version__,
        "python_version": sys.version.split()[0],
    }
