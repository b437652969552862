"""`python -m src.train`: train one config (or a sweep with `-m`) and track it in MLflow."""

from typing import Optional

import hydra
from omegaconf import DictConfig

from src.core import compat
from src.experiments.job import run_job
from src.experiments.process import exit_130_on_interrupt, prepare_process


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def hydra_job(cfg: DictConfig) -> Optional[dict]:
    """Hydra's task function: one job of a run or a sweep (see `src.experiments.job`)."""
    return run_job(cfg)


def main() -> None:
    """The command: the process prepared as every command's is, then Hydra's run or multirun; 130 on Ctrl-C."""
    prepare_process()
    compat.compose_each_sweep_job_once()  # a sweep composes each job's config once, not twice
    with exit_130_on_interrupt():
        hydra_job()


if __name__ == "__main__":
    main()
