"""Priors on boxes and tori: uniform on a box of intervals, uniform and wrapped normal on a torus."""

from __future__ import annotations

import math
from typing import Optional

import torch

from boltzgen.distributions.base import (
    Distribution,
    ScalarOrVector,
    parameter_dtype,
    per_dimension,
)


class UniformInterval(Distribution):
    """Uniform on the box ``[low_1, high_1] x ... x [low_D, high_D]`` (bounds included).

    ``log_prob`` is ``-sum log(high - low)`` inside the box and ``-inf`` outside (NaN stays NaN).

    Args:
        low, high: ``[D]`` bounds, or scalars together with ``dim``.
        dim: number of dimensions; needed only when both bounds are scalars.
    """

    def __init__(
        self, low: ScalarOrVector = 0.0, high: ScalarOrVector = 1.0, dim: Optional[int] = None
    ):
        dtype = parameter_dtype([low, high])
        low_t = torch.as_tensor(low, dtype=dtype)
        high_t = torch.as_tensor(high, dtype=dtype)
        if dim is None:
            shapes = {tuple(t.shape) for t in (low_t, high_t) if t.dim() > 0}
            if len(shapes) != 1 or len(next(iter(shapes))) != 1:
                raise ValueError(
                    "UniformInterval needs bounds of shape [D] (or scalar bounds and dim), got "
                    f"shapes {list(low_t.shape)} and {list(high_t.shape)}"
                )
            dim = next(iter(shapes))[0]
        super().__init__(dim)
        low_t = per_dimension(low_t, self.dim, "low", dtype)
        high_t = per_dimension(high_t, self.dim, "high", dtype)
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("UniformInterval bounds must be finite")
        if not (high_t > low_t).all():
            raise ValueError(
                f"UniformInterval needs high > low in every dimension, got low={low_t.tolist()}, "
                f"high={high_t.tolist()}"
            )
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self._reference = self._reference.to(dtype)

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        u = torch.rand(n, self.dim, generator=generator, device=self._device, dtype=self.low.dtype)
        return self.low + (self.high - self.low) * u

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        inside = ((x >= self.low) & (x <= self.high)).all(dim=-1)
        log_volume = torch.log(self.high - self.low).sum()
        log_p = torch.where(inside, -log_volume, torch.full_like(log_volume, -float("inf")))
        return torch.where(torch.isnan(x).any(dim=-1), torch.full_like(log_p, float("nan")), log_p)


class UniformTorus(Distribution):
    """Uniform on the torus ``[0, period)^D``; inputs are taken modulo the period.

    ``log_prob`` is ``-sum log(period)`` for every finite input (NaN and inf give NaN); samples lie
    in ``[0, period)``.

    Args:
        dim: number of dimensions D.
        period: positive scalar or ``[D]``.
    """

    def __init__(self, dim: int, period: ScalarOrVector = 1.0):
        super().__init__(dim)
        dtype = parameter_dtype([period])
        period_t = per_dimension(period, self.dim, "period", dtype)
        if not (torch.isfinite(period_t) & (period_t > 0)).all():
            raise ValueError(f"period must be positive and finite, got {period_t.tolist()}")
        self.register_buffer("period", period_t)
        self._reference = self._reference.to(dtype)

    def wrap(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` modulo the period, in ``[0, period)``, shape as ``x``."""
        return torch.remainder(x, self.period)

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        u = torch.rand(
            n, self.dim, generator=generator, device=self._device, dtype=self.period.dtype
        )
        # rand is in [0, 1); the product can round up to the period in low precision.
        return self.wrap(self.period * u)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_p = -torch.log(self.period).sum() + torch.zeros_like(x[:, 0])
        finite = torch.isfinite(x).all(dim=-1)
        return torch.where(finite, log_p, torch.full_like(log_p, float("nan")))


class WrappedNormalTorus(Distribution):
    """Independent wrapped normal distributions on the torus ``[0, period)^D``.

    Coordinate ``i`` is ``(mean_i + std_i z) mod period_i`` with ``z ~ N(0, 1)``: the density
    ``sum_k N(x_i + k period_i; mean_i, std_i^2)`` over the images ``k``, exact to float64
    rounding (the sum runs over ``|k| <= ceil(8 std / period) + 1``, where the neglected terms are
    below ``exp(-32)`` of the largest). Inputs are taken modulo the period; ``log_prob`` is w.r.t.
    Lebesgue measure on the torus (it integrates to 1 over ``[0, period)^D``); NaN or inf inputs
    give NaN. Typical use: positions of molecules around their lattice sites in a periodic box,
    as fractions of the box edges (`boltzgen.flows.rigid_flow.lattice_rigid_prior`).

    Args:
        mean: ``[D]`` (or a scalar with ``dim``), any real values (taken modulo the period).
        std: positive, ``[D]`` or a scalar.
        period: positive, ``[D]`` or a scalar (default 1).
        dim: number of dimensions when ``mean`` is a scalar.
    """

    def __init__(self, mean: ScalarOrVector, std: ScalarOrVector, period: ScalarOrVector = 1.0,
                 dim: Optional[int] = None):
        dtype = parameter_dtype([mean, std, period])
        mean_t = torch.as_tensor(mean, dtype=dtype)
        if dim is None:
            if mean_t.dim() != 1:
                raise ValueError(f"WrappedNormalTorus needs mean of shape [D] (or a scalar and dim), got "
                                 f"shape {list(mean_t.shape)}")
            dim = mean_t.shape[0]
        super().__init__(dim)
        mean_t = per_dimension(mean_t, self.dim, "mean", dtype)
        std_t = per_dimension(std, self.dim, "std", dtype)
        period_t = per_dimension(period, self.dim, "period", dtype)
        if not torch.isfinite(mean_t).all():
            raise ValueError("mean must be finite")
        if not (torch.isfinite(std_t) & (std_t > 0)).all():
            raise ValueError(f"std must be positive and finite, got {std_t.tolist()}")
        if not (torch.isfinite(period_t) & (period_t > 0)).all():
            raise ValueError(f"period must be positive and finite, got {period_t.tolist()}")
        self.register_buffer("period", period_t)
        self.register_buffer("mean", torch.remainder(mean_t, period_t))
        self.register_buffer("std", std_t)
        n_images = int(math.ceil(8.0 * float((std_t / period_t).max()))) + 1
        self.register_buffer("_images", torch.arange(-n_images, n_images + 1, dtype=dtype), persistent=False)
        self._reference = self._reference.to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, images={self._images.numel()}"

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        z = torch.randn(n, self.dim, generator=generator, device=self._device, dtype=self.mean.dtype)
        return torch.remainder(self.mean + self.std * z, self.period)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # nearest image of x - mean in [-period/2, period/2), then the sum over the images
        d = torch.remainder(x - self.mean + 0.5 * self.period, self.period) - 0.5 * self.period
        shifted = (d.unsqueeze(-1) + self._images * self.period.unsqueeze(-1)) / self.std.unsqueeze(-1)
        log_terms = -0.5 * shifted.square() - torch.log(self.std).unsqueeze(-1) - 0.5 * math.log(2 * math.pi)
        log_p = torch.logsumexp(log_terms, dim=-1).sum(dim=-1)
        finite = torch.isfinite(x).all(dim=-1)
        return torch.where(finite, log_p, torch.full_like(log_p, float("nan")))
