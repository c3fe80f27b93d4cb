"""What the search hands Ray Tune and what watches Tune's trials: the trainable, the reference
trials, the search's limits, how trials end, checkpoint retention, the live table, the Optuna
study and Ray's own output."""
