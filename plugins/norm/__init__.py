"""Norm plugins: the normalisation layers of the decoder (RMSNorm, LayerNorm)."""
