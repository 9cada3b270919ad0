"""Stochastic normalising flow blocks (Wu, Köhler & Noé, NeurIPS 2020): MC and Langevin layers.

A stochastic normalising flow (SNF) moves ``z = x_0 -> x_1 -> ... -> x_T`` through deterministic
layers and stochastic blocks. Its importance weight against ``exp(-u_X)`` is

    log w = -u_X(x_T) + u_Z(z) + sum_t dS_t,    dS_t = log q_back(x_{t+1} -> x_t) - log q_fwd(x_t -> x_{t+1}),

with ``u_Z = -log q_Z`` (normalised) and ``dS = log |det J|`` for a deterministic layer. For ANY
parameters, ``E[w] = Z_X`` (with a normalised prior) and self-normalised averages are unbiased
(consistent) estimates of equilibrium averages.

Convention (so that `BoltzmannGenerator` needs no change). A block is a `Flow`:

- ``forward(x) -> (y, dS [B])``: runs the block's forward kernel from ``x`` and returns the path
  log-ratio ``dS`` of the path it drew, in the place of a log-determinant. Then the generator's
  ``log q = log q_Z(z) - sum logdet`` and ``log w = -u - log q = -u + u_Z + sum dS``.
- ``inverse(y) -> (x, D [B])``: draws a path ``y = x_T -> ... -> x_0`` with the block's
  *backward* kernel and returns ``D = log q_fwd(path) - log q_back(path)`` (minus the ``dS`` of that
  path read forwards; for a deterministic map ``D = log |det dx/dy|``, as for any flow). So
  ``generator.log_prob(x) = log q_Z(x_0) + sum D`` is the log of an unbiased estimate of
  ``q_X(x)``: ``E[exp(log_prob(x))] = q_X(x)``, hence ``E[log_prob(x)] <= log q_X(x)`` (Jensen), and
  ``nll_loss`` is the backward-path NLL of the SNF paper, an upper bound (in expectation) of the
  exact NLL. Each block's backward kernel is its own forward kernel (detailed balance for MC;
  the Langevin step from the other end for overdamped Langevin; the same integrator on flipped
  velocities for underdamped Langevin), and ``D``, written in the order of execution, is the same
  expression as ``dS``; so ``inverse`` runs the same procedure as ``forward``.

Blocks (reduced units: energies in kT, unit mass, unit diffusion constant):

- :class:`MetropolisBlock`: random-walk Metropolis with Gaussian proposals of std ``step_size``
  (units of x) targeting ``exp(-u)``: ``dS = u(x_end) - u(x_start)``.
- :class:`OverdampedLangevinBlock`: unadjusted Langevin ``y = x + h F(x) + sqrt(2h) eta`` (h in units
  of x^2): ``dS = sum (|eta|^2 - |eta~|^2) / 2`` with ``eta~ = (x - y - h F(y)) / sqrt(2h)``.
- :class:`UnderdampedLangevinBlock`: velocities ``v ~ N(0, I)`` drawn at the block's start and
  discarded at its end, OBABO steps (Ornstein-Uhlenbeck half steps ``O``, velocity Verlet ``BAB``
  with time step h): ``dS = sum over the Verlet parts of (K(v_before) - K(v_after))``, with
  ``K = |v|^2 / 2``. (Derivation: the Verlet map is volume-preserving, so only the O kernels and the
  velocity draws enter; detailed balance of O against N(0, I) gives ``log q_O(v'->v) / q_O(v->v') =
  K(v') - K(v)``, the draw and the discard give ``K(v_start) - K(v_end)``, and these sum to minus the
  kinetic-energy change of the Verlet parts. With exact dynamics it reduces to ``u(x_end) - u(x_start)``.)

Non-finite energies never give NaN: a block whose start or any visited state has a non-finite
energy (or coordinates) returns ``dS = -inf`` for that sample (weight zero: the generator reports
it as dropped, ``log_importance_weights`` gives ``-inf``) and leaves it at its last finite state.
Metropolis rejects proposals with non-finite energy, so there only a non-finite start is dropped.
For Langevin blocks this is a convention, not an identity: the force is undefined there, and the
(usually negligible) backward-path mass through such states is lost.

Gradients: Metropolis blocks are differentiable through accepted proposals (the accept decision
is not differentiated); Langevin blocks use differentiable forces (``create_graph``) whenever
gradients are enabled and the input or an energy parameter requires them. The blocks use the
global torch RNG (seed it with ``torch.manual_seed`` for reproducibility).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from boltzgen.dynamics.kernels import (
    EnergyLike,
    energy_and_force,
    metropolis_gaussian_step,
    overdamped_langevin_step,
    overdamped_log_transition,
)
from boltzgen.energy.interpolated import InterpolatedEnergy
from boltzgen.flows.base import Flow


def _energy_dim(energy: EnergyLike) -> Optional[int]:
    """The number of dimensions of ``energy`` when it says (an `Energy`, a `Distribution`, or an
    `InterpolatedEnergy` of those), else None."""
    for candidate in (energy, getattr(energy, "start", None), getattr(energy, "end", None)):
        dim = getattr(candidate, "dim", None)
        if isinstance(dim, int) and not isinstance(dim, bool):
            return dim
    return None


class StochasticBlock(Flow):
    """Base class of the SNF blocks: ``n_steps`` steps of a Markov kernel on ``energy``.

    Args:
        energy: energy-like object (``energy(x [B, D]) -> [B]``, kT) whose Boltzmann density
            ``exp(-u)`` the kernel targets, e.g. ``InterpolatedEnergy(prior, target, lam)``.
        n_steps: number of steps (0: the identity with ``dS = 0``).
        step_size: positive, finite; its meaning and units are set by the subclass.

    Attributes (diagnostics of the last call, forward or inverse):
        last_acceptance: mean Metropolis acceptance rate over steps and samples (None for the
            unadjusted Langevin blocks, or before the first call).
        last_n_nonfinite: number of samples dropped (``dS = -inf``) for non-finite energies.
    """

    def __init__(self, energy: EnergyLike, n_steps: int, step_size: float):
        super().__init__()
        if not callable(getattr(energy, "energy", None)):
            raise TypeError(f"energy must have an energy(x) method, got {type(energy).__name__}")
        if isinstance(n_steps, bool) or int(n_steps) != n_steps or int(n_steps) < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        if isinstance(step_size, torch.Tensor) and step_size.numel() != 1:
            raise ValueError(f"step_size must be a single number, got shape {list(step_size.shape)}")
        step_size = float(step_size)
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive and finite, got {step_size!r}")
        self.energy = energy
        self.n_steps = int(n_steps)
        self.step_size = step_size
        self.dim = _energy_dim(energy)
        self.last_acceptance: Optional[float] = None
        self.last_n_nonfinite: int = 0

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, step_size={self.step_size:g}"

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects a floating-point batch of shape [batch, dim], "
                f"got {list(x.shape)} ({x.dtype})"
            )
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} acts on {self.dim} dims, got a batch of shape {list(x.shape)}"
            )

    def _needs_graph(self, x: torch.Tensor) -> bool:
        """Whether forces must be differentiable (training through the block)."""
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def _forward(self, x, context=None):
        """``x [B, D] -> (y [B, D], dS [B])``; ``context`` is ignored."""
        self._check_input(x)
        if self.n_steps == 0:
            self.last_n_nonfinite = 0
            return x, x.new_zeros(x.shape[0])
        return self._run(x)

    def _inverse(self, y, context=None):
        """``y [B, D] -> (x [B, D], log q_fwd - log q_back [B])`` of a backward path (see module doc)."""
        return self._forward(y, context=context)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _finish(
        self, x: torch.Tensor, delta: torch.Tensor, bad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``-inf`` for dropped samples (and any non-finite log-ratio), record diagnostics."""
        bad = bad | ~torch.isfinite(delta)
        self.last_n_nonfinite = int(bad.sum())
        return x, torch.where(bad, torch.full_like(delta, -math.inf), delta)


def _non_finite(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[B]`` mask of samples with a non-finite energy or coordinate."""
    return ~torch.isfinite(u) | ~torch.isfinite(x).all(dim=-1)


class MetropolisBlock(StochasticBlock):
    """Random-walk Metropolis on ``exp(-u)`` with isotropic Gaussian proposals.

    ``step_size`` is the proposal standard deviation (units of x). ``dS = u(x_end) - u(x_start)``
    (detailed balance: the backward kernel is the same MC kernel). Differentiable through accepted
    proposals; ``last_acceptance`` holds the mean acceptance rate of the last call.
    """

    def _run(self, x):
        u_start = self.energy.energy(x)
        bad = _non_finite(u_start, x)
        u = u_start
        n_accepted = torch.zeros((), dtype=torch.long, device=x.device)
        for _ in range(self.n_steps):
            x, u, accepted = metropolis_gaussian_step(self.energy, x, u, self.step_size)
            n_accepted = n_accepted + accepted.sum()
        self.last_acceptance = int(n_accepted) / (self.n_steps * max(x.shape[0], 1))
        return self._finish(x, u - u_start, bad)


class OverdampedLangevinBlock(StochasticBlock):
    """Unadjusted overdamped Langevin steps ``y = x + h F(x) + sqrt(2h) eta`` on ``u``.

    ``step_size`` is h (units of x^2, diffusion constant 1). Per step
    ``dS = (|eta|^2 - |eta~|^2) / 2`` with the backward noise ``eta~ = (x - y - h F(y)) / sqrt(2h)``.
    """

    def _run(self, x):
        create_graph = self._needs_graph(x)
        h = self.step_size
        u, force = energy_and_force(self.energy, x, create_graph=create_graph)
        bad = _non_finite(u, x)
        delta = x.new_zeros(x.shape[0])
        for _ in range(self.n_steps):
            noise = torch.randn_like(x)
            y = overdamped_langevin_step(x, force, h, noise)
            u_y, force_y = energy_and_force(self.energy, y, create_graph=create_graph)
            # log q_back(y -> x) - log q_fwd(x -> y); the forward term is exactly -|noise|^2 / 2
            step = overdamped_log_transition(y, force_y, x, h) + 0.5 * (noise**2).sum(-1)
            bad = bad | _non_finite(u_y, y)
            keep = bad.unsqueeze(-1)
            delta = delta + torch.where(bad, torch.zeros_like(step), step)
            x, force = torch.where(keep, x, y), torch.where(keep, force, force_y)
        self.last_acceptance = None
        return self._finish(x, delta, bad)


class UnderdampedLangevinBlock(StochasticBlock):
    """Underdamped Langevin (OBABO) with fresh velocities, unit mass and kT = 1.

    Per block: ``v ~ N(0, I)``; ``n_steps`` times ``O(h/2) B(h/2) A(h) B(h/2) O(h/2)`` with
    ``O: v <- a v + sqrt(1 - a^2) xi``, ``a = exp(-friction h / 2)``, ``B: v <- v + (h/2) F(x)``,
    ``A: x <- x + h v``; then v is discarded. ``dS = sum over steps of K(v before BAB) - K(v after
    BAB)`` (``K = |v|^2 / 2``; derivation in the module docstring).

    Args:
        energy, n_steps: as :class:`StochasticBlock`.
        step_size: time step h (units of x for unit mass and kT).
        friction: gamma >= 0 (1 / time); 0 gives Hamiltonian dynamics from fresh velocities,
            ``inf`` fully refreshes v every half step (then one step is an overdamped Langevin
            step with ``h_overdamped = h^2 / 2``).
    """

    def __init__(self, energy: EnergyLike, n_steps: int, step_size: float, friction: float = 1.0):
        super().__init__(energy, n_steps, step_size)
        friction = float(friction)
        if math.isnan(friction) or friction < 0:
            raise ValueError(f"friction must be non-negative, got {friction!r}")
        self.friction = friction
        self._damping = math.exp(-0.5 * friction * self.step_size)
        self._noise_scale = math.sqrt(-math.expm1(-friction * self.step_size))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, friction={self.friction:g}"

    def _ornstein_uhlenbeck(self, v: torch.Tensor) -> torch.Tensor:
        return self._damping * v + self._noise_scale * torch.randn_like(v)

    def _run(self, x):
        create_graph = self._needs_graph(x)
        h = self.step_size
        u, force = energy_and_force(self.energy, x, create_graph=create_graph)
        bad = _non_finite(u, x)
        v = torch.randn_like(x)
        delta = x.new_zeros(x.shape[0])
        for _ in range(self.n_steps):
            v = self._ornstein_uhlenbeck(v)
            v_half = v + 0.5 * h * force
            y = x + h * v_half
            u_y, force_y = energy_and_force(self.energy, y, create_graph=create_graph)
            v_new = v_half + 0.5 * h * force_y
            step = 0.5 * ((v**2).sum(-1) - (v_new**2).sum(-1))
            bad = bad | _non_finite(u_y, y)
            keep = bad.unsqueeze(-1)
            delta = delta + torch.where(bad, torch.zeros_like(step), step)
            x, force = torch.where(keep, x, y), torch.where(keep, force, force_y)
            v = torch.where(keep, v, v_new)
            v = self._ornstein_uhlenbeck(v)
        self.last_acceptance = None
        return self._finish(x, delta, bad)


def annealed_energies(prior: EnergyLike, target: EnergyLike, n_blocks: int) -> list[InterpolatedEnergy]:
    """Energies ``u_lambda_i = (1 - lambda_i) u_prior + lambda_i u_target`` for ``n_blocks`` blocks,
    ``lambda_i = i / (n_blocks - 1)`` (i = 0 .. n_blocks - 1: from the prior to the target; a single
    block gets the target). Drop the first (``[1:]``) when no block should target the prior itself."""
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or int(n_blocks) < 1:
        raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}")
    n = int(n_blocks)
    if n == 1:
        return [InterpolatedEnergy(prior, target, 1.0)]
    return [InterpolatedEnergy(prior, target, i / (n - 1)) for i in range(n)]


def contains_stochastic_blocks(flow: torch.nn.Module) -> bool:
    """Whether ``flow`` is, or contains, a :class:`StochasticBlock` (its inverse is then random)."""
    return isinstance(flow, torch.nn.Module) and any(isinstance(m, StochasticBlock) for m in flow.modules())
