"""The command-line commands beyond generate/chat: bench, quantize, eval."""
