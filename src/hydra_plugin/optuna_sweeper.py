"""`hydra/sweeper=optuna`: a search with Optuna's ask/tell API, each trial launched as a job by Hydra's launcher.

Written on Optuna's public API because the published hydra-optuna-sweeper pins optuna < 3; the search space,
objective, pruning and the study's MLflow summary live in `src.experiments.search` and `src.experiments.study_summary`.
"""

import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Asks the study for `n_jobs` trials at a time, launches them, tells it how each ended, `n_trials` in all."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)  # the sweeper's config node (conf/hydra/sweeper/optuna.yaml)
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from optuna.trial import TrialState

        from src.core import compat
        from src.core.errors import JobFailed
        from src.core.runstates import FINISHED, PRUNED
        from src.experiments import search
        from src.experiments.study_summary import record_study
        from src.experiments.sweep_parent import PARENT_ENV

        settings, config = self.settings, self.config
        objective = search.check_settings(settings, config.task)
        fixed, space = search.search_space(arguments, settings.params, self.hydra_context.config_loader)
        search.silence_optuna()
        study_name = settings.study_name or search.new_study_name()
        study = search.open_study(settings, study_name, create=True)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(config, sweep_dir / "multirun.yaml")
        parent_run_id = config.hydra.job.env_set.get(PARENT_ENV)  # the callback's, for this sweep only
        if parent_run_id and search.PARENT_ATTR not in study.user_attrs:
            study.set_user_attr(search.PARENT_ATTR, parent_run_id)
        print(f"optuna study {study_name!r}: {settings.n_trials} trials of {', '.join(space)}; "
              f"{objective.direction} {objective.name}", file=sys.stderr)

        returns, job_idx, failed, trained = [], 0, 0, 0
        while job_idx < settings.n_trials:
            trials = [study.ask(space) for _ in range(min(settings.n_jobs, settings.n_trials - job_idx))]
            batch = [[*fixed, *search.trial_overrides(t.params), f"trial.study={study_name}",
                      f"trial.id={compat.optuna_trial_id(t)}", f"trial.number={t.number}"] for t in trials]
            if job_idx == 0:  # composes each job's config (~0.3 s a trial), which the launcher does again: later
                self.validate_batch_is_legal(batch)  # batches vary only the values of the same keys, of the same kinds
            try:
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM mid-batch: its trials end FAILED in the study, not RUNNING
                for trial in trials:
                    try:
                        study.tell(trial, state=TrialState.FAIL)
                    except Exception:  # told already (a trial that ended before the signal)
                        pass
                raise
            for trial, result in zip(trials, results):
                outcome = result.return_value if result.status == JobStatus.COMPLETED else None
                if outcome is None or outcome["status"] not in (FINISHED, PRUNED):
                    run_id = outcome["run_id"] if outcome else getattr(compat.job_exception(result), "run_id", None)
                    if run_id:  # it trained, then failed (e.g. diverged at this trial's values): the search goes on
                        trained += 1
                        trial.set_user_attr("run_id", run_id)
                    study.tell(trial, state=TrialState.FAIL)
                    failed += 1
                    continue
                trained += 1
                if outcome.get("run_id"):
                    trial.set_user_attr("run_id", outcome["run_id"])  # the trial's MLflow run
                if outcome["status"] == PRUNED:
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    study.tell(trial, objective.value(outcome["history"]))
            returns.append(results)
            job_idx += len(batch)
            if not trained:  # every trial so far failed before training (config, data, store): the rest would too
                break

        summary = record_study(study, objective, parent_run_id, config.mlflow.tracking_uri) \
            if parent_run_id else {}
        if "best_value" in summary:
            print(f"best trial {summary['best_trial']}: {objective.name}={summary['best_value']:.6g} "
                  f"{summary['best_params']}", file=sys.stderr)
        if parent_run_id and config.mlflow.register_best:
            from src.experiments.sweep_parent import register_best_of

            register_best_of(config.mlflow.tracking_uri, parent_run_id, config.mlflow.experiment_name)
        if failed:
            raise JobFailed(f"{failed} of {job_idx} trials failed (see the summary below)")
        return returns

