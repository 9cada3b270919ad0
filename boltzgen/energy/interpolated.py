"""The interpolated energy ``u_lambda = (1 - lambda) u_start + lambda u_end`` of annealing paths."""

from __future__ import annotations

import torch


class InterpolatedEnergy(torch.nn.Module):
    """``u_lambda(x) = (1 - lambda) u_start(x) + lambda u_end(x)`` in kT, shape ``[B]``.

    ``start`` and ``end`` are energy-like objects (``energy(x [B, D]) -> [B]``): an `Energy`, or a
    `Distribution` (whose ``energy`` is ``-log_prob``). At ``lambda = 0`` / ``1`` only one side is
    evaluated, so an end that is infinite somewhere does not poison the other. Where a term that
    is evaluated is +inf the result is +inf (never NaN from ``0 * inf``).
    """

    def __init__(self, start, end, lam: float):
        super().__init__()
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lambda must lie in [0, 1], got {lam}")
        self.start, self.end, self.lam = start, end, float(lam)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        if self.lam == 0.0:
            return self.start.energy(x)
        if self.lam == 1.0:
            return self.end.energy(x)
        return (1.0 - self.lam) * self.start.energy(x) + self.lam * self.end.energy(x)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u_lambda [B]`` and its force ``-du_lambda/dx [B, D]`` (no graph), using each end's own
        ``energy_and_force`` (OpenMM, analytic forces) where it has one, autograd otherwise."""
        if self.lam == 0.0:
            return _energy_and_force(self.start, x)
        if self.lam == 1.0:
            return _energy_and_force(self.end, x)
        u0, f0 = _energy_and_force(self.start, x)
        u1, f1 = _energy_and_force(self.end, x)
        return (1.0 - self.lam) * u0 + self.lam * u1, (1.0 - self.lam) * f0 + self.lam * f1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)

    def extra_repr(self) -> str:
        return f"lambda={self.lam:g}"


def _energy_and_force(energy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(energy, "energy_and_force"):
        return energy.energy_and_force(x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = energy.energy(xg)
        (grad,) = torch.autograd.grad(u.sum(), xg)
    return u.detach(), -grad
