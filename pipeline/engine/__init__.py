"""Training loop, checkpoints, inference and evaluation."""
