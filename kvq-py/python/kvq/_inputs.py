"""What kvq's functions accept as an array besides a numpy array, viewed as one without a copy."""

import numpy as np


def as_array(x, what):
    """``(array, bfloat16)`` for ``x``: a CPU torch tensor (detached; a bfloat16 tensor as its
    int16 bits, ``bfloat16`` True, since numpy has no bfloat16) or any DLPack producer, as a numpy
    array sharing its memory. Anything else raises ``TypeError`` naming ``what``; a tensor on
    another device raises ``ValueError``."""
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be an array or a tensor, not {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(
                f"{what} is on {x.device}; kvq's host kernels read CPU memory (.cpu() copies it there)"
            )
        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy(), True
        return x.numpy(), False
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x), False
    raise TypeError(
        f"{what} must be a numpy array, a CPU torch tensor or a DLPack array, not {type(x).__name__}"
    )
