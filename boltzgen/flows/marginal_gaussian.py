"""`TruncatedNormalMarginals`: a fixed elementwise map that gives chosen dims Gaussian marginals.

Stiff coordinates of a molecule (bonds, angles, the nearly fixed offsets between branches
around a bond) fill a tiny part of their normalisation box: a bond's thermal spread is a few
picometres. A flow that starts from a uniform prior on the box must then learn a narrow peak
with its splines, and leaves a broad, high-energy tail. This layer removes that burden (the
"CDF layer" of bgflow): for every *active* dim it maps the flow variable ``v`` in ``[0, 1]``
through the inverse CDF of a normal distribution with the data's mean and standard deviation,
truncated to the dim's range. At initialisation (identity couplings before it) the model then
already has the right mean and width in every stiff dim, and the couplings learn corrections
and correlations. Inactive dims pass through unchanged.

Coordinates ``u`` (the output of ``forward``) live in the unit box of
`~boltzgen.flows.InternalCoordinateTransform`:

- interval dims (bonds, angles): the normal is truncated to ``[0, 1]``;
- circle dims (torsions, period 1): a torsion is made active only when its data stay far from
  the point opposite their circular mean; the normal, centred at that mean, is truncated to
  the full turn ``[mean - 1/2, mean + 1/2]`` and the result is wrapped into ``[0, 1)``. Seen
  from the couplings, the active torsion is an interval variable (the seam lies where there is
  no data), so the couplings must treat it as non-circular: use `coupling_circular_mask`.

Directions (the `Flow` contract): ``forward(v [B, D]) -> (u [B, D], logdet [B])`` with
``logdet = -sum log f(u)`` over active dims, where ``f`` is the truncated-normal density in
``u`` units; ``inverse(u) -> (v, sum log f(u))``. Computations run in float64 (stable in both
tails via the complementary CDF) and return the input dtype. In ``inverse``, an interval value
outside ``[0, 1]`` (zero density) is sent outside ``[0, 1]`` too (by its distance to the
interval), so a unit-box prior still assigns it zero density.

The ends of ``[0, 1]``: ``forward`` clamps ``v`` to ``[e, 1 - e]``, ``e`` the gap below 1 of the
input dtype (2^-24 in float32, 2^-53 in float64). Below that gap float32 cannot tell ``v`` from 1:
a coupling output that rounds to exactly 1 (or a prior draw of exactly 0) would otherwise land on
the truncation bound, which for a stiff bond lies hundreds of standard deviations out, with a
model density so small (log f ~ -10^2 to -10^4) that its importance weight swamps all others. With
the clamp the forward map reaches at most ~5.3 (float32) / ~8.2 (float64) standard deviations; the
tail beyond carries a probability of at most ``e`` per dim, and the log-det stays that of the
point returned.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch

from boltzgen.flows.base import Flow

DEFAULT_CIRCULAR_MARGIN_STD = 5.0
"""A torsion is made active only if its data keep this many standard deviations (plus the
largest observed deviation) away from the point opposite their circular mean."""
MIN_STD = 1e-4
"""Smallest standard deviation (unit-box units) a fitted dim may have."""

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _resolved_end_margin(dtype: torch.dtype) -> float:
    """Distance from the ends of [0, 1] that ``forward`` clamps ``v`` to: the gap between 1 and the
    largest number below 1 in ``dtype`` (2^-24 in float32, 2^-53 in float64)."""
    return torch.finfo(dtype).eps / 2


class TruncatedNormalMarginals(Flow):
    """Elementwise ``v in [0, 1] <-> u`` through truncated-normal CDFs on the active dims.

    Args:
        mean, std: ``[D]`` mean and standard deviation of each dim's normal (``u`` units;
            ignored where inactive).
        active: ``[D]`` bool, the dims that are transformed.
        circular: ``[D]`` bool, the circle dims of ``u`` (period 1).

    Use `fit` to set these from data. Attributes (buffers, saved in ``state_dict``): ``mean``,
    ``std``, ``active``, ``circular`` (all ``[D]``).
    """

    def __init__(
        self,
        mean: Union[torch.Tensor, Sequence[float]],
        std: Union[torch.Tensor, Sequence[float]],
        active: Union[torch.Tensor, Sequence[bool]],
        circular: Union[torch.Tensor, Sequence[bool]],
    ):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std = torch.as_tensor(std, dtype=torch.float64).flatten()
        active = torch.as_tensor(active, dtype=torch.bool).flatten()
        circular = torch.as_tensor(circular, dtype=torch.bool).flatten()
        dim = mean.numel()
        if dim == 0 or any(t.numel() != dim for t in (std, active, circular)):
            raise ValueError("mean, std, active and circular must be non-empty and of one length D")
        if not bool(torch.isfinite(mean[active]).all()) or not bool((std[active] > 0).all()):
            raise ValueError("active dims need a finite mean and a positive std")
        interval_means = mean[active & ~circular]
        if not bool(((interval_means > 0) & (interval_means < 1)).all()):
            raise ValueError("active interval dims need a mean inside (0, 1)")
        self.dim = dim
        self.register_buffer("mean", torch.where(active, mean, 0.5))
        self.register_buffer("std", torch.where(active, std, 1.0))
        self.register_buffer("active", active)
        self.register_buffer("circular", circular)

    @classmethod
    def fit(
        cls,
        u: torch.Tensor,
        circular: Union[torch.Tensor, Sequence[bool]],
        circular_margin: float = DEFAULT_CIRCULAR_MARGIN_STD,
    ) -> "TruncatedNormalMarginals":
        """Fit to data ``u`` ``[M, D]`` in the unit box (circle dims with period 1).

        Every interval dim is active, with the data's mean and std (frames outside ``[0, 1]`` in
        that dim are ignored). A circle dim is active when ``max |d| + circular_margin * std(d)
        < 1/2`` for its deviations ``d`` from the circular mean; its mean is then the circular
        mean plus ``mean(d)``.
        """
        data = u.detach().to(torch.float64)
        if data.ndim != 2 or data.shape[0] < 2:
            raise ValueError(f"fit needs data of shape [M >= 2, D], got {tuple(data.shape)}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("fit needs finite data")
        circular = torch.as_tensor(circular, dtype=torch.bool, device=data.device).flatten()
        if circular.numel() != data.shape[1]:
            raise ValueError(f"circular must have {data.shape[1]} flags, got {circular.numel()}")

        inside = (data >= 0) & (data <= 1)
        count = inside.sum(0).clamp_min(1)
        interval_mean = torch.where(inside, data, 0.0).sum(0) / count
        interval_var = torch.where(inside, (data - interval_mean) ** 2, 0.0).sum(0) / count

        angle = 2.0 * math.pi * data
        centre = torch.atan2(angle.sin().mean(0), angle.cos().mean(0)) / (2.0 * math.pi)
        deviation = torch.remainder(data - centre + 0.5, 1.0) - 0.5
        circular_mean = centre + deviation.mean(0)
        circular_std = deviation.std(0, correction=0)
        unimodal = deviation.abs().max(0).values + circular_margin * circular_std < 0.5

        mean = torch.where(circular, torch.remainder(circular_mean, 1.0), interval_mean)
        std = torch.where(circular, circular_std, interval_var.sqrt()).clamp_min(MIN_STD)
        active = torch.where(circular, unimodal, inside.any(0))
        return cls(mean.cpu(), std.cpu(), active.cpu(), circular.cpu())

    @property
    def coupling_circular_mask(self) -> torch.Tensor:
        """``[D]`` bool: the dims that stay circular on the flow side (circular and inactive)."""
        return self.circular & ~self.active

    # ---------------------------------------------------------------- the map
    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Standardised truncation bounds ``alpha, beta`` and the normal mass between them, ``[D]``
        each (float64)."""
        mean, std = self.mean.double(), self.std.double()
        low = torch.where(self.circular, mean - 0.5, torch.zeros_like(mean))
        high = torch.where(self.circular, mean + 0.5, torch.ones_like(mean))
        alpha, beta = (low - mean) / std, (high - mean) / std
        return alpha, beta, torch.special.ndtr(beta) - torch.special.ndtr(alpha)

    def _log_density(self, xi: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        """log f(u) for standardised ``xi``: normal log-pdf minus log(std * mass inside)."""
        return -0.5 * xi**2 - _LOG_SQRT_2PI - torch.log(self.std.double()) - torch.log(mass)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"TruncatedNormalMarginals expects [B, {self.dim}], got {tuple(x.shape)}")

    def _forward(self, v, context=None):
        self._check(v)
        alpha, beta, mass = self._bounds()
        end = _resolved_end_margin(v.dtype)
        w = v.double().clamp(end, 1.0 - end)
        lower = torch.special.ndtr(alpha) + w * mass
        upper = (1.0 - w) * torch.special.ndtr(-alpha) + w * torch.special.ndtr(-beta)
        xi = torch.where(lower < 0.5, torch.special.ndtri(lower), -torch.special.ndtri(upper))
        xi = torch.minimum(torch.maximum(xi, alpha), beta)
        u = self.mean.double() + self.std.double() * xi
        u = torch.where(self.circular, torch.remainder(u, 1.0), u)
        u = torch.where(self.active, u, v.double())
        logdet = -torch.where(self.active, self._log_density(xi, mass), 0.0).sum(-1)
        return u.to(v.dtype), logdet.to(v.dtype)

    def _inverse(self, u, context=None):
        self._check(u)
        alpha, beta, mass = self._bounds()
        mean, std = self.mean.double(), self.std.double()
        x = u.double()
        x = torch.where(self.circular, mean + torch.remainder(x - mean + 0.5, 1.0) - 0.5, x)
        xi = torch.minimum(torch.maximum((x - mean) / std, alpha), beta)
        from_below = (torch.special.ndtr(xi) - torch.special.ndtr(alpha)) / mass
        from_above = 1.0 - (torch.special.ndtr(-xi) - torch.special.ndtr(-beta)) / mass
        v = torch.where(xi < 0, from_below, from_above)
        outside_low = ~self.circular & (x < 0)
        outside_high = ~self.circular & (x > 1)
        v = torch.where(outside_low, x, torch.where(outside_high, x, v))
        v = torch.where(self.active, v, u.double())
        logdet = torch.where(self.active, self._log_density(xi, mass), 0.0).sum(-1)
        return v.to(u.dtype), logdet.to(u.dtype)

    def extra_repr(self) -> str:
        n_active_circular = int((self.active & self.circular).sum())
        return (
            f"dim={self.dim}, active={int(self.active.sum())} "
            f"(of which circular {n_active_circular})"
        )
