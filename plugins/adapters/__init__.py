"""Built-in adapter plugins: LoRA and DoRA."""
