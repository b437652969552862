"""Overfit lab: Hydra-configured, MLflow-tracked TensorFlow experiments on HIGGS."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries the job log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's HTTP client retries a dead server 7 times with doubling waits (minutes, with Ctrl-C
# held while a run is being closed); runs wait out store trouble themselves (mlflow.retry_seconds).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
# MLflow's usage telemetry phones home from every process (and waits for it at exit); this project
# sends nothing off the machine.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
