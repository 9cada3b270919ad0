"""Batched Markov kernels on a reduced energy u(x) (kT): overdamped Langevin, MALA, Metropolis.

Every function works on flat batches ``x [B, D]`` and takes an *energy-like* object: anything
with ``energy(x) -> [B]`` (a `boltzgen.energy.Energy`, a `boltzgen.distributions.Distribution`,
whose ``energy`` is ``-log_prob``, or an `InterpolatedEnergy`). Forces are ``-du/dx`` in kT per
unit of x (kT/nm for molecules). Step sizes ``h`` are in units of x squared (the overdamped
Langevin step ``x + h F + sqrt(2 h) eta`` has a diffusion constant of 1 in reduced time); they
are a float or a ``[B]`` tensor (one per chain).

Infinite or NaN energies (a configuration outside a flow's support, overlapping atoms) are
handled, never propagated as NaN: MALA and Metropolis reject such proposals; the unadjusted
Langevin step returns them and leaves it to the caller to drop and count them. A chain whose
current energy is +inf accepts any finite proposal (it can only get better).
"""

from __future__ import annotations

from typing import Optional, Protocol, Union

import torch

#: A step size: one value, or one per chain ``[B]``.
StepSize = Union[float, torch.Tensor]


class EnergyLike(Protocol):
    def energy(self, x: torch.Tensor) -> torch.Tensor: ...


def _per_chain(step_size: StepSize, x: torch.Tensor) -> torch.Tensor:
    """Step size as a ``[B, 1]`` tensor on x's device and dtype."""
    h = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if h.dim() == 0:
        h = h.expand(x.shape[0])
    if h.shape != (x.shape[0],):
        raise ValueError(f"step_size must be a scalar or have shape [{x.shape[0]}], got {list(h.shape)}")
    if not bool((h > 0).all()):
        raise ValueError("step sizes must be positive")
    return h.unsqueeze(-1)


def energy_and_force(
    energy: EnergyLike, x: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced energy ``[B]`` and force ``-du/dx`` ``[B, D]`` at ``x``.

    With ``create_graph`` the force is differentiable (in ``x`` and in the energy's parameters):
    what training through Langevin steps needs. Otherwise an ``energy_and_force`` method of the
    energy (OpenMM, TorchEnergy) is used when it has one, else autograd. Rows with a non-finite
    energy or force get energy +inf and force 0 (never NaN).
    """
    if not create_graph and hasattr(energy, "energy_and_force"):
        u, f = energy.energy_and_force(x)
    else:
        with torch.enable_grad():
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            u = energy.energy(xg)
            if u.requires_grad:
                (grad,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph, allow_unused=True)
            else:  # e.g. every row outside a flow's support: a constant +inf
                grad = None
        f = -grad if grad is not None else torch.zeros_like(x)
        if not create_graph:
            u = u.detach()
    # a row with a finite energy but a non-finite force is a broken evaluation as well: +inf
    finite = torch.isfinite(u) & torch.isfinite(f).all(-1)
    if not bool(finite.all()):
        u = torch.where(finite, u, torch.full_like(u, torch.inf))
        f = torch.where(finite.unsqueeze(-1), f, torch.zeros_like(f))
    return u, f


def overdamped_langevin_step(
    x: torch.Tensor, force: torch.Tensor, step_size: StepSize, noise: torch.Tensor
) -> torch.Tensor:
    """Euler-Maruyama step of overdamped Langevin dynamics: ``x + h F(x) + sqrt(2 h) noise``.

    Args:
        x: positions ``[B, D]``; force: ``F(x)`` ``[B, D]``; noise: standard normal ``[B, D]``.
    """
    h = _per_chain(step_size, x)
    return x + h * force + torch.sqrt(2 * h) * noise


def overdamped_log_transition(
    x: torch.Tensor, force_x: torch.Tensor, y: torch.Tensor, step_size: StepSize
) -> torch.Tensor:
    """``log q(x -> y)`` ``[B]`` of the Langevin step from x, without its constant
    ``-D/2 log(4 pi h)`` (which cancels in every ratio of a forward and a backward step):
    ``-|y - x - h F(x)|^2 / (4 h)``."""
    h = _per_chain(step_size, x)
    return -((y - x - h * force_x) ** 2).sum(-1) / (4 * h.squeeze(-1))


def _reject_non_finite(log_accept: torch.Tensor, u_new: torch.Tensor) -> torch.Tensor:
    bad = ~torch.isfinite(u_new) | torch.isnan(log_accept)
    return torch.where(bad, torch.full_like(log_accept, -torch.inf), log_accept)


def mala_step(
    energy: EnergyLike,
    x: torch.Tensor,
    u_x: torch.Tensor,
    f_x: torch.Tensor,
    step_size: StepSize,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Metropolis-adjusted Langevin step (leaves exp(-u) invariant), no gradients.

    Args:
        energy: the energy-like target; x ``[B, D]`` with its energy ``u_x [B]`` and force
            ``f_x [B, D]`` (carried between steps so that each step costs one evaluation).
        step_size: h (float or ``[B]``); generator: torch random generator (None: global RNG).

    Returns:
        ``(x_new, u_new, f_new, accepted [B] bool)``.
    """
    with torch.no_grad():
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        y = overdamped_langevin_step(x, f_x, step_size, noise)
        u_y, f_y = energy_and_force(energy, y)
        log_accept = (
            u_x - u_y
            + overdamped_log_transition(y, f_y, x, step_size)
            - overdamped_log_transition(x, f_x, y, step_size)
        )
        log_accept = _reject_non_finite(log_accept, u_y)
        uniform = torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)
        accepted = torch.log(uniform) < log_accept
        keep = accepted.unsqueeze(-1)
        return (torch.where(keep, y, x), torch.where(accepted, u_y, u_x), torch.where(keep, f_y, f_x), accepted)


def metropolis_gaussian_step(
    energy: EnergyLike,
    x: torch.Tensor,
    u_x: torch.Tensor,
    proposal_std: StepSize,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random-walk Metropolis step with an isotropic Gaussian proposal of width ``proposal_std``.

    Differentiable through accepted proposals (``x + std * noise``); the accept decision itself
    is not differentiated. Returns ``(x_new [B, D], u_new [B], accepted [B] bool)``.
    """
    std = torch.as_tensor(proposal_std, dtype=x.dtype, device=x.device)
    std = std.unsqueeze(-1) if std.dim() == 1 else std
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    y = x + std * noise
    u_y = energy.energy(y)
    log_accept = _reject_non_finite((u_x - u_y).detach(), u_y.detach())
    uniform = torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)
    accepted = torch.log(uniform) < log_accept
    return torch.where(accepted.unsqueeze(-1), y, x), torch.where(accepted, u_y, u_x), accepted
