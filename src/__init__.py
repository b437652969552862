"""Overfit lab: Hydra-configured, MLflow-tracked TensorFlow experiments on HIGGS."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries the job log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
