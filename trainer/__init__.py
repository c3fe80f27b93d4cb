"""Pix2Pix trainer: networks, paired data, metrics and a resumable training loop.

Knows nothing of Ray, Optuna or W&B; callers drive `trainer.loop.train`, a generator of epoch results.
"""
