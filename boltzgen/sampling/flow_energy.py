"""`FlowEnergy`: a generator's density as an energy, ``E_flow(x) = -log q_X(x)`` (kT).

This is the start of the SMC annealing path ``E_t = (1 - t) E_flow + t E_target`` and can serve as
a potential for molecular dynamics (its force ``grad log q_X`` by autograd through the flow's
inverse). Only ``generator.log_prob`` is needed, so a `BoltzmannGenerator`, a bare
`Distribution` or any object with ``log_prob(x [B, D]) -> [B]`` works.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch


def _infer_dim(generator) -> Optional[int]:
    """Configuration dimension D_x of ``generator``, if it can be read off it."""
    target = getattr(generator, "target", None)
    if target is not None and getattr(target, "dim", None) is not None:
        return int(target.dim)
    if getattr(generator, "dim", None) is not None:
        return int(generator.dim)
    prior = getattr(generator, "prior", None)
    if prior is not None and getattr(prior, "dim", None) is not None:
        return int(prior.dim)
    return None


class FlowEnergy:
    """Energy-like view ``energy(x [B, D]) -> -log q_X(x) [B]`` of a generator's log density.

    Non-finite log densities (NaN from an inverse that left the flow's domain, ``-inf`` outside
    its support, or a singular ``+inf``) become ``+inf``: the configuration has weight zero under
    any path energy built from it, and the Langevin / Metropolis kernels of
    `boltzgen.dynamics.kernels` reject it or give it a zero force (they never see a NaN). The
    energy is differentiable in ``x`` (and in the generator's parameters) wherever it is finite.

    Args:
        generator: object with ``log_prob(x [B, D]) -> [B]`` (a `BoltzmannGenerator`, a
            `Distribution`, ...). Evaluated in chunks of ``generator.chunk_size`` if it has one.
        dim: configuration dimension D; by default read from ``generator.target.dim``,
            ``generator.dim`` or ``generator.prior.dim`` (in that order). For generators whose
            latent and configuration dimensions differ, give it (or give the target).
        support: optional ``x [B, D] -> bool [B]``, True inside the generator's support. Rows
            outside get ``log q = -inf`` without calling ``log_prob`` on them (flows whose layers
            reject inputs outside their domain, e.g. the molecular flows: see
            `boltzgen.job.model.in_support`).
        temperature: K at which the reduced energy ``-log q`` is read as ``U / kT`` (None: a
            dimensionless energy). With it the flow potential drives molecular dynamics in
            physical units (`boltzgen.dynamics`: kJ/mol = kT x reduced energy).

    Attributes:
        dim: D (None if unknown).
        n_evaluations: number of configurations evaluated so far (a cost counter).
    """

    def __init__(self, generator, dim: Optional[int] = None, support: Optional[Callable] = None,
                 temperature: Optional[float] = None):
        if not callable(getattr(generator, "log_prob", None)):
            raise TypeError(f"FlowEnergy needs an object with log_prob(x), got {type(generator).__name__}")
        self.generator = generator
        self.support = support
        self.temperature = None if temperature is None else float(temperature)
        self.dim = int(dim) if dim is not None else _infer_dim(generator)
        self.n_evaluations = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's ``log q_X(x)`` ``[B]``, with non-finite values replaced by ``-inf``."""
        if x.dim() != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(f"FlowEnergy expects x of shape [batch, {self.dim}], got {list(x.shape)}")
        if self.support is not None:
            inside = torch.as_tensor(self.support(x.detach()), device=x.device)
            log_q = torch.full(x.shape[:1], -math.inf, dtype=x.dtype, device=x.device)
            if bool(inside.any()):
                log_q = log_q.index_put((inside.nonzero().flatten(),), self._log_prob(x[inside]))
        else:
            log_q = self._log_prob(x)
        return torch.where(torch.isfinite(log_q), log_q, torch.full_like(log_q, -math.inf))

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        chunk = int(getattr(self.generator, "chunk_size", 0) or 0)
        if chunk > 0 and x.shape[0] > chunk:
            log_q = torch.cat([self.generator.log_prob(part) for part in torch.split(x, chunk)])
        else:
            log_q = self.generator.log_prob(x)
        self.n_evaluations += int(x.shape[0])
        return log_q

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``-log q_X(x)`` ``[B]`` in kT; ``+inf`` where the log density is not finite."""
        return -self.log_prob(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def __repr__(self) -> str:
        return f"FlowEnergy({type(self.generator).__name__}, dim={self.dim})"
