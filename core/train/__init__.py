"""The training wing: the training loop, data readers, checkpoints and resume."""
