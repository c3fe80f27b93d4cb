"""Ray Tune + Optuna search over the trainer, W&B logging, export and reports."""
