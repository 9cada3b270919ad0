"""Stochastic normalising flow blocks (boltzgen.flows.stochastic) against exact numbers.

Reference values: the double well's log Z_X and P(x1 > 0) by quadrature
(`boltzgen.energy.quadrature`); for harmonic targets with Gaussian starts every path is a
linear-Gaussian process, so path KLs, mean path log-ratios and the generated density are exact.
Statistical checks use fixed seeds and a tolerance of 4 Monte Carlo standard errors (delta
method); each also checks that the quantity it tests matters (e.g. dropping dS is caught).
"""

import math

import numpy as np
import pytest
import torch
from flow_checks import assert_invertible, assert_logdet_matches_jacobian, perturb_parameters

from boltzgen.distributions import NormalDistribution
from boltzgen.energy import DoubleWellEnergy
from boltzgen.energy.interpolated import InterpolatedEnergy
from boltzgen.energy.quadrature import double_well_references
from boltzgen.flows import SequentialFlow
from boltzgen.flows.affine import AffineTransformer, affine_coupling_layer
from boltzgen.flows.stochastic import (
    MetropolisBlock,
    OverdampedLangevinBlock,
    StochasticBlock,
    UnderdampedLangevinBlock,
    annealed_energies,
    contains_stochastic_blocks,
)
from boltzgen.generator import BoltzmannGenerator
from boltzgen.sampling import ess
from boltzgen.train.losses import reverse_kl_loss

DW = double_well_references()
N_SIGMA = 4.0


@pytest.fixture(autouse=True)
def _float64_single_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- helpers


def log_mean_exp_and_se(log_w: torch.Tensor) -> tuple[float, float]:
    """``log mean w`` and its delta-method standard error ``std(w) / (mean(w) sqrt(N))``."""
    w = torch.exp(log_w - log_w.max())
    mean = w.mean()
    return float(torch.log(mean) + log_w.max()), float(w.std() / mean / math.sqrt(len(w)))


def self_normalised_mean_and_se(log_w: torch.Tensor, f: torch.Tensor) -> tuple[float, float]:
    """``sum w f / sum w`` and its delta-method standard error."""
    w = torch.exp(log_w - log_w.max())
    estimate = float((w * f).sum() / w.sum())
    return estimate, float((w * (f - estimate)).std() / w.mean() / math.sqrt(len(w)))


def make_block(kind: str, energy, n_steps: int = 5) -> StochasticBlock:
    if kind == "mc":
        return MetropolisBlock(energy, n_steps, step_size=0.5)
    if kind == "overdamped":
        return OverdampedLangevinBlock(energy, n_steps, step_size=0.02)
    return UnderdampedLangevinBlock(energy, n_steps, step_size=0.2, friction=1.0)


def untrained_snf(kind: str, n_steps: int = 5, seed: int = 5, scale: float = 0.1):
    """Prior N(0, I) -> [perturbed RealNVP coupling, block at lambda = 1/2, coupling, block at 1]."""
    torch.manual_seed(seed)
    prior, target = NormalDistribution(2), DoubleWellEnergy()
    energies = annealed_energies(prior, target, 3)[1:]  # lambda = 1/2, 1
    layers = []
    for i, energy in enumerate(energies):
        coupling = affine_coupling_layer(2, [i % 2], hidden=(16,))
        perturb_parameters(coupling, scale=scale, seed=seed + i)
        layers += [coupling, make_block(kind, energy, n_steps)]
    return BoltzmannGenerator(prior, SequentialFlow(layers), target, chunk_size=10**6)


def run_path(generator: BoltzmannGenerator, n: int):
    """Sample like `sample_with_log_weights`, layer by layer: ``(x, log_w, sum of the blocks' dS)``."""
    with torch.no_grad():
        z = generator.prior.sample(n)
        x, logdet, path_log_ratio = z, torch.zeros(n), torch.zeros(n)
        for layer in generator.flow:
            x, ld = layer(x)
            if isinstance(layer, StochasticBlock):
                path_log_ratio = path_log_ratio + ld
            else:
                logdet = logdet + ld
        log_w = -generator.target.energy(x) + generator.prior.energy(z) + logdet + path_log_ratio
    return x, log_w, path_log_ratio


# ----------------------------------------------------------------------------- affine coupling


def test_affine_coupling_is_invertible_with_exact_logdet():
    torch.manual_seed(0)
    layer = perturb_parameters(affine_coupling_layer(3, [0, 2], hidden=(8,)), scale=0.5, seed=1)
    x = torch.randn(6, 3)
    y, _ = assert_invertible(layer, x, atol=1e-10)
    assert not torch.allclose(y, x)
    assert_logdet_matches_jacobian(layer, x, atol=1e-10)
    assert_logdet_matches_jacobian(layer, y, inverse=True, atol=1e-10)
    identity = affine_coupling_layer(3, [1])
    assert torch.equal(identity(x)[0], x) and torch.equal(identity(x)[1], torch.zeros(6))
    # the log-scale is bounded by max_log_scale
    transformer = AffineTransformer(1, max_log_scale=2.0)
    _, log_derivative = transformer(torch.ones(2, 1), torch.tensor([[0.0, 1e3], [0.0, -1e3]]))
    assert log_derivative.flatten().tolist() == pytest.approx([2.0, -2.0])
    with pytest.raises(ValueError, match="max_log_scale"):
        AffineTransformer(2, max_log_scale=0.0)


# ----------------------------------------------------------------------------- (1) unbiasedness


@pytest.mark.parametrize("kind", ["mc", "overdamped", "underdamped"])
def test_untrained_snf_weights_are_unbiased_on_the_double_well(kind):
    assert DW["log_z"] == pytest.approx(10.2935, abs=1e-4)
    assert DW["p_x1_positive"] == pytest.approx(0.8443, abs=1e-4)
    n = 40_000
    generator = untrained_snf(kind)
    torch.manual_seed(11)
    x, log_w = generator.sample_with_log_weights(n)
    # unadjusted Langevin steps from far out in the quartic walls can blow up: those few paths
    # get weight zero (dS -> -inf, a correct weight up to underflow), never NaN
    assert not torch.isnan(log_w).any() and int((~torch.isfinite(log_w)).sum()) < 0.002 * n
    assert ess(log_w) > 0.02
    # the prior's log_prob is normalised (Z_Z = 1), so E[w] = Z_X
    log_z, se = log_mean_exp_and_se(log_w)
    assert abs(log_z - DW["log_z"]) < N_SIGMA * se, (log_z, se)
    p_right, se_p = self_normalised_mean_and_se(log_w, (x[:, 0] > 0).double())
    assert abs(p_right - DW["p_x1_positive"]) < N_SIGMA * se_p, (p_right, se_p)
    if kind == "mc":
        acceptance = [block.last_acceptance for block in generator.flow if isinstance(block, StochasticBlock)]
        assert all(0.2 < a < 0.9 for a in acceptance), acceptance

    # the same seed through the layers one by one gives the generator's weights exactly, and
    # leaving out the blocks' dS is a gross error (the test above can fail)
    torch.manual_seed(11)
    x_manual, log_w_manual, path_log_ratio = run_path(generator, n)
    assert torch.equal(x_manual, x)
    assert torch.allclose(log_w_manual, log_w, rtol=1e-12, atol=1e-10)
    kept = torch.isfinite(path_log_ratio)
    biased, _ = log_mean_exp_and_se(torch.where(kept, log_w - path_log_ratio, -math.inf))
    assert abs(biased - DW["log_z"]) > 10 * se


# ----------------------------------------------------------------------------- (2) identity blocks


def test_zero_step_blocks_give_the_plain_generator_weights_exactly():
    plain = untrained_snf("mc")
    deterministic = [layer for layer in plain.flow if not isinstance(layer, StochasticBlock)]
    plain.flow = SequentialFlow(deterministic)
    energy = InterpolatedEnergy(plain.prior, plain.target, 0.5)
    wrapped_layers = [deterministic[0], MetropolisBlock(energy, 0, 0.5), deterministic[1],
                      OverdampedLangevinBlock(energy, 0, 0.1), UnderdampedLangevinBlock(energy, 0, 0.1)]
    wrapped = BoltzmannGenerator(plain.prior, SequentialFlow(wrapped_layers), plain.target, chunk_size=10**6)
    assert contains_stochastic_blocks(wrapped.flow) and not contains_stochastic_blocks(plain.flow)
    torch.manual_seed(3)
    x_plain, log_w_plain = plain.sample_with_log_weights(500)
    torch.manual_seed(3)
    x_wrapped, log_w_wrapped = wrapped.sample_with_log_weights(500)
    assert torch.equal(x_plain, x_wrapped) and torch.equal(log_w_plain, log_w_wrapped)
    assert torch.equal(plain.log_prob(x_plain), wrapped.log_prob(x_plain))


# ----------------------------------------------------------------------------- (3) signs of dS


def overdamped_harmonic_path_kl(start_std: float, step_size: float, n_steps: int) -> tuple[float, float]:
    """Per dimension, for u = x^2 / 2 from N(0, start_std^2): the exact KL(forward path || backward
    path) over (x_0..x_T) and Var(x_T). Forward: x_{t+1} = c x_t + sqrt(2h) eta (c = 1 - h);
    backward: x_T ~ N(0, 1), then the same step towards x_0."""
    c, n = 1.0 - step_size, n_steps + 1
    var_forward, var_backward = [start_std**2], [1.0]
    for _ in range(n_steps):
        var_forward.append(c * c * var_forward[-1] + 2 * step_size)
        var_backward.insert(0, c * c * var_backward[0] + 2 * step_size)
    cov_f, cov_b = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            cov_f[i, j] = cov_f[j, i] = c ** (j - i) * var_forward[i]
            cov_b[i, j] = cov_b[j, i] = c ** (j - i) * var_backward[j]
    log_det_ratio = np.linalg.slogdet(cov_b)[1] - np.linalg.slogdet(cov_f)[1]
    kl = 0.5 * (np.trace(np.linalg.solve(cov_b, cov_f)) - n + log_det_ratio)
    return float(kl), var_forward[-1]


def underdamped_harmonic_moments(start_std: float, h: float, friction: float, n_steps: int):
    """Per dimension, for u = x^2 / 2 from N(0, start_std^2): exact E[dS] of the OBABO block
    (sum of E[K] before minus after each Verlet part) and Var(x_T), by covariance propagation."""
    a = math.exp(-0.5 * friction * h)
    ornstein_uhlenbeck = np.diag([1.0, a])
    noise = np.diag([0.0, 1.0 - a * a])
    verlet = np.array([[1 - h * h / 2, h], [-(h - h**3 / 4), 1 - h * h / 2]])  # (x, v) -> (x', v')
    cov = np.diag([start_std**2, 1.0])
    mean_ds = 0.0
    for _ in range(n_steps):
        cov = ornstein_uhlenbeck @ cov @ ornstein_uhlenbeck.T + noise
        before = cov[1, 1] / 2
        cov = verlet @ cov @ verlet.T
        mean_ds += before - cov[1, 1] / 2
        cov = ornstein_uhlenbeck @ cov @ ornstein_uhlenbeck.T + noise
    return mean_ds, float(cov[0, 0])


def _harmonic_run(block_factory, start_std: float, n: int = 40_000, dim: int = 2, seed: int = 0):
    prior, target = NormalDistribution(dim, std=start_std), NormalDistribution(dim)  # Z_X = 1
    block = block_factory(target)
    torch.manual_seed(seed)
    with torch.no_grad():
        z = prior.sample(n)
        x, ds = block(z)
    log_w = -target.energy(x) + prior.energy(z) + ds
    return ds, log_w


@pytest.mark.parametrize("start_std", [2.0, 0.5])
def test_overdamped_path_log_ratio_matches_the_exact_path_kl(start_std):
    # E[log w] = log Z - KL(path) <= log Z (Jensen), and E[log w] = -E u(x_T) + E u_Z(x_0) + E sum dS:
    # so E sum dS = log Z - KL + E u(x_T) - H(q_0) ~ E u(x_T) - E u(x_0): it is negative when the
    # start is broader (hotter) than equilibrium and the dynamics cools it, positive when narrower.
    dim, h, n_steps = 2, 0.1, 5
    kl, var_t = overdamped_harmonic_path_kl(start_std, h, n_steps)
    mean_u_t = dim * (var_t / 2 + 0.5 * math.log(2 * math.pi))
    entropy_0 = dim * 0.5 * (1 + math.log(2 * math.pi * start_std**2))
    exact_ds = -dim * kl + mean_u_t - entropy_0
    ds, log_w = _harmonic_run(lambda e: OverdampedLangevinBlock(e, n_steps, h), start_std)
    assert abs(float(ds.mean()) - exact_ds) < N_SIGMA * float(ds.std()) / math.sqrt(len(ds))
    assert abs(float(log_w.mean()) + dim * kl) < N_SIGMA * float(log_w.std()) / math.sqrt(len(ds))
    assert kl > 0.05 and float(log_w.mean()) < 0.0  # Jensen: E[log w] < log Z_X = 0
    assert (exact_ds < -1.0) if start_std > 1 else (exact_ds > 0.3)


@pytest.mark.parametrize("start_std", [2.0, 0.5])
def test_underdamped_path_log_ratio_matches_exact_moments(start_std):
    dim, h, friction, n_steps = 2, 0.4, 1.0, 4
    exact_ds, var_t = underdamped_harmonic_moments(start_std, h, friction, n_steps)
    ds, log_w = _harmonic_run(lambda e: UnderdampedLangevinBlock(e, n_steps, h, friction), start_std)
    assert abs(float(ds.mean()) - dim * exact_ds) < N_SIGMA * float(ds.std()) / math.sqrt(len(ds))
    assert (dim * exact_ds < -1.0) if start_std > 1 else (dim * exact_ds > 0.3)
    assert float(log_w.mean()) < 0.0
    if start_std > 1:  # broad start: light-tailed weights, E[w] = Z_X = 1
        log_z, se = log_mean_exp_and_se(log_w)
        assert abs(log_z) < N_SIGMA * se


@pytest.mark.parametrize("start_std", [2.0, 0.5])
def test_metropolis_path_log_ratio_is_the_energy_change(start_std):
    prior, target = NormalDistribution(2, std=start_std), NormalDistribution(2)
    torch.manual_seed(0)
    z = prior.sample(40_000)
    with torch.no_grad():
        x, ds = MetropolisBlock(target, 10, 1.0)(z)
    # per sample dS = u(x_T) - u(x_0) (detailed balance), so E[dS] is the mean energy change:
    # it cools a broad start (negative) and heats a narrow one (positive), as for Langevin
    assert torch.allclose(ds, target.energy(x) - target.energy(z), atol=1e-12)
    mean = float(ds.mean())
    assert (mean < -1.0) if start_std > 1 else (mean > 0.3), mean
    log_w = -target.energy(x) + prior.energy(z) + ds
    assert float(log_w.mean()) < -N_SIGMA * float(log_w.std()) / math.sqrt(len(ds))  # Jensen: < log Z_X = 0


# ----------------------------------------------------------------------------- (4) gradients and training


def test_metropolis_gradient_flows_through_accepted_proposals_only():
    energy = DoubleWellEnergy()
    torch.manual_seed(0)
    x = (torch.randn(400, 2) * 1.5).requires_grad_(True)
    y, ds = MetropolisBlock(energy, 1, 0.7)(x)
    assert torch.isfinite(ds).all()
    (ds.sum() + y.sum()).backward()
    accepted = (y != x).any(dim=1).detach()
    assert 50 < int(accepted.sum()) < 350
    # dS = u(y) - u(x), y = x + std * noise for accepted rows, y = x otherwise; dy/dx = I either way
    grad_ds = energy.force(x.detach()) - energy.force(y.detach())
    expected = torch.where(accepted.unsqueeze(1), grad_ds, torch.zeros(400, 2)) + 1.0
    assert torch.allclose(x.grad, expected, atol=1e-10)


@pytest.mark.parametrize("block_type", [OverdampedLangevinBlock, UnderdampedLangevinBlock])
def test_langevin_blocks_differentiate_through_the_forces(block_type):
    stiffness, h = 4.0, 0.05
    energy = NormalDistribution(2, std=1 / math.sqrt(stiffness))  # u = 2 |x|^2 + const
    block = block_type(energy, 1, h)
    torch.manual_seed(0)
    x = torch.randn(5, 2).requires_grad_(True)
    y, _ = block(x)
    y.sum().backward()
    # one step is linear in x: y = (1 - h k) x + noise (overdamped; underdamped with fresh
    # velocities: x + h v + h^2/2 F(x), so 1 - h^2 k / 2). A detached force would give 1.
    slope = 1 - h * stiffness if block_type is OverdampedLangevinBlock else 1 - h * h * stiffness / 2
    assert torch.allclose(x.grad, torch.full_like(x, slope), atol=1e-12)

    def seeded(inputs):
        torch.manual_seed(1)
        return block_type(DoubleWellEnergy(), 3, 0.02)(inputs)

    torch.autograd.gradcheck(seeded, torch.randn(3, 2).requires_grad_(True))


def test_path_kl_training_through_stochastic_blocks_lowers_the_loss():
    prior, target = NormalDistribution(2), DoubleWellEnergy()
    torch.manual_seed(0)
    energies = annealed_energies(prior, target, 3)[1:]
    couplings = [affine_coupling_layer(2, [i % 2], hidden=(16,)) for i in range(3)]
    flow = SequentialFlow([couplings[0], MetropolisBlock(energies[0], 2, 0.5), couplings[1],
                           OverdampedLangevinBlock(energies[1], 2, 0.01), couplings[2]])
    generator = BoltzmannGenerator(prior, flow, target)

    def evaluate():
        torch.manual_seed(123)
        with torch.no_grad():
            return float(reverse_kl_loss(generator, 20_000).loss)

    # the path-gradient flag is ignored for stochastic flows: same gradients either way
    gradients = []
    for path_gradient in (True, False):
        generator.zero_grad()
        torch.manual_seed(7)
        reverse_kl_loss(generator, 256, path_gradient=path_gradient).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in generator.parameters()]))
    assert torch.equal(gradients[0], gradients[1])
    for coupling in couplings:  # every coupling layer, also the first (before an MC block), gets gradient
        last = coupling.conditioner.network[-1]
        assert torch.isfinite(last.bias.grad).all() and last.bias.grad.abs().sum() > 0

    before = evaluate()
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    torch.manual_seed(1)
    for _ in range(40):
        optimizer.zero_grad()
        reverse_kl_loss(generator, 256).loss.backward()
        optimizer.step()
    after = evaluate()
    # loss = -E[log w] >= -log Z_X = -10.29; untrained it is ~ -8.5
    assert after < before - 0.3 and after > -DW["log_z"], (before, after)


# ----------------------------------------------------------------------------- (5) backward direction


def mc_density_one_dimension(start_std: float, proposal_std: float, n_steps: int, points: np.ndarray):
    """Exact q_T at ``points`` after ``n_steps`` Metropolis steps on u = x^2 / 2 from N(0, start_std^2)
    in 1-D, by quadrature on a fine grid: ``q_{t+1}(y) = int q_t(x) a(y, x) dx + q_t(y) r(y)`` with
    ``a(y, x) = phi(y - x) min(1, exp(u(x) - u(y)))`` and the rejection probability
    ``r(x) = 1 - int a(y, x) dy``."""
    grid = np.linspace(-14.0, 14.0, 2801)
    dx = grid[1] - grid[0]

    def accept(to, start):  # a(to, start) as a [len(to), len(start)] matrix
        phi = np.exp(-0.5 * ((to[:, None] - start[None, :]) / proposal_std) ** 2)
        phi /= proposal_std * math.sqrt(2 * math.pi)
        return phi * np.minimum(1.0, np.exp(0.5 * start[None, :] ** 2 - 0.5 * to[:, None] ** 2))

    def start_density(x):
        return np.exp(-0.5 * (x / start_std) ** 2) / (start_std * math.sqrt(2 * math.pi))

    to_grid, to_points = accept(grid, grid) * dx, accept(points, grid) * dx
    reject_grid = 1.0 - to_grid.sum(axis=0)
    reject_points = 1.0 - (accept(grid, points) * dx).sum(axis=0)
    q_grid, q_points = start_density(grid), start_density(points)
    for _ in range(n_steps):
        q_points = to_points @ q_grid + q_points * reject_points
        q_grid = to_grid @ q_grid + q_grid * reject_grid
    return q_points


@pytest.mark.parametrize("kind", ["mc", "overdamped", "underdamped"])
def test_backward_log_prob_is_an_unbiased_density_estimate(kind):
    """One block on u = |x|^2 / 2 from N(0, 4 I): q_X is known exactly (Gaussian for Langevin,
    quadrature for 1-D Metropolis), and ``exp(generator.log_prob(x))`` must average to it."""
    start_std = 2.0
    if kind == "mc":
        dim, n_steps = 1, 2
        block = MetropolisBlock(NormalDistribution(dim), n_steps, 1.0)

        def exact_log_density(x):
            density = mc_density_one_dimension(start_std, 1.0, n_steps, x[:, 0].numpy())
            return torch.tensor(np.log(density))

    else:
        dim, n_steps = 2, 4
        if kind == "overdamped":
            _, var_t = overdamped_harmonic_path_kl(start_std, 0.1, n_steps)
            block = OverdampedLangevinBlock(NormalDistribution(dim), n_steps, 0.1)
        else:
            _, var_t = underdamped_harmonic_moments(start_std, 0.4, 1.0, n_steps)
            block = UnderdampedLangevinBlock(NormalDistribution(dim), n_steps, 0.4, 1.0)
        exact_log_density = NormalDistribution(dim, std=math.sqrt(var_t)).log_prob
    prior, target = NormalDistribution(dim, std=start_std), NormalDistribution(dim)
    generator = BoltzmannGenerator(prior, SequentialFlow([block]), target)
    points = torch.tensor([[0.0, 0.0], [1.0, -0.5], [-2.5, 1.5]])[:, :dim]
    repeats = 20_000
    torch.manual_seed(5)
    with torch.no_grad():
        estimates = generator.log_prob(points.repeat_interleave(repeats, dim=0)).reshape(len(points), repeats)
    assert torch.isfinite(estimates).all()
    for row, exact_value in zip(estimates, exact_log_density(points).tolist()):
        log_q, se = log_mean_exp_and_se(row)
        assert abs(log_q - exact_value) < N_SIGMA * se + 1e-3, (log_q, exact_value, se)
        # a single backward path is a lower bound in expectation (Jensen), strictly below here
        assert float(row.mean()) < exact_value - N_SIGMA * float(row.std()) / math.sqrt(repeats)

    # so the backward-path NLL (`nll_loss` = mean of -log_prob) of data from the target is above the exact NLL
    torch.manual_seed(6)
    data = target.sample(2000)
    with torch.no_grad():
        gap = exact_log_density(data) - generator.log_prob(data)  # per-sample NLL estimate - exact NLL
    assert float(gap.mean()) > N_SIGMA * float(gap.std()) / math.sqrt(len(gap)), float(gap.mean())


# ----------------------------------------------------------------------------- non-finite energies


class WallEnergy(torch.nn.Module):
    """u = |x|^2 / 2 for x1 < 1, +inf beyond (an energy-like object with a hard wall)."""

    dim = 2

    def energy(self, x):
        u = 0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] < 1.0, u, torch.full_like(u, math.inf))


@pytest.mark.parametrize("kind", ["mc", "overdamped", "underdamped"])
def test_infinite_energies_give_dropped_samples_never_nan(kind):
    block = {"mc": MetropolisBlock(WallEnergy(), 5, 0.5),
             "overdamped": OverdampedLangevinBlock(WallEnergy(), 5, 0.05),
             "underdamped": UnderdampedLangevinBlock(WallEnergy(), 5, 0.3)}[kind]
    generator = BoltzmannGenerator(NormalDistribution(2), SequentialFlow([block]), WallEnergy())
    torch.manual_seed(0)
    x, log_w = generator.sample_with_log_weights(2000)
    assert not torch.isnan(log_w).any() and torch.isfinite(x).all()
    dropped = ~torch.isfinite(log_w)
    assert (log_w[dropped] == -math.inf).all()
    starts_beyond = 2000 * 0.1587  # P(z1 > 1)
    assert dropped.sum() > 0.5 * starts_beyond and block.last_n_nonfinite <= int(dropped.sum())
    assert 0 < ess(log_w) < 1
    if kind == "mc":  # MC only drops samples that started behind the wall and never crosses it
        assert (x[~dropped, 0] < 1).all()


# ----------------------------------------------------------------------------- (6) bad arguments


def test_bad_arguments_raise_clear_errors():
    energy = DoubleWellEnergy()
    for step in (-0.1, 0.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="step_size"):
            OverdampedLangevinBlock(energy, 3, step)
    with pytest.raises(ValueError, match="n_steps"):
        MetropolisBlock(energy, -1, 0.1)
    with pytest.raises(ValueError, match="n_steps"):
        MetropolisBlock(energy, 1.5, 0.1)
    with pytest.raises(ValueError, match="friction"):
        UnderdampedLangevinBlock(energy, 3, 0.1, friction=-1.0)
    with pytest.raises(TypeError, match="energy"):
        MetropolisBlock(object(), 3, 0.1)
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match="lambda"):
            InterpolatedEnergy(NormalDistribution(2), energy, lam)
    with pytest.raises(ValueError, match="n_blocks"):
        annealed_energies(NormalDistribution(2), energy, 0)
    assert [e.lam for e in annealed_energies(NormalDistribution(2), energy, 5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [e.lam for e in annealed_energies(NormalDistribution(2), energy, 1)] == [1.0]
    block = OverdampedLangevinBlock(InterpolatedEnergy(NormalDistribution(2), energy, 0.5), 2, 0.1)
    for bad in (torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 2, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"OverdampedLangevinBlock.*(\[batch|shape)"):
            block(bad)
    with pytest.raises(ValueError, match="MetropolisBlock"):
        MetropolisBlock(energy, 2, 0.1).inverse(torch.zeros(4, 3))
