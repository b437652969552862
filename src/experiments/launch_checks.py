"""The launcher's own settings checked before a sweep makes anything: a pool that cannot run a job, a Ray cluster
that is not there."""

import os
import socket
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from src.core.errors import ConfigError



def check_launcher(config: DictConfig) -> None:
    """Refuse a joblib pool of no workers and a Ray launch with no cluster to join, in one line each."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if launcher.endswith("JoblibLauncher"):
        n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
        if n_jobs == 0:  # joblib's own error comes after the parent run exists, as a traceback
            raise ConfigError("hydra.launcher.n_jobs=0: no worker to run a job; give the number of jobs at once "
                              "(1 or more), or -1 for one per core")
    elif launcher.endswith("ray_launcher.RayLauncher"):
        _check_ray_cluster(OmegaConf.select(config, "hydra.launcher.ray.init.address", default=None))


def _check_ray_cluster(address: Optional[str]) -> None:
    from_env = address and address == os.environ.get("RAY_ADDRESS")
    source = "RAY_ADDRESS" if from_env else "hydra.launcher.ray.init.address"
    how = ("start one with `ray start --head` (then RAY_ADDRESS=127.0.0.1:6379, the address it prints)"
           + (", or unset RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else ""))
    if address in (None, "", "auto"):
        # where `ray start --head` leaves its address, and where Ray's `auto` looks for it
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not current.exists():
            raise ConfigError(f"hydra/launcher=ray: no Ray cluster running on this machine; {how}")
        address, source = current.read_text().strip(), str(current)
    if address == "local" or "://" in address and not address.startswith("ray://"):
        return  # `local` starts a cluster of its own
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"hydra/launcher=ray: no Ray cluster at {source}={address} "
                          f"({getattr(exc, 'strerror', None) or exc}); {how}") from None
