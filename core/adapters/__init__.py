"""Adapters (LoRA, DoRA, third-party kinds) on any model: choosing layers, wrapping them,
PEFT's directory format both ways, routing per batch row, and folding into the weights."""
