"""Encoders, heads, losses, config, the DeepSpeed training loop, checkpoints, export, MLflow logging."""
