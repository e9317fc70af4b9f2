"""Training: the loop and its infrastructure (optimiser groups, checkpoints, distributed, logging, health)."""
