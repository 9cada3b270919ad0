"""`boltzgen.dynamics.kernels`: invariance, detailed balance, transition densities, forces, rejections."""

import math

import numpy as np
import pytest
import torch

from boltzgen.distributions import NormalDistribution
from boltzgen.dynamics.kernels import (
    energy_and_force,
    mala_step,
    metropolis_gaussian_step,
    overdamped_langevin_step,
    overdamped_log_transition,
)
from boltzgen.energy.toy import DoubleWellEnergy

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class EnergyOnly:
    """Wraps an energy so that only ``energy`` is visible (forces by autograd)."""

    def __init__(self, inner):
        self.inner = inner

    def energy(self, x):
        return self.inner.energy(x)


class QuarticWell1D:
    """1-D double well u(x) = 0.25 (x^4 - 6 x^2 - 0.5 x) (barrier about 2.3 kT)."""

    def energy(self, x):
        x = x[:, 0]
        return 0.25 * (x**4 - 6 * x**2 - 0.5 * x)


def exact_quartic_samples(n, seed):
    """Exact samples of QuarticWell1D by inverse-CDF on a fine grid, ``[n, 1]``."""
    grid = np.linspace(-5.0, 5.0, 400001)
    u = 0.25 * (grid**4 - 6 * grid**2 - 0.5 * grid)
    p = np.exp(-(u - u.min()))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    uniforms = np.random.default_rng(seed).random(n)
    return torch.tensor(np.interp(uniforms, cdf, grid), dtype=F64).unsqueeze(-1)


def run_mala(energy, x, h, n_steps, seed):
    g = seeded(seed)
    u, f = energy_and_force(energy, x)
    n_acc = 0
    for _ in range(n_steps):
        x, u, f, accepted = mala_step(energy, x, u, f, h, generator=g)
        n_acc += int(accepted.sum())
    return x, n_acc / (n_steps * x.shape[0])


def test_mala_leaves_a_gaussian_invariant_where_unadjusted_langevin_does_not():
    target = NormalDistribution(2, mean=torch.tensor([0.5, -1.0], dtype=F64), std=torch.tensor([1.0, 2.0], dtype=F64))
    n, h = 20000, 0.8
    x0 = target.sample(n, generator=seeded(0))
    x, acceptance = run_mala(target, x0, h, n_steps=10, seed=1)
    assert 0.3 < acceptance < 0.95
    var = target.std**2
    assert torch.all((x.mean(0) - target.mean).abs() < 4.5 * target.std / math.sqrt(n))
    assert torch.all((x.var(0) - var).abs() < 4.5 * var * math.sqrt(2.0 / n))
    # the same steps without the accept/reject inflate the variance (to 1.67 in x1 at stationarity)
    g, y = seeded(2), x0
    for _ in range(10):
        _, f = energy_and_force(target, y)
        y = overdamped_langevin_step(y, f, h, torch.randn(y.shape, dtype=F64, generator=g))
    assert float(y[:, 0].var()) > 1.4


def transition_asymmetry(x, y, edges):
    """Chi-square of N_ij vs N_ji over off-diagonal bin pairs of the joint histogram of (x, y)."""
    hist, _, _ = np.histogram2d(x.numpy().ravel(), y.numpy().ravel(), bins=[edges, edges])
    upper, lower = hist[np.triu_indices_from(hist, 1)], hist.T[np.triu_indices_from(hist, 1)]
    total = upper + lower
    used = total > 0
    chi2 = float((((upper - lower) ** 2)[used] / total[used]).sum())
    return chi2, int(used.sum())


def test_mala_satisfies_detailed_balance_on_a_1d_double_well():
    energy = QuarticWell1D()
    n, h = 200000, 0.35
    x0 = exact_quartic_samples(n, seed=3)
    x1, acceptance = run_mala(energy, x0, h, n_steps=1, seed=4)
    assert 0.5 < acceptance < 0.99
    edges = np.concatenate([[-np.inf], np.linspace(-3.0, 3.0, 13), [np.inf]])
    chi2, dof = transition_asymmetry(x0, x1, edges)
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)
    # invariance of the marginal (follows from detailed balance)
    assert abs(float(x1.mean() - x0.mean())) < 5 * float(x0.std()) * math.sqrt(2.0 / n)
    # a kernel without the Metropolis correction breaks the symmetry of the flux: the test can fail
    _, f = energy_and_force(energy, x0)
    y = overdamped_langevin_step(x0, f, h, torch.randn(x0.shape, dtype=F64, generator=seeded(5)))
    chi2_ula, dof_ula = transition_asymmetry(x0, y, edges)
    assert chi2_ula > dof_ula + 10 * math.sqrt(2 * dof_ula)


def test_overdamped_log_transition_is_the_gaussian_density_up_to_its_constant():
    g = seeded(6)
    b, d = 50, 3
    x, y, f = (torch.randn(b, d, dtype=F64, generator=g) for _ in range(3))
    h = 0.05 + torch.rand(b, dtype=F64, generator=g)
    normal = torch.distributions.Normal(x + h[:, None] * f, torch.sqrt(2 * h)[:, None])
    exact = normal.log_prob(y).sum(-1)
    constant = 0.5 * d * torch.log(4 * math.pi * h)
    assert torch.allclose(overdamped_log_transition(x, f, y, h), exact + constant, atol=1e-12)
    scalar = overdamped_log_transition(x, f, y, 0.3)
    assert torch.allclose(scalar, -((y - x - 0.3 * f) ** 2).sum(-1) / 1.2)
    # the step itself: x + h F + sqrt(2 h) noise
    noise = torch.randn(b, d, dtype=F64, generator=g)
    assert torch.allclose(overdamped_langevin_step(x, f, h, noise), x + h[:, None] * f + torch.sqrt(2 * h)[:, None] * noise)
    with pytest.raises(ValueError):
        overdamped_langevin_step(x, f, -0.1, noise)
    with pytest.raises(ValueError):
        overdamped_langevin_step(x, f, torch.ones(b + 1, dtype=F64), noise)


def test_energy_and_force_matches_analytic_double_well_forces():
    dw = DoubleWellEnergy()
    x = torch.randn(64, 2, dtype=F64, generator=seeded(7)) * 2
    u_auto, f_auto = energy_and_force(EnergyOnly(dw), x)
    u_exact, f_exact = dw.energy(x), dw.force(x)
    assert torch.allclose(u_auto, u_exact) and torch.allclose(f_auto, f_exact, atol=1e-12)
    assert not f_auto.requires_grad
    # create_graph: the force is differentiable; d F1 / d x1 = -(12 x1^2 - 12)
    xg = x.clone().requires_grad_(True)
    _, f = energy_and_force(dw, xg, create_graph=True)
    (grad,) = torch.autograd.grad(f[:, 0].sum(), xg)
    assert torch.allclose(grad[:, 0], -(12 * x[:, 0] ** 2 - 12))


def test_energy_and_force_flags_non_finite_rows_with_inf_energy_and_zero_force():
    class Bad:
        def energy(self, x):
            u = DoubleWellEnergy().energy(x)
            u = torch.where(x[:, 0] > 2.0, torch.full_like(u, math.inf), u)
            return u + torch.sqrt(x[:, 1] + 3.0) * 0  # NaN for x2 < -3

    x = torch.tensor([[0.5, 0.1], [2.5, 0.0], [0.0, -4.0]], dtype=F64)
    u, f = energy_and_force(Bad(), x)
    assert math.isinf(u[1]) and math.isinf(u[2]) and u[2] > 0  # NaN energies are reported as +inf
    assert torch.equal(f[1:], torch.zeros(2, 2, dtype=F64))
    assert torch.allclose(f[0], DoubleWellEnergy().force(x[:1])[0])


def test_metropolis_and_mala_reject_infinite_energies():
    class Wall:
        def energy(self, x):
            u = 0.5 * (x**2).sum(-1)
            return torch.where(x[:, 0] > 0, torch.full_like(u, math.inf), u)

    wall = Wall()
    x = torch.tensor([[-0.05, 0.0]], dtype=F64).repeat(2000, 1)
    u = wall.energy(x)
    y, u_y, accepted = metropolis_gaussian_step(wall, x, u, 1.0, generator=seeded(8))
    assert bool((y[:, 0] <= 0).all()) and torch.isfinite(u_y).all()
    assert 0.2 < float(accepted.double().mean()) < 0.5  # about half the proposals hit the wall
    u, f = energy_and_force(wall, x)
    z, u_z, f_z, accepted = mala_step(wall, x, u, f, 0.5, generator=seeded(9))
    assert bool((z[:, 0] <= 0).all()) and torch.isfinite(u_z).all() and torch.isfinite(f_z).all()
    assert 0.2 < float(accepted.double().mean()) < 0.6


def test_energy_and_force_of_an_energy_that_is_constant_inf_everywhere():
    class OutsideSupport:
        def energy(self, x):
            return torch.full(x.shape[:1], math.inf, dtype=x.dtype)

    u, f = energy_and_force(OutsideSupport(), torch.zeros(3, 2, dtype=F64))
    assert torch.isinf(u).all() and torch.equal(f, torch.zeros(3, 2, dtype=F64))
