"""Training: the engine (epoch loop), optimizers, LR schedules, precision, checkpoints, runs."""
