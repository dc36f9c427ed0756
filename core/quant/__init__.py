"""Quantized linear layers: layout, kernels, packing, calibration (GPTQ/RTN), load and save."""

from plugformer.core.compat import forwarding_getattr

__getattr__ = forwarding_getattr("quant")  # contract 1.x names of plugformer.core.quant
