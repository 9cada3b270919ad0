"""Importance weights of generated samples and the Kish effective sample size.

All functions work in log space (float64 internally) so that weights spanning hundreds of orders
of magnitude neither overflow nor underflow. Non-finite log weights (a sample whose energy could
not be evaluated, or that fell outside the flow's support) are dropped and counted, never turned
into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Fraction of the largest log weights dropped by the "filtered" ESS (the convention of the SBG code).
TOP_WEIGHT_FRACTION = 0.002


def log_importance_weights(reduced_energy: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Unnormalised log weights ``log w = -u(x) - log q_X(x)``, shape ``[B]``.

    Args:
        reduced_energy: target energies u(x) in kT, ``[B]``; +inf or NaN marks a failed evaluation.
        log_q: log density of the generator at x, ``[B]``.

    Returns:
        ``[B]`` float64 log weights; entries that are not finite are set to ``-inf`` (weight zero).
    """
    if reduced_energy.shape != log_q.shape or reduced_energy.dim() != 1:
        raise ValueError(
            f"reduced_energy and log_q must both have shape [B], got {list(reduced_energy.shape)} "
            f"and {list(log_q.shape)}"
        )
    log_w = -reduced_energy.double() - log_q.double()
    return torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))


def _as_log_weights(log_w) -> torch.Tensor:
    log_w = torch.as_tensor(log_w).double().reshape(-1)
    if log_w.numel() == 0:
        raise ValueError("ess needs at least one log weight")
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ValueError("log weights must not contain NaN or +inf (use -inf for dropped samples)")
    return log_w


def ess(log_w) -> float:
    """Normalised Kish effective sample size ``(sum w)^2 / (N sum w^2)`` in [0, 1].

    ``N`` counts every sample, including dropped ones (``-inf`` log weights), so dropping a
    sample lowers the ESS exactly as a zero weight would. Returns 0.0 if every weight is zero.
    """
    log_w = _as_log_weights(log_w)
    finite = torch.isfinite(log_w)
    if not finite.any():
        return 0.0
    lw = log_w[finite]
    log_ess = 2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)
    return float(torch.exp(log_ess) / log_w.numel())


def top_weight_mask(log_w, fraction: float = TOP_WEIGHT_FRACTION) -> torch.Tensor:
    """Boolean mask ``[B]`` that is False for the ``ceil(fraction * B)`` largest finite log weights."""
    log_w = _as_log_weights(log_w)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    keep = torch.ones_like(log_w, dtype=torch.bool)
    n_drop = math.ceil(fraction * log_w.numel()) if fraction > 0 else 0
    n_drop = min(n_drop, int(torch.isfinite(log_w).sum()))
    if n_drop:
        keep[torch.topk(log_w, n_drop).indices] = False
    return keep


def ess_filtered(log_w, fraction: float = TOP_WEIGHT_FRACTION) -> float:
    """Kish ESS after dropping the top ``fraction`` of log weights, normalised by the samples kept."""
    log_w = _as_log_weights(log_w)
    return ess(log_w[top_weight_mask(log_w, fraction)])


@dataclass(frozen=True)
class WeightSummary:
    """Diagnostics of a set of log weights (what `summary.json` reports)."""

    n_samples: int
    n_dropped: int
    ess: float
    ess_filtered: float
    filtered_fraction: float

    def as_dict(self) -> dict:
        return {
            "n_samples": self.n_samples,
            "n_dropped": self.n_dropped,
            "ess": self.ess,
            "ess_filtered": self.ess_filtered,
            "ess_filtered_top_fraction": self.filtered_fraction,
        }


def summarize_weights(log_w, fraction: float = TOP_WEIGHT_FRACTION) -> WeightSummary:
    """Counts and both ESS values (raw, and with the top ``fraction`` of weights dropped)."""
    log_w = _as_log_weights(log_w)
    return WeightSummary(
        n_samples=int(log_w.numel()),
        n_dropped=int((~torch.isfinite(log_w)).sum()),
        ess=ess(log_w),
        ess_filtered=ess_filtered(log_w, fraction),
        filtered_fraction=fraction,
    )


def normalized_weights(log_w) -> torch.Tensor:
    """Self-normalised weights ``w / sum w`` (float64, ``[B]``); zero for dropped samples."""
    log_w = _as_log_weights(log_w)
    if not torch.isfinite(log_w).any():
        raise ValueError("all log weights are -inf: no sample has a usable weight")
    return torch.softmax(log_w, 0)
