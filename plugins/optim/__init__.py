"""Built-in optimizer and learning-rate schedule plugins."""
