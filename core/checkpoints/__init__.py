"""Checkpoint readers (safetensors, GGUF) and loading a checkpoint into a built decoder."""
