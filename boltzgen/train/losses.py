"""Training losses of Boltzmann generators (METHODS.md §0), all in reduced units (kT / nats).

- NLL (forward KL on data): ``E_data[-log q_X(x)]``.
- Reverse KL: ``E_z[u_cut(F(z)) + log q_X(F(z))]`` (= KL(q || p) + log Z), with the lin-log cut
  that keeps single huge energies from dominating the gradient.
- Force matching on data: ``E_data[|grad_x log q_X(x) - f(x)|^2] / scale`` with the target forces
  ``f = -grad_x u`` (kT/nm) stored with the data; it asks the model's score to be the force, which
  a likelihood fit of a finite data set does not (its density gets rough between data points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from boltzgen.flows.stochastic import contains_stochastic_blocks


@dataclass(frozen=True)
class LinLogCut:
    """Energy regulariser: ``u`` below ``high``; ``high + log(1 + u - high)`` above; capped at ``maximum``.

    Infinite or NaN energies (failed evaluations) become ``maximum`` with zero gradient, so one
    broken sample cannot turn the loss into NaN.
    """

    high: float = 1e3
    maximum: float = 1e9

    def __post_init__(self):
        if not self.high < self.maximum:
            raise ValueError(f"LinLogCut needs high < maximum, got {self.high} and {self.maximum}")

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(u) | (u > self.maximum)
        u = torch.where(bad, torch.full_like(u, self.maximum), u)
        # evaluate the log branch on a clamped copy so its gradient is finite where unused
        above = u.clamp(min=self.high)
        cut = torch.where(u < self.high, u, self.high + torch.log1p(above - self.high))
        return cut


def nll_loss(generator, x: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood ``-log q_X(x)`` of data ``x`` ``[B, D]`` (nats per sample)."""
    return -generator.log_prob(x).mean()


@dataclass
class ReverseKLResult:
    loss: torch.Tensor
    n_cut: int
    mean_energy: float


def reverse_kl_loss(
    generator, n: int, cut: LinLogCut = LinLogCut(), path_gradient: bool = True
) -> ReverseKLResult:
    """Reverse KL ``E_z[u_cut(x) + log q_X(x)]`` on ``n`` fresh samples (differentiable).

    With ``path_gradient`` (the default), ``log q_X(x)`` is recomputed through the inverse flow
    with the parameters held fixed, so that the gradient only follows the samples' path
    ``x = F_theta(z)``: ``E[(grad_x u + grad_x log q) dx/dtheta]`` ("sticking the landing",
    Roeder et al. 2017; path gradients for Boltzmann generators, Vaitl et al. 2022). It has the
    same expectation as the plain estimator (the dropped score term has mean zero) but its
    variance vanishes as q approaches the target, where the plain one stays noisy; it costs one
    extra inverse pass. The returned loss value is the same in both cases.

    Stochastic normalising flows (a flow containing `boltzgen.flows.stochastic` blocks): there
    ``log q`` is the path log-density ``log q_Z(z) - sum dS`` of the path the sample took, and the
    inverse draws a *different* random (backward) path, so the path-gradient recomputation would
    be wrong; such generators always use the plain estimator (``path_gradient`` is ignored), whose
    loss is the SNF paper's path KL ``E[u_X(x_T) - u_Z(z) - sum dS] = -E[log w]`` (``u_Z = -log q_Z``).

    Returns the loss with the number of samples whose energy was above ``cut.high`` and the mean
    finite energy (diagnostics).
    """
    x, log_q = generator.sample_with_log_prob(n)
    u = generator.energy(x)
    u_cut = cut(u)
    finite = torch.isfinite(u)
    mean_energy = float(u.detach()[finite].mean()) if finite.any() else math.inf
    n_cut = int((~finite | (u >= cut.high)).sum())
    if path_gradient and not contains_stochastic_blocks(generator.flow):
        log_q_path = _log_prob_with_fixed_parameters(generator, x)
        # value of the plain loss, gradient of the path estimator
        log_q = log_q_path + (log_q - log_q_path).detach()
    # a sample an SNF dropped (dS = -inf: a non-finite energy on its path) has log q = +inf; it
    # carries no weight, so it leaves the average (counted with the cut samples) instead of
    # turning the loss into inf
    usable = torch.isfinite(log_q.detach())
    if not bool(usable.all()):
        n_cut += int((~usable & finite & (u < cut.high)).sum())
        if not bool(usable.any()):
            return ReverseKLResult(log_q.new_tensor(math.inf), n_cut, mean_energy)
        return ReverseKLResult((u_cut + log_q)[usable].mean(), n_cut, mean_energy)
    return ReverseKLResult((u_cut + log_q).mean(), n_cut, mean_energy)


def _log_prob_with_fixed_parameters(generator, x: torch.Tensor) -> torch.Tensor:
    """``log q_X(x)`` ``[B]`` differentiable in ``x`` only (parameters treated as constants)."""
    parameters = [p for p in generator.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        return generator.log_prob(x)
    finally:
        for p in parameters:
            p.requires_grad_(True)


def force_matching_loss(
    generator, x: torch.Tensor, forces: torch.Tensor, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Mean squared difference between the model's score and the target forces.

    Args:
        generator: a `BoltzmannGenerator` (its ``log_prob`` must be twice differentiable).
        x: data configurations ``[B, D]`` (nm).
        forces: target forces ``-grad_x u`` at ``x``, ``[B, D]`` in kT/nm.
        scale: divisor of the result, e.g. the data's mean ``|f|^2`` (then the loss is the
            relative squared force error and 0.1 means a 30% force error).

    Returns:
        ``mean_b |grad_x log q_X(x_b) - f_b|^2 / scale`` (scalar, differentiable in the parameters).
    """
    if forces.shape != x.shape:
        raise ValueError(f"forces {tuple(forces.shape)} must have the shape of x {tuple(x.shape)}")
    x = x.detach().requires_grad_(True)
    log_q = generator.log_prob(x)
    (score,) = torch.autograd.grad(log_q.sum(), x, create_graph=True)
    return ((score - forces.to(score.dtype)) ** 2).sum(-1).mean() / scale
