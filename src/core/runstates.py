"""The states a run or a job ends in, in MLflow's words where MLflow has them: one vocabulary for every module."""

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"  # MLflow's run statuses
SKIPPED = "SKIPPED"  # a job that `resume=true` found FINISHED already: no run made
PRUNED = "PRUNED"  # a search's trial its pruner stopped: a result, not a failure (its MLflow run ends FINISHED)
