"""Uniform distribution of rigid-body orientations: unit quaternions on (S^3)^K."""

from __future__ import annotations

import math
from typing import Optional

import torch

from boltzgen.distributions.base import Distribution

#: Surface area of the unit sphere S^3 in R^4.
S3_AREA = 2.0 * math.pi**2


class UniformS3(Distribution):
    """Uniform on ``(S^3)^K`` w.r.t. the surface measure: ``K`` independent random unit quaternions.

    Points are flat ``[B, 4K]`` batches, quaternion k in columns ``4k .. 4k + 3`` as
    ``(w, x, y, z)`` (:mod:`boltzgen.flows.quaternions`). ``log_prob`` is ``-K log(2 pi^2)``
    (``2 pi^2`` is the area of S^3) when every block has unit norm to within ``tolerance``, and
    ``-inf`` otherwise (NaN inputs give NaN).

    SO(3) semantics: S^3 double-covers SO(3) (``q`` and ``-q`` are the same rotation), and the
    uniform distribution on S^3 is mapped to the uniform (Haar) distribution on SO(3). Its density
    w.r.t. the normalised Haar measure of SO(3) is 1 (log 1 = 0 per rotation); the value returned
    here, ``1 / (2 pi^2)`` per quaternion, is the density on S^3 w.r.t. its surface measure, which
    is the one that matches the log-volume changes of flows on S^3
    (:class:`~boltzgen.flows.mobius.QuaternionMobiusTransformer`). Samples are Gaussian vectors
    normalised per block (exactly uniform by rotational invariance), both signs equally likely.

    Args:
        n_quaternions: number K of quaternions; ``dim = 4K``.
        tolerance: allowed deviation of each block's norm from 1.
    """

    def __init__(self, n_quaternions: int, tolerance: float = 1e-5):
        if isinstance(n_quaternions, bool) or int(n_quaternions) != n_quaternions or (
            int(n_quaternions) <= 0
        ):
            raise ValueError(f"n_quaternions must be a positive integer, got {n_quaternions!r}")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {tolerance!r}")
        super().__init__(4 * int(n_quaternions))
        self.n_quaternions = int(n_quaternions)
        self.tolerance = float(tolerance)

    def extra_repr(self) -> str:
        return f"n_quaternions={self.n_quaternions}"

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``[n, 4K]`` unit quaternions, uniform on (S^3)^K."""
        gaussian = torch.randn(
            n, self.n_quaternions, 4, generator=generator, device=self._device, dtype=self._dtype
        )
        unit = gaussian / torch.linalg.vector_norm(gaussian, dim=-1, keepdim=True)
        return unit.reshape(n, self.dim)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]``: ``-K log(2 pi^2)`` on (S^3)^K, ``-inf`` off it, NaN for NaN inputs."""
        norms = torch.linalg.vector_norm(x.reshape(x.shape[0], self.n_quaternions, 4), dim=-1)
        on_sphere = ((norms - 1.0).abs() <= self.tolerance).all(dim=-1)
        log_p = torch.full_like(x[:, 0], -self.n_quaternions * math.log(S3_AREA))
        log_p = torch.where(on_sphere, log_p, torch.full_like(log_p, -float("inf")))
        return torch.where(torch.isnan(x).any(dim=-1), torch.full_like(log_p, float("nan")), log_p)
