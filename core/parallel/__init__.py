"""torch.distributed plumbing and the tensor- and pipeline-parallel cutting of a built decoder."""

from plugformer.core.compat import forwarding_getattr

__getattr__ = forwarding_getattr("parallel")  # contract 1.x names of plugformer.core.parallel
