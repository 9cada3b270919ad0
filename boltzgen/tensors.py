"""Input validation shared by energies and distributions: flat batches ``[B, D]``."""

from __future__ import annotations

import torch


def check_flat_batch(x, dim: int, owner: str, what: str = "a batch") -> torch.Tensor:
    """Return ``x`` if it is a floating-point ``[B, dim]`` tensor; otherwise raise one clear error.

    Args:
        x: the input to check.
        dim: required number of columns D.
        owner: name of the caller, used in the message (e.g. ``"OpenMMEnergy"``).
        what: how the message calls the input (e.g. ``"positions"``).

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: wrong shape or not floating point.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{owner} expects {what} of shape [batch, {dim}], got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{owner} expects a floating-point tensor, got {x.dtype}")
    return x
