"""MLP plugins: the feed-forward part of a decoder block (gated, plain, mixture of experts)."""
