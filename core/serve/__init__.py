"""Serving: continuous batching over a paged KV cache, the engine's own scheduler below any
HTTP layer."""
