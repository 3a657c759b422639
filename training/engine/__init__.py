"""Training engine: the Trainer, CenterNet losses, evaluation, DDP context."""
