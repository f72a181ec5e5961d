"""Training: the optimizer and LR schedule, and the short, closed training loop."""
