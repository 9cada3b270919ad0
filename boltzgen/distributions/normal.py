"""Diagonal normal prior with a temperature (METHODS.md §6)."""

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


class NormalDistribution(Distribution):
    """N(mean, temperature · std² I) on R^D.

    The temperature scales the variance, so that log q^tau(x) = log q^1(x) / tau + const, the same
    scaling as a Boltzmann density exp(-u / tau) (temperature-steerable flows, METHODS.md §6).

    Args:
        dim: number of dimensions D.
        mean: scalar or ``[D]``.
        std: scalar or ``[D]``, positive; the standard deviation at temperature 1.
        temperature: positive scalar (a buffer: it follows ``.to`` / ``.double``).
    """

    def __init__(
        self,
        dim: int,
        mean: ScalarOrVector = 0.0,
        std: ScalarOrVector = 1.0,
        temperature: float = 1.0,
    ):
        super().__init__(dim)
        dtype = parameter_dtype([mean, std])
        mean = per_dimension(mean, self.dim, "mean", dtype)
        std = per_dimension(std, self.dim, "std", dtype)
        if not torch.isfinite(mean).all():
            raise ValueError("mean must be finite")
        if not (torch.isfinite(std) & (std > 0)).all():
            raise ValueError(f"std must be positive and finite, got {std.tolist()}")
        if not (math.isfinite(float(temperature)) and float(temperature) > 0):
            raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=dtype))
        self._reference = self._reference.to(dtype)

    @property
    def scale(self) -> torch.Tensor:
        """Standard deviation at the current temperature, ``sqrt(temperature) · std``, ``[D]``."""
        return self.temperature.sqrt() * self.std

    def at_temperature(self, temperature: float) -> "NormalDistribution":
        """A copy of this distribution at another temperature (same mean, std, device, dtype)."""
        return NormalDistribution(self.dim, self.mean, self.std, temperature).to(self._device)

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        noise = torch.randn(
            n, self.dim, generator=generator, device=self._device, dtype=self.mean.dtype
        )
        return self.mean + self.scale * noise

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        z = (x - self.mean) / scale
        log_norm = torch.log(scale).sum() + 0.5 * self.dim * math.log(2 * math.pi)
        return -0.5 * z.pow(2).sum(dim=-1) - log_norm
