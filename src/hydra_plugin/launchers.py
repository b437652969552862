"""`hydra/launcher=joblib` and `hydra/launcher=submitit_local` as the plugins' own, with what they miss: a joblib
worker killed from outside fails its own job only (`src.experiments.worker_pool`), and an interrupt of the sweep
(Ctrl-C, SIGTERM, SIGHUP) stops every job process before the sweep ends, so none trains on, orphaned."""

import logging
from pathlib import Path
from typing import List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as PluginJoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as PluginLocalLauncher
from omegaconf import open_dict

log = logging.getLogger(__name__)


class JoblibLauncher(PluginJoblibLauncher):
    """joblib's settings, each job running at once in a loky worker of its own (at most `n_jobs`), which then runs the
    next job (a dead one is replaced)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.hydra_joblib_launcher._core import execute_job  # joblib's import: only when used

        from src.experiments.worker_pool import pool_size, run_in_own_workers

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        n_jobs = pool_size(self.joblib.get("n_jobs"))
        log.info(f"Joblib launching {len(job_overrides)} jobs, {n_jobs} at once, each in a worker of its own at a time")
        log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        calls = [(initial_job_idx + idx, overrides, self.hydra_context, self.config, self.task_function, state)
                 for idx, overrides in enumerate(job_overrides)]
        return run_in_own_workers(execute_job, calls, n_jobs,
                                  lambda i, pids, how: lost_job_return(self, calls[i][0], calls[i][1], pids, how))


class LocalLauncher(PluginLocalLauncher):
    """submitit_local's, with the job processes an interrupt of the sweep ends too (submitit leaves them running),
    and a job process killed from outside failing its own job only (submitit's results would raise for the sweep)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from src.core.interrupts import signals_blocked
        from src.experiments.worker_pool import stop_children

        try:
            jobs = self._submit(job_overrides, initial_job_idx)
            return [self._result(job, initial_job_idx + i, job_overrides[i]) for i, job in enumerate(jobs)]
        except KeyboardInterrupt:
            # submitit's controller forwards SIGTERM to its job, whose run ends KILLED (SIGINT it would follow
            # with SIGKILL within a second, before the run is closed)
            with signals_blocked():
                stop_children("submitit.local._local")
            raise

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """The plugin's own submission (its `launch` but for the results), one submitit job per Hydra job."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = dict(self.params)
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()
                                      if k not in ("max_num_timeout", "submitit_folder")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        calls = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            calls.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*calls))

    def _result(self, job, idx: int, overrides: Sequence[str]) -> JobReturn:
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError:  # its process died without a result: this job's failure, not the sweep's
            return lost_job_return(self, idx, overrides, [], "ended without a result")


def lost_job_return(launcher, idx: int, overrides: Sequence[str], pids: List[int], how: str) -> JobReturn:
    """The failed JobReturn of a job whose worker died, its run and result ended FAILED first."""
    from src.experiments.lost_jobs import fail_lost_job
    from src.experiments.sweep_parent import PARENT_ENV

    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.num = idx
    output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    error = fail_lost_job(idx, output_dir, pids, how, config.mlflow.tracking_uri,
                          config.hydra.job.env_set.get(PARENT_ENV))
    log.error(str(error))
    ret = JobReturn(overrides=list(overrides), cfg=config, hydra_cfg=config, working_dir=str(output_dir),
                    task_name=config.hydra.job.name, status=JobStatus.FAILED)
    ret.return_value = error
    return ret
