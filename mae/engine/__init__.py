"""One training loop, optimiser helpers, checkpoints and distributed setup for every protocol."""
