"""How stiff a potential is where it matters for MD: the highest normal-mode frequency at a configuration.

Velocity Verlet on a harmonic mode of angular frequency ``omega`` is stable only for
``omega dt < 2`` and conserves energy well for ``omega dt`` well below 1 (force fields with
flexible X-H bonds sit near 0.6 at 1 fs). A learned potential (``-kT log q`` of a flow) can be
much stiffer than the force field it imitates in places, which shows up as energy drift in NVE;
`highest_frequency` measures that directly.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from boltzgen.dynamics.integrators import _energy_scale, per_coordinate_masses

__all__ = ["highest_frequency"]


def highest_frequency(
    energy,
    x: torch.Tensor,
    masses: Optional[Union[Sequence[float], torch.Tensor]] = None,
    n_iterations: int = 100,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Largest ``|eigenvalue|`` of the mass-weighted Hessian ``M^-1/2 H M^-1/2``, as a frequency.

    Power iteration with Hessian-vector products (double backward through ``energy.energy``),
    one chain per configuration.

    Args:
        energy: an `Energy`-like object whose ``energy(x)`` is twice differentiable; its
            ``temperature`` attribute (if any) turns kT into kJ/mol.
        x: configurations ``[B, D]`` (nm).
        masses: per-atom ``[D / 3]`` or per-coordinate ``[D]`` masses (amu); None: all 1.
        n_iterations: power-iteration steps (the estimate approaches the true value from below).
        generator: random start vectors.

    Returns:
        ``sqrt(|lambda_max|)`` ``[B]`` in 1/ps (angular frequency) for kJ/mol, nm and amu; in
        reduced units otherwise. A negative curvature (saddle) of the largest magnitude counts by
        its magnitude.
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape [batch, dim], got {list(x.shape)}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be positive, got {n_iterations}")
    inverse_sqrt_m = per_coordinate_masses(masses, x.shape[1], x.dtype, x.device).rsqrt()
    scale = _energy_scale(energy)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        u = energy.energy(xg) * scale
        if not bool(torch.isfinite(u).all()):
            raise ValueError("highest_frequency needs configurations with finite energies")
        (gradient,) = torch.autograd.grad(u.sum(), xg, create_graph=True)
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        eigenvalue = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(n_iterations):
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            (hv,) = torch.autograd.grad(gradient, xg, grad_outputs=v * inverse_sqrt_m, retain_graph=True)
            hv = hv * inverse_sqrt_m
            eigenvalue = (hv * v).sum(-1)
            v = hv.detach()
    return eigenvalue.detach().abs().sqrt()
