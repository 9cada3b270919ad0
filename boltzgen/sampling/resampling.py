"""Resampling of weighted particles: systematic and multinomial, from log weights.

Both functions take unnormalised log weights ``log_w [B]`` (any float dtype; the arithmetic is
float64) and return ancestor indices ``[B]`` (int64, on ``log_w``'s device): particle ``i`` of the
resampled set is a copy of particle ``indices[i]``. The expected number of copies of particle
``j`` is ``B w_j`` with ``w`` the self-normalised weights. A ``-inf`` log weight (weight zero) is
never chosen, whatever the rounding: both samplers invert the same cumulative sum, in which a zero
weight spans an empty interval.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def _cumulative_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Normalised cumulative weights ``[B]`` (float64), non-decreasing, last entry exactly 1."""
    log_w = torch.as_tensor(log_w)
    if log_w.dim() != 1 or log_w.numel() == 0:
        raise ValueError(f"log weights must have shape [B] with B >= 1, got {list(log_w.shape)}")
    log_w = log_w.double()
    if bool(torch.isnan(log_w).any() | (log_w == math.inf).any()):
        raise ValueError("log weights must not contain NaN or +inf (use -inf for weight zero)")
    if not bool(torch.isfinite(log_w).any()):
        raise ValueError("all log weights are -inf: there is nothing to resample from")
    weights = torch.exp(log_w - log_w.max())
    cdf = torch.cumsum(weights, 0)
    # Dividing by the (positive) total keeps the order, maps the total to exactly 1 and keeps the
    # intervals of zero weights empty (cdf[i] == cdf[i - 1] stays an exact equality).
    return cdf / cdf[-1]


def _invert(cdf: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Indices ``i`` with ``cdf[i - 1] <= u < cdf[i]`` for uniforms in [0, 1)."""
    one = torch.ones((), dtype=cdf.dtype, device=cdf.device)
    uniforms = torch.minimum(uniforms, torch.nextafter(one, torch.zeros_like(one)))
    return torch.searchsorted(cdf, uniforms, right=True)


def systematic_resample(log_w: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Systematic resampling: one uniform ``U``, points ``(i + U) / B``; ancestors ``[B]`` int64.

    Particle ``j`` gets either ``floor(B w_j)`` or ``ceil(B w_j)`` copies (exactly ``B w_j`` in
    expectation), the lowest-variance of the standard schemes. Indices come out sorted.

    Args:
        log_w: unnormalised log weights ``[B]``; ``-inf`` means weight zero (never chosen).
        generator: torch random generator on ``log_w``'s device (None: the global RNG).
    """
    cdf = _cumulative_weights(log_w)
    n = cdf.numel()
    u = torch.rand((), dtype=torch.float64, device=cdf.device, generator=generator)
    points = (torch.arange(n, dtype=torch.float64, device=cdf.device) + u) / n
    return _invert(cdf, points)


def multinomial_resample(log_w: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multinomial resampling: ``B`` independent draws from the normalised weights; ancestors ``[B]``.

    Offspring counts are Multinomial(B, w): ``B w_j`` in expectation, variance ``B w_j (1 - w_j)``.

    Args:
        log_w: unnormalised log weights ``[B]``; ``-inf`` means weight zero (never chosen).
        generator: torch random generator on ``log_w``'s device (None: the global RNG).
    """
    cdf = _cumulative_weights(log_w)
    uniforms = torch.rand(cdf.numel(), dtype=torch.float64, device=cdf.device, generator=generator)
    return _invert(cdf, uniforms)


#: Resampling schemes by name (the values of ``SMCConfig.resampling``).
RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}
