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


class WatsonS3(Distribution):
    """Orientations concentrated around given ones: K independent Watson distributions on S^3.

    Quaternion k has the density (w.r.t. the surface measure of S^3)

        p(q) = exp(kappa_k ((q . mu_k)^2 - 1)) / C(kappa_k),   C(kappa) = 2 pi^2 (i0e(kappa / 2) - i1e(kappa / 2))

    (``i0e``, ``i1e`` the exponentially scaled modified Bessel functions; the closed form of
    ``int exp(kappa (t^2 - 1)) dsigma``), even in ``q``, so it is a density on rotations (SO(3), see
    :class:`UniformS3`). Near ``+-mu`` it is Gaussian in the rotation from ``R(mu)``:
    ``(q . mu)^2 = cos^2(theta / 2) ~ 1 - theta^2 / 4`` for a rotation by ``theta``, so the rotation
    vector has independent normal components of standard deviation ``sqrt(2 / kappa)`` rad (the
    constructor takes that ``rotation_std``). ``kappa -> 0`` is the uniform distribution.

    Sampling is exact: rejection from an angular central Gaussian envelope (Kent, Ganeiber & Mardia
    2013, the Bingham sampler), acceptance rate 45 % or more for every concentration.
    ``log_prob`` is ``-inf`` off the sphere (norms beyond ``tolerance``) and NaN for NaN inputs.

    Args:
        means: ``[K, 4]`` quaternions ``(w, x, y, z)`` (normalised here; sign irrelevant).
        rotation_std: rad, a scalar or ``[K]``, > 0: ``kappa = 2 / rotation_std^2``.
        tolerance: allowed deviation of each block's norm from 1.

    Shapes: flat ``[B, 4K]``, quaternion k in columns ``4k .. 4k + 3``.
    """

    def __init__(self, means: torch.Tensor, rotation_std, tolerance: float = 1e-5):
        dtype = means.dtype if isinstance(means, torch.Tensor) and means.is_floating_point() else torch.get_default_dtype()
        means = torch.as_tensor(means, dtype=dtype)
        if means.dim() != 2 or means.shape[1] != 4 or means.shape[0] == 0:
            raise ValueError(f"means must be [K, 4] quaternions, got shape {list(means.shape)}")
        norms = torch.linalg.vector_norm(means, dim=-1, keepdim=True)
        if not (torch.isfinite(means).all() and (norms > 0).all()):
            raise ValueError("means must be finite, non-zero quaternions")
        super().__init__(4 * means.shape[0])
        self.n_quaternions = int(means.shape[0])
        std = torch.as_tensor(rotation_std, dtype=dtype).detach().clone()
        std = std.expand(self.n_quaternions).clone() if std.dim() == 0 else std
        if std.shape != (self.n_quaternions,) or not (torch.isfinite(std) & (std > 0)).all():
            raise ValueError(f"rotation_std must be a scalar or [{self.n_quaternions}] positive values, got {std.tolist()}")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {tolerance!r}")
        kappa = 2.0 / std.double().square()
        half = 0.5 * kappa
        log_norm = math.log(S3_AREA) + torch.log(torch.special.i0e(half) - torch.special.i1e(half))
        # envelope of the sampler: b solves 1 / b + 3 / (b + 2 kappa) = 1 (4 dimensions, eigenvalues 0, kappa x 3),
        # i.e. b^2 + (2 kappa - 4) b - 2 kappa = 0; b = 4 at kappa = 0 (the uniform case, always accepted)
        b = 0.5 * (4.0 - 2.0 * kappa + torch.sqrt((2.0 * kappa - 4.0).square() + 8.0 * kappa))
        self.register_buffer("means", means / norms)
        self.register_buffer("kappa", kappa.to(dtype))
        self.register_buffer("log_normaliser", log_norm.to(dtype))
        self.register_buffer("_envelope_b", b.to(dtype), persistent=False)
        self.tolerance = float(tolerance)
        self._reference = self._reference.to(dtype)

    def extra_repr(self) -> str:
        return f"n_quaternions={self.n_quaternions}"

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Exact samples ``[n, 4K]``: angular central Gaussian proposals ``x / |x|``,
        ``x ~ N(0, Omega^-1)``, ``Omega = 1 + 2 kappa (1 - mu mu^T) / b``, accepted with probability
        ``exp(-y) (1 + 2 y / b)^2 / M``, ``y = kappa (1 - (x . mu)^2)``, ``M = exp(-(4 - b) / 2) (4 / b)^2``."""
        out = torch.empty(n, self.n_quaternions, 4, device=self._device, dtype=self.means.dtype)
        b = self._envelope_b
        scale = torch.rsqrt(1.0 + 2.0 * self.kappa / b)  # Omega^(-1/2) across mu
        log_m = -(4.0 - b) / 2.0 + 2.0 * torch.log(4.0 / b)
        for k in range(self.n_quaternions):
            mu, done = self.means[k], 0
            while done < n:
                m = max(16, int(2.5 * (n - done)))
                z = torch.randn(m, 4, generator=generator, device=self._device, dtype=self.means.dtype)
                along = z @ mu
                x = along[:, None] * mu + scale[k] * (z - along[:, None] * mu)
                x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
                y = self.kappa[k] * (1.0 - (x @ mu).square())
                log_ratio = -y + 2.0 * torch.log1p(2.0 * y / b[k]) - log_m[k]
                u = torch.rand(m, generator=generator, device=self._device, dtype=self.means.dtype)
                accepted = x[torch.log(u) < log_ratio][: n - done]
                out[done : done + len(accepted), k] = accepted
                done += len(accepted)
        return out.reshape(n, self.dim)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        q = x.reshape(x.shape[0], self.n_quaternions, 4)
        norms = torch.linalg.vector_norm(q, dim=-1)
        cos2 = ((q * self.means).sum(-1) / norms).square().clamp(max=1.0)
        log_p = (self.kappa * (cos2 - 1.0) - self.log_normaliser).sum(-1)
        on_sphere = ((norms - 1.0).abs() <= self.tolerance).all(dim=-1)
        log_p = torch.where(on_sphere, log_p, torch.full_like(log_p, -float("inf")))
        return torch.where(torch.isnan(x).any(dim=-1), torch.full_like(log_p, float("nan")), log_p)
