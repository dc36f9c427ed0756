"""The native C kernels (quantized matmul, fused decode step) and their build on first use."""

from plugformer.core.compat import forwarding_getattr

__getattr__ = forwarding_getattr("native")  # contract 1.x names of plugformer.core.native
