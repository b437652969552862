"""Training, MLflow-free: the models, the twin loops (fit and tape), early stopping, devices and checkpoints."""
