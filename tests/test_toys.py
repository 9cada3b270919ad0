"""Toy energies (double well, Müller-Brown) and their exact quadrature references.

The references are checked against METHODS.md and, independently, against Monte Carlo: a seeded
Metropolis-Hastings sampler (many independent chains; standard errors from the spread of the
chain means) for state populations and the x1 profile, and importance sampling from a Gaussian
mixture proposal (standard errors from the weights' spread) for log Z and state free energies.
Each Monte Carlo check also asserts that it would have rejected a reference off by 0.05.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special

from boltzgen.energy import DoubleWellEnergy, Energy, MullerBrownEnergy
from boltzgen.energy.quadrature import (
    double_well_free_energy_profile,
    double_well_references,
    log_integral_over_convex_polygon,
    muller_brown_references,
)

# ----------------------------------------------------------------------------- Monte Carlo helpers


class GaussianMixture:
    """A 2-D Gaussian mixture: ``weights [K]``, ``means [K, 2]``, ``covariances [K, 2, 2]``."""

    def __init__(self, weights, means, covariances):
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.means = np.asarray(means, dtype=np.float64)
        self.covariances = np.asarray(covariances, dtype=np.float64)
        self.cholesky = np.linalg.cholesky(self.covariances)
        self.precisions = np.linalg.inv(self.covariances)
        self.log_norms = -np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(self.covariances)[1]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, 2))
        return self.means[component] + np.einsum("nij,nj->ni", self.cholesky[component], noise)

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        d = x[:, None, :] - self.means[None]
        quadratic = np.einsum("nki,kij,nkj->nk", d, self.precisions, d)
        return special.logsumexp(np.log(self.weights) + self.log_norms - 0.5 * quadratic, axis=1)


def reduced_energy(energy: Energy, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return energy.energy(torch.from_numpy(x)).numpy()


def metropolis_hastings_chain_means(energy, observables, proposal, rng, n_chains, n_steps, burn_in, step):
    """Per-chain time averages ``[n_chains, K]`` of ``observables(x) -> [n, K]`` under exp(-u).

    Each step is, per chain at random, a Gaussian random-walk move (std ``step``) or an
    independence move from ``proposal``; both satisfy detailed balance, so their mixture does.
    Chains start from independent proposal draws; the first ``burn_in`` steps are discarded.
    """
    x = proposal.sample(n_chains, rng)
    u = reduced_energy(energy, x)
    sums = 0.0
    for t in range(n_steps):
        independence = rng.random(n_chains) < 0.5
        candidate = x + step * rng.standard_normal(x.shape)
        drawn = proposal.sample(n_chains, rng)
        candidate[independence] = drawn[independence]
        u_candidate = reduced_energy(energy, candidate)
        log_accept = u - u_candidate
        log_accept[independence] += (proposal.log_pdf(x) - proposal.log_pdf(candidate))[independence]
        accept = np.log(rng.random(n_chains)) < log_accept
        x[accept], u[accept] = candidate[accept], u_candidate[accept]
        if t >= burn_in:
            sums = sums + observables(x)
    return sums / (n_steps - burn_in)


def mean_and_standard_error(chain_means: np.ndarray):
    return chain_means.mean(axis=0), chain_means.std(axis=0, ddof=1) / math.sqrt(len(chain_means))


def importance_sampling(energy, proposal, rng, n, indicators=None):
    """log Z and ``-log Z_S`` for each indicator column, each with its standard error (delta method)."""
    x = proposal.sample(n, rng)
    log_w = -reduced_energy(energy, x) - proposal.log_pdf(x)
    shift = log_w.max()
    w = np.exp(log_w - shift)
    log_z = math.log(w.mean()) + shift
    se_log_z = w.std(ddof=1) / w.mean() / math.sqrt(n)
    states = []
    if indicators is not None:
        for column in indicators(x).T:
            ws = w * column
            states.append((-(math.log(ws.mean()) + shift), ws.std(ddof=1) / ws.mean() / math.sqrt(n)))
    return (log_z, se_log_z), states


def assert_agrees_and_discriminates(estimate, standard_error, reference, shift=0.05, n_sigma=4.0):
    """Estimate within ``n_sigma`` SE of the reference, and a reference off by ``shift`` is rejected."""
    assert abs(estimate - reference) < n_sigma * standard_error, (estimate, standard_error, reference)
    assert abs(estimate - (reference + shift)) > n_sigma * standard_error, (estimate, standard_error)
    assert abs(estimate - (reference - shift)) > n_sigma * standard_error, (estimate, standard_error)


def hessian(energy: Energy, point) -> np.ndarray:
    x = torch.tensor(point, dtype=torch.float64)
    return torch.autograd.functional.hessian(lambda p: energy.energy(p[None])[0], x).numpy()


# ----------------------------------------------------------------------------- energies


def muller_brown_by_hand(x: float, y: float, scale: float) -> float:
    A, a, b, c = (-200, -100, -170, 15), (-1, -1, -6.5, 0.7), (0, 0, 11, 0.6), (-10, -10, -6.5, 0.7)
    x0, y0 = (1, 0, -0.5, -1), (0, 0.5, 1.5, 1)
    return scale * sum(
        A[k] * math.exp(a[k] * (x - x0[k]) ** 2 + b[k] * (x - x0[k]) * (y - y0[k]) + c[k] * (y - y0[k]) ** 2)
        for k in range(4)
    )


def test_double_well_energy_and_force_at_known_points():
    energy = DoubleWellEnergy()
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-2.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    u, f = energy.energy_and_force(x)
    torch.testing.assert_close(u, torch.tensor([0.0, -3.5, -6.5, -8.5], dtype=torch.float64))
    # force = -(4 x1^3 - 12 x1 - 0.5, x2)
    expected_force = torch.tensor([[0.5, 0.0], [8.5, -2.0], [8.5, -1.0], [-7.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(f, expected_force)
    torch.testing.assert_close(energy.force(x), expected_force)
    assert energy.dim == 2 and energy.temperature is None


def test_muller_brown_energy_at_known_points():
    energy = MullerBrownEnergy(scale=0.05)
    # V(0, 0) = -200 e^-1 - 100 e^-2.5 - 170 e^-24.5 + 15 e^0.8, written out by hand
    v00 = -200 * math.exp(-1) - 100 * math.exp(-2.5) - 170 * math.exp(-24.5) + 15 * math.exp(0.8)
    points = [(0.0, 0.0), (-0.5, 1.5), (1.0, 0.0), (-1.0, 1.0), (0.3, -0.2)]
    u = energy.energy(torch.tensor(points, dtype=torch.float64))
    assert u[0].item() == pytest.approx(0.05 * v00, rel=1e-14)
    for value, (x, y) in zip(u.tolist(), points):
        assert value == pytest.approx(muller_brown_by_hand(x, y, 0.05), rel=1e-13)
    # the literature minimum A: V = -146.699 at (-0.558, 1.442); energy scales linearly
    assert MullerBrownEnergy(scale=1.0).energy(torch.tensor([[-0.558224, 1.441726]], dtype=torch.float64)).item() == (
        pytest.approx(-146.6995, abs=1e-3)
    )


@pytest.mark.parametrize("energy", [DoubleWellEnergy(), MullerBrownEnergy(0.05), MullerBrownEnergy(1.0)])
def test_analytic_forces_match_autograd_in_float64(energy):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=generator, dtype=torch.float64) * torch.tensor([3.5, 2.5]) + torch.tensor(
        [-2.0, -0.5]
    )
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(energy.energy(x).sum(), x)
    u, f = energy.energy_and_force(x.detach())
    torch.testing.assert_close(f, -grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(energy.force(x.detach()), -grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u, energy.energy(x.detach()), rtol=0, atol=0)


@pytest.mark.parametrize("energy", [DoubleWellEnergy(), MullerBrownEnergy()])
def test_analytic_forces_are_differentiable(energy):
    """d(force)/dx = -Hessian, so force matching can train through the toy forces."""
    point = torch.tensor([[-0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    force = energy.force(point)
    jacobian = torch.stack([torch.autograd.grad(force[0, i], point, retain_graph=True)[0][0] for i in range(2)])
    np.testing.assert_allclose(jacobian.numpy(), -hessian(energy, [-0.3, 0.7]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("energy", [DoubleWellEnergy(), MullerBrownEnergy()])
def test_batching_and_dtypes(energy):
    x64 = torch.randn(9, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5
    u64, f64 = energy.energy_and_force(x64)
    assert u64.shape == (9,) and f64.shape == (9, 2) and u64.dtype == f64.dtype == torch.float64
    rows = torch.cat([energy.energy(x64[i : i + 1]) for i in range(9)])
    torch.testing.assert_close(rows, u64, rtol=0, atol=0)
    u32, f32 = energy.energy_and_force(x64.float())
    assert u32.dtype == f32.dtype == energy.energy(x64.float()).dtype == torch.float32
    torch.testing.assert_close(u32.double(), u64, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-5, atol=1e-3)
    assert energy.energy(torch.zeros(0, 2)).shape == (0,)
    assert energy(x64).shape == (9,)


@pytest.mark.parametrize("energy", [DoubleWellEnergy(), MullerBrownEnergy()])
@pytest.mark.parametrize("shape", [(2,), (3, 3), (4, 1), (3, 2, 1)])
def test_wrong_shapes_raise_value_error(energy, shape):
    x = torch.zeros(shape)
    for method in (energy.energy, energy.force, energy.energy_and_force):
        with pytest.raises(ValueError, match=r"shape \[batch, 2\]"):
            method(x)


def test_integer_input_and_bad_scale_raise_value_error():
    with pytest.raises(ValueError, match="floating-point"):
        DoubleWellEnergy().energy(torch.zeros(3, 2, dtype=torch.long))
    for scale in (0.0, -0.05, float("nan")):
        with pytest.raises(ValueError, match="scale must be positive"):
            MullerBrownEnergy(scale)


# ----------------------------------------------------------------------------- double well references


@pytest.fixture(scope="module")
def double_well():
    return double_well_references()


def test_double_well_references_match_methods_md(double_well):
    assert round(double_well["log_z"], 4) == 10.2935
    assert round(double_well["p_x1_positive"], 4) == 0.8443


def test_double_well_state_free_energies_are_consistent(double_well):
    f_a, f_b = double_well["f_A_kT"], double_well["f_B_kT"]
    assert np.logaddexp(-f_a, -f_b) == pytest.approx(double_well["log_z"], abs=1e-12)
    assert double_well["delta_f_kT"] == pytest.approx(f_b - f_a, abs=1e-12)
    assert math.exp(-f_b - double_well["log_z"]) == pytest.approx(double_well["p_x1_positive"], abs=1e-12)
    assert double_well["minima"]["B"][0] == pytest.approx(1.75252, abs=1e-5)
    assert double_well["minima"]["A"][0] == pytest.approx(-1.71083, abs=1e-5)


def test_double_well_profile_bin_probabilities_sum_to_the_total(double_well):
    edges = np.linspace(-3.0, 3.0, 31)
    profile = double_well_free_energy_profile(edges)
    assert profile.shape == (30,) and np.all(np.isfinite(profile))
    # [-3, 3] holds all but ~1e-14 of the mass (u(+-3) is ~35 kT above the minimum)
    assert np.exp(-profile).sum() == pytest.approx(1.0, abs=1e-10)
    assert np.exp(-profile[15:]).sum() == pytest.approx(double_well["p_x1_positive"], abs=1e-10)
    open_ended = double_well_free_energy_profile([-np.inf, -1.0, 0.0, 0.5, np.inf])
    assert np.exp(-open_ended).sum() == pytest.approx(1.0, abs=1e-12)
    assert np.exp(-open_ended[2:]).sum() == pytest.approx(double_well["p_x1_positive"], abs=1e-12)
    # a bin's value is -log P(bin) = F_bin + log Z
    assert double_well_free_energy_profile([0.0, np.inf])[0] == pytest.approx(
        double_well["f_B_kT"] + double_well["log_z"], abs=1e-12
    )


def test_double_well_profile_rejects_bad_edges():
    for edges in ([0.0], [[0.0, 1.0]], [0.0, 0.0, 1.0], [1.0, 0.0], [0.0, np.nan]):
        with pytest.raises(ValueError, match="bin_edges"):
            double_well_free_energy_profile(edges)


def double_well_proposal(references) -> GaussianMixture:
    (x_a, _), (x_b, _) = references["minima"]["A"], references["minima"]["B"]
    covariance = np.diag([0.3**2, 1.2**2])
    return GaussianMixture([0.3, 0.7], [[x_a, 0.0], [x_b, 0.0]], [covariance, covariance])


def test_double_well_log_z_and_state_free_energies_by_importance_sampling(double_well):
    rng = np.random.default_rng(2024)
    (log_z, se), states = importance_sampling(
        DoubleWellEnergy(),
        double_well_proposal(double_well),
        rng,
        n=400_000,
        indicators=lambda x: np.stack([x[:, 0] < 0, x[:, 0] > 0], axis=1).astype(np.float64),
    )
    assert_agrees_and_discriminates(log_z, se, double_well["log_z"])
    assert_agrees_and_discriminates(*states[0], double_well["f_A_kT"])
    assert_agrees_and_discriminates(*states[1], double_well["f_B_kT"])


def test_double_well_populations_and_profile_by_metropolis(double_well):
    edges = np.linspace(-3.0, 3.0, 31)

    def observables(x):
        bins = np.clip(np.searchsorted(edges, x[:, 0], side="right") - 1, 0, 29)
        return np.concatenate([(x[:, :1] > 0), np.eye(30)[bins]], axis=1).astype(np.float64)

    chain_means = metropolis_hastings_chain_means(
        DoubleWellEnergy(),
        observables,
        double_well_proposal(double_well),
        np.random.default_rng(7),
        n_chains=256,
        n_steps=2500,
        burn_in=250,
        step=0.25,
    )
    mean, se = mean_and_standard_error(chain_means)
    assert_agrees_and_discriminates(mean[0], se[0], double_well["p_x1_positive"])
    exact = np.exp(-double_well_free_energy_profile(edges))
    populated = exact > 0.005
    z_scores = (mean[1:] - exact)[populated] / se[1:][populated]
    assert np.abs(z_scores).max() < 4.5, z_scores
    # and a profile off by 0.05 kT in its most populated bins would be caught there
    top = np.argsort(exact)[-5:]
    assert np.all(exact[top] * (1 - math.exp(-0.05)) > 4.5 * se[1:][top])


# ----------------------------------------------------------------------------- Müller-Brown references


@pytest.fixture(scope="module")
def muller_brown():
    return muller_brown_references(0.05)


def test_muller_brown_minima_and_barrier_match_the_literature(muller_brown):
    expected = {"A": ((-0.558, 1.442), -146.700), "B": ((0.623, 0.028), -108.167), "C": ((-0.050, 0.467), -80.768)}
    for name, (point, value) in expected.items():
        np.testing.assert_allclose(muller_brown["minima"][name], point, atol=1e-3)
        assert muller_brown["minimum_energies_kT"][name] == pytest.approx(0.05 * value, abs=1e-4)
    # documented: the barrier out of the deepest minimum (via the A|C saddle) is 5.30 kT at scale 0.05
    energy = MullerBrownEnergy(0.05)
    saddle = optimize.root(
        lambda p: energy.force(torch.tensor(p[None], dtype=torch.float64))[0].numpy(), [-0.822, 0.624]
    ).x
    assert np.linalg.eigvalsh(hessian(energy, saddle)).min() < 0
    barrier = reduced_energy(energy, saddle[None])[0] - muller_brown["minimum_energies_kT"]["A"]
    assert barrier == pytest.approx(5.30, abs=0.005)


def test_muller_brown_references_are_consistent(muller_brown):
    log_z_states = [-muller_brown[f"f_{name}_kT"] for name in "ABC"]
    assert special.logsumexp(log_z_states) == pytest.approx(muller_brown["log_z"], abs=1e-12)
    assert sum(muller_brown["populations"].values()) == pytest.approx(1.0, abs=1e-12)
    assert muller_brown["box_edge_min_excess_kT"] > 100.0


def test_muller_brown_quadrature_is_converged(muller_brown):
    keys = ["log_z", "f_A_kT", "f_B_kT", "f_C_kT"]
    finer = muller_brown_references(0.05, panel_width=0.05, order=14)
    larger_box = muller_brown_references(0.05, box=(-5.0, 4.0, -4.0, 6.0))
    for key in keys:
        assert finer[key] == pytest.approx(muller_brown[key], abs=1e-10)
        assert larger_box[key] == pytest.approx(muller_brown[key], abs=1e-10)
    # a plain grid sum over the whole box (no cells) gives the same total
    energy = MullerBrownEnergy(0.05)
    h = 0.01
    xs, ys = np.arange(-4.0, 3.0 + h / 2, h), np.arange(-3.0, 5.0 + h / 2, h)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    grid_log_z = special.logsumexp(-reduced_energy(energy, grid)) + 2 * math.log(h)
    assert grid_log_z == pytest.approx(muller_brown["log_z"], abs=1e-9)


def test_muller_brown_box_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        muller_brown_references(0.05, box=(-1.5, 1.2, -0.5, 2.0))


def test_polygon_quadrature_is_exact_for_a_triangle_and_a_gaussian():
    # area of the triangle (0,0), (2,0), (0,1): 1
    normals = np.array([[0.0, -1.0], [-1.0, 0.0], [1.0, 2.0]])
    offsets = np.array([0.0, 0.0, 2.0])
    area = log_integral_over_convex_polygon(lambda p: np.zeros(len(p)), normals, offsets)
    assert math.exp(area) == pytest.approx(1.0, abs=1e-13)
    # a standard Gaussian over the half-plane x > 0.3 (clipped to a wide box): Phi(-0.3) * 2 pi
    normals = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    offsets = np.array([-0.3, 12.0, 12.0, 12.0])
    value = log_integral_over_convex_polygon(lambda p: -0.5 * (p**2).sum(axis=1), normals, offsets)
    assert value == pytest.approx(math.log(2 * math.pi * 0.5 * math.erfc(0.3 / math.sqrt(2))), abs=1e-12)


def muller_brown_proposal(references, energy) -> GaussianMixture:
    """Gaussians at the three minima (covariance 2 x inverse Hessian) plus a broad one for the tails."""
    means, covariances = [], []
    for name in "ABC":
        means.append(references["minima"][name])
        covariances.append(2.0 * np.linalg.inv(hessian(energy, references["minima"][name])))
    means.append([-0.3, 0.8])
    covariances.append(np.diag([1.2**2, 1.2**2]))
    return GaussianMixture([0.55, 0.15, 0.15, 0.15], means, covariances)


def voronoi_indicators(references):
    sites = np.array([references["minima"][name] for name in "ABC"])

    def indicators(x):
        nearest = np.argmin(((x[:, None, :] - sites[None]) ** 2).sum(axis=-1), axis=1)
        return np.eye(3)[nearest]

    return indicators


def test_muller_brown_log_z_and_state_free_energies_by_importance_sampling(muller_brown):
    energy = MullerBrownEnergy(0.05)
    (log_z, se), states = importance_sampling(
        energy,
        muller_brown_proposal(muller_brown, energy),
        np.random.default_rng(11),
        n=400_000,
        indicators=voronoi_indicators(muller_brown),
    )
    assert_agrees_and_discriminates(log_z, se, muller_brown["log_z"])
    for name, (f_state, se_state) in zip("ABC", states):
        assert_agrees_and_discriminates(f_state, se_state, muller_brown[f"f_{name}_kT"])


def test_muller_brown_populations_by_metropolis(muller_brown):
    energy = MullerBrownEnergy(0.05)
    chain_means = metropolis_hastings_chain_means(
        energy,
        voronoi_indicators(muller_brown),
        muller_brown_proposal(muller_brown, energy),
        np.random.default_rng(5),
        n_chains=256,
        n_steps=2500,
        burn_in=250,
        step=0.1,
    )
    mean, se = mean_and_standard_error(chain_means)
    for index, name in enumerate("ABC"):
        assert_agrees_and_discriminates(mean[index], se[index], muller_brown["populations"][name])
