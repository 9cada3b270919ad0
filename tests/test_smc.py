"""Resampling and continuous-time SMC against exact answers (quadrature references of the toys)."""

import json
import math

import numpy as np
import pytest
import torch

from boltzgen import BoltzmannGenerator
from boltzgen.distributions import NormalDistribution
from boltzgen.energy.quadrature import double_well_references, muller_brown_references
from boltzgen.energy.toy import DoubleWellEnergy, MullerBrownEnergy
from boltzgen.flows import SequentialFlow
from boltzgen.sampling.flow_energy import FlowEnergy
from boltzgen.sampling.resampling import multinomial_resample, systematic_resample
from boltzgen.sampling.smc import SMCConfig, smc_from_generator, smc_sample
from boltzgen.sampling.weights import ess

F64 = torch.float64


def gaussian(mean, std):
    return NormalDistribution(2, mean=torch.tensor(mean, dtype=F64), std=torch.tensor(std, dtype=F64))


class WalledDoubleWell:
    """Double well with an infinite wall at x1 > wall (autograd forces; +inf energy there)."""

    def __init__(self, wall: float):
        self.wall, self.inner = wall, DoubleWellEnergy()

    def energy(self, x):
        u = self.inner.energy(x)
        return torch.where(x[:, 0] > self.wall, torch.full_like(u, math.inf), u)


pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("seed", range(5))
def test_systematic_offspring_are_floor_or_ceil_of_expected(seed):
    g = seeded(seed)
    n = 500
    log_w = 3.0 * torch.randn(n, dtype=F64, generator=g)
    log_w[:50] = -math.inf
    idx = systematic_resample(log_w, generator=g)
    counts = torch.bincount(idx, minlength=n).double()
    expected = n * torch.softmax(log_w, 0)
    assert idx.shape == (n,) and idx.dtype == torch.int64
    assert torch.all(counts >= torch.floor(expected - 1e-9)) and torch.all(counts <= torch.ceil(expected + 1e-9))
    assert counts[:50].sum() == 0
    assert bool((idx[1:] >= idx[:-1]).all())


def test_multinomial_offspring_match_expectation():
    g = seeded(1)
    n, reps = 20, 4000
    log_w = torch.randn(n, dtype=F64, generator=g)
    log_w[3] = -math.inf
    counts = torch.stack([torch.bincount(multinomial_resample(log_w, g), minlength=n) for _ in range(reps)]).double()
    p = torch.softmax(log_w, 0)
    mean, se = counts.mean(0), torch.sqrt(n * p * (1 - p) / reps)
    assert counts[:, 3].sum() == 0
    live = p > 0
    assert torch.all((mean[live] - n * p[live]).abs() < 5 * se[live])
    # multinomial is not systematic: counts do stray beyond floor/ceil
    assert bool(((counts - n * p).abs() >= 2).any())


@pytest.mark.parametrize("resample", [systematic_resample, multinomial_resample])
def test_zero_weights_never_selected(resample):
    n = 64
    log_w = torch.full((n,), -math.inf, dtype=F64)
    log_w[[5, 6, 63]] = torch.tensor([1e5, 1e5 - 40.0, 1e5 - 700.0], dtype=F64)  # 63 underflows to 0
    for seed in range(200):
        idx = resample(log_w, generator=seeded(seed))
        assert set(idx.tolist()) <= {5, 6}
    single = torch.full((n,), -math.inf, dtype=F64)
    single[-1] = 0.0
    assert torch.equal(resample(single, generator=seeded(0)), torch.full((n,), n - 1))
    with pytest.raises(ValueError):
        resample(torch.full((4,), -math.inf, dtype=F64))
    with pytest.raises(ValueError):
        resample(torch.tensor([0.0, math.nan], dtype=F64))


# ----------------------------------------------------------------------------- SMC: exactness


def replicate_stats(values):
    values = np.asarray(values, dtype=float)
    return values.mean(0), values.std(0, ddof=1) / math.sqrt(len(values))


def test_smc_recovers_muller_brown_state_free_energies_from_poor_proposal():
    ref = muller_brown_references()
    sites = torch.tensor([ref["minima"][s] for s in "ABC"], dtype=F64)
    target = MullerBrownEnergy()
    # a narrow Gaussian on minimum A only: importance sampling puts ~no weight on state B (0.119)
    proposal = gaussian((-0.5, 1.4), (0.4, 0.3))
    x_is = proposal.sample(4000, generator=seeded(99))
    in_b = torch.cdist(x_is, sites).argmin(1) == 1
    is_w = torch.softmax((-target.energy(x_is) - proposal.log_prob(x_is)).double(), 0)
    assert float(is_w[in_b].sum()) < 0.01

    config = SMCConfig(n_steps=100, step_size=0.01, kernel="mala", top_weight_fraction=0.0)
    dfs, log_zs = [], []
    for seed in range(8):
        g = seeded(seed)
        result = smc_sample(proposal, target, proposal.sample(2000, generator=g), config, generator=g)
        states = torch.cdist(result.x, sites).argmin(1)
        counts = torch.bincount(states, minlength=3).double()
        dfs.append((-torch.log(counts[1:] / counts[0])).tolist())  # F_B - F_A, F_C - F_A
        log_zs.append(result.log_z_ratio)
    df_mean, df_se = replicate_stats(dfs)
    df_exact = np.array([ref["f_B_kT"] - ref["f_A_kT"], ref["f_C_kT"] - ref["f_A_kT"]])
    assert np.all(df_se < 0.15)
    assert np.all(np.abs(df_mean - df_exact) < 4 * df_se + 0.02), (df_mean, df_se, df_exact)
    # the proposal is normalised, so log Z_target / Z_flow = log Z_target
    lz_mean, lz_se = replicate_stats(log_zs)
    assert lz_se < 0.05
    assert abs(lz_mean - ref["log_z"]) < 4 * lz_se + 0.01, (lz_mean, lz_se, ref["log_z"])


def test_smc_langevin_multinomial_recovers_double_well():
    ref = double_well_references()
    target = DoubleWellEnergy()
    proposal = gaussian((0.5, 0.0), (1.0, 0.5))  # x2 too narrow: infinite-variance IS weights
    config = SMCConfig(n_steps=100, step_size=0.01, kernel="langevin", resampling="multinomial")
    p_plus, log_zs = [], []
    for seed in range(6):
        g = seeded(100 + seed)
        result = smc_sample(proposal, target, proposal.sample(2000, generator=g), config, generator=g)
        p_plus.append(float((result.x[:, 0] > 0).double().mean()))
        log_zs.append(result.log_z_ratio)
        assert result.n_dropped_top_weight == 4  # ceil(0.002 * 2000)
        assert result.config.resampling == "multinomial"
    p_mean, p_se = replicate_stats(p_plus)
    assert p_se < 0.02
    assert abs(p_mean - ref["p_x1_positive"]) < 4 * p_se + 0.01
    lz_mean, lz_se = replicate_stats(log_zs)
    assert abs(lz_mean - ref["log_z"]) < 4 * lz_se + 0.05


# ----------------------------------------------------------------------------- SMC: the path


def test_path_ends_at_one_and_single_step_gives_importance_weights():
    target = DoubleWellEnergy()
    proposal = gaussian((0.5, 0.0), (1.0, 0.7))
    x0 = proposal.sample(500, generator=seeded(3))
    config = SMCConfig(n_steps=1, step_size=0.01, ess_threshold=0.0, top_weight_fraction=0.0)
    result = smc_sample(proposal, target, x0, config, generator=seeded(4))
    is_log_w = (-target.energy(x0) - proposal.log_prob(x0)).double()
    assert result.times == [0.0, 1.0]
    assert torch.equal(result.log_w_before_final_resampling, is_log_w)
    assert result.ess_history == [pytest.approx(ess(is_log_w), rel=1e-12)]
    assert result.log_z_ratio == pytest.approx(float(torch.logsumexp(is_log_w, 0) - math.log(500)), abs=1e-10)
    assert result.resampling_steps == [1] and torch.equal(result.log_w, torch.zeros(500, dtype=F64))

    default = smc_sample(proposal, target, x0, SMCConfig(step_size=0.01), generator=seeded(4))
    assert len(default.times) == 101 and default.times[-1] == 1.0 and default.times[0] == 0.0
    assert len(default.ess_history) == 100 and len(default.step_size_history) == 100
    assert default.resampling_steps[-1] == 100  # the final resampling, after the last move


def test_moves_target_the_next_time_point():
    # flow N(3, 1) in x1, target N(0, 1), K = 2: the moves after the increment to t_{k+1} must
    # target E_{t_{k+1}}; moving with E_{t_k} (t = 0.5 last) would leave the final mean at 1.5.
    # (That the last time is exactly 1 is checked by the flow-evaluation count below: the flow
    # is skipped only at t == 1.0.)
    target = gaussian((0.0, 0.0), (1.0, 1.0))
    flow = gaussian((3.0, 0.0), (1.0, 1.0))
    config = SMCConfig(n_steps=2, step_size=0.5, kernel="mala", langevin_steps_per_time=20, top_weight_fraction=0.0)
    n = 10000
    result = smc_sample(flow, target, flow.sample(n, generator=seeded(5)), config, generator=seeded(6))
    assert abs(float(result.x[:, 0].mean())) < 4 * math.sqrt(2.0 / n)  # resampling roughly doubles the variance
    assert float(result.x[:, 0].var()) == pytest.approx(1.0, abs=0.08)


# ----------------------------------------------------------------------------- filtering, failures


def test_pre_smc_filtering_counts():
    target = WalledDoubleWell(wall=2.5)
    proposal = gaussian((0.0, 0.0), (1.5, 1.0))
    x0 = proposal.sample(2000, generator=seeded(7))
    u = target.energy(x0)
    log_w0 = (-u - proposal.log_prob(x0)).double()
    log_w0[0] = -math.inf  # a proposal whose weight could not be evaluated
    x0[1, 0] = 2.6  # beyond the wall: infinite energy
    u = target.energy(x0)
    cutoff = 5.0
    non_finite = ~torch.isfinite(u) | ~torch.isfinite(log_w0)
    above = ~non_finite & (u > cutoff)
    expected_top = math.ceil(0.002 * int((~non_finite & ~above).sum()))
    config = SMCConfig(n_steps=5, step_size=1e-3, energy_cutoff=cutoff, kernel="mala")
    result = smc_sample(proposal, target, x0, config, log_w0=log_w0, generator=seeded(8))
    assert result.n_dropped_non_finite == int(non_finite.sum()) >= 2
    assert result.n_dropped_energy_cutoff == int(above.sum()) > 0
    assert result.n_dropped_top_weight == expected_top
    assert result.n_particles == 2000 - int(non_finite.sum()) - int(above.sum()) - expected_top
    assert result.x.shape == (result.n_particles, 2) and result.n_proposals == 2000
    assert result.n_energy_evals == result.n_particles * 5 + 2000
    # the flow is evaluated at x0 and after the moves to t = 0.2 ... 0.8, not after the move at t == 1.0
    assert result.n_flow_evals == result.n_particles * 4 + 2000
    json.dumps(result.as_dict())


@pytest.mark.parametrize("kernel", ["langevin", "mala"])
def test_infinite_energies_during_the_run_are_counted_not_nan(kernel):
    target = WalledDoubleWell(wall=2.1)
    proposal = gaussian((1.75, 0.0), (0.15, 1.0))  # all proposals inside the wall (2.3 sigma ... )
    x0 = proposal.sample(3000, generator=seeded(9))
    x0 = x0[x0[:, 0] < 2.1]
    config = SMCConfig(n_steps=20, step_size=0.05, kernel=kernel, adapt_step_size=False, top_weight_fraction=0.0)
    result = smc_sample(proposal, target, x0, config, generator=seeded(10))
    assert not any(math.isnan(v) for v in result.ess_history) and math.isfinite(result.log_z_ratio)
    assert not torch.isnan(result.log_w_before_final_resampling).any()
    assert torch.isfinite(result.u_target).all() and bool((result.x[:, 0] <= 2.1).all())
    if kernel == "langevin":
        assert result.n_dropped_non_finite > 0
        assert bool(torch.isinf(result.log_w_before_final_resampling).any()) or result.n_resampling_events > 1
    else:
        assert result.n_dropped_non_finite == 0


def test_all_particles_dying_raises():
    class Wall:
        def energy(self, x):
            return torch.where(x[:, 0] > -100.0, torch.full_like(x[:, 0], math.inf), x[:, 0])

    proposal = gaussian((0.0, 0.0), (1.0, 1.0))
    with pytest.raises(RuntimeError):
        smc_sample(proposal, Wall(), proposal.sample(10, generator=seeded(0)), SMCConfig(n_steps=3))


# ----------------------------------------------------------------------------- kernels, lineage


def test_mala_adaptive_step_rule():
    target = DoubleWellEnergy()
    proposal = gaussian((1.7, 0.0), (0.3, 1.0))
    for h0, direction in [(2.0, -1), (1e-5, +1)]:
        config = SMCConfig(n_steps=30, step_size=h0, kernel="mala", top_weight_fraction=0.0)
        result = smc_sample(proposal, target, proposal.sample(1000, generator=seeded(11)), config, generator=seeded(12))
        h, acc = result.step_size_history, result.acceptance_history
        assert len(h) == len(acc) == 30 and h[0] == h0
        for k in range(29):
            factor = 1.1 if acc[k] > 0.6 else (1 / 1.1 if acc[k] < 0.55 else 1.0)
            assert h[k + 1] == pytest.approx(h[k] * factor, rel=1e-12)
        assert (h[-1] - h0) * direction > 0
    fixed = SMCConfig(n_steps=10, step_size=2.0, kernel="mala", adapt_step_size=False)
    result = smc_sample(proposal, target, proposal.sample(500, generator=seeded(13)), fixed, generator=seeded(14))
    assert result.step_size_history == [2.0] * 10 and max(result.acceptance_history) < 0.55


def test_lineage_statistics():
    gauss = gaussian((0.0, 0.0), (1.0, 1.0))
    x0 = gauss.sample(400, generator=seeded(15))
    same = smc_sample(gauss, gauss, x0, SMCConfig(n_steps=10, step_size=0.1, top_weight_fraction=0.0), generator=seeded(16))
    assert same.log_z_ratio == 0.0 and same.n_resampling_events == 0
    assert same.n_distinct_ancestors == 400 and same.mean_times_resampled == 0.0
    assert torch.equal(same.log_w, torch.zeros(400, dtype=F64))

    target = gaussian((1.0, 0.0), (0.5, 1.0))
    always = SMCConfig(n_steps=10, step_size=0.1, ess_threshold=1.0, top_weight_fraction=0.0)
    result = smc_sample(gauss, target, x0, always, generator=seeded(17))
    assert result.resampling_steps == list(range(10))  # every step, and no final one (weights equal)
    assert 1 <= result.n_distinct_ancestors < 400
    assert 0 < result.mean_times_resampled <= result.n_resampling_events


def test_smc_from_generator_and_flow_energy():
    torch.manual_seed(0)
    prior = NormalDistribution(2, mean=torch.tensor([0.5, 0.0], dtype=F64), std=torch.tensor([1.0, 0.7], dtype=F64))
    bg = BoltzmannGenerator(prior, SequentialFlow([]), DoubleWellEnergy())
    flow_energy = FlowEnergy(bg)
    x = torch.tensor([[0.1, 0.2], [1.0, -1.0]], dtype=F64)
    assert flow_energy.dim == 2
    assert torch.allclose(flow_energy.energy(x), -prior.log_prob(x))
    result = smc_from_generator(bg, 1000, SMCConfig(n_steps=20, step_size=0.01), generator=seeded(18))
    assert result.n_proposals == 1000 and result.n_particles == 998 and result.x.dtype == F64
    assert abs(result.log_z_ratio - double_well_references()["log_z"]) < 0.3


def test_flow_energy_is_infinite_outside_support_and_differentiable_inside():
    class HalfPlane:
        """Exponential density on x1 > 0: log q = -x1 - x2^2/2 + c; NaN / -inf outside."""

        def log_prob(self, x):
            return torch.log(x[:, 0]) * 0 - x[:, 0] - 0.5 * x[:, 1] ** 2

    energy = FlowEnergy(HalfPlane(), dim=2)
    x = torch.tensor([[1.0, 0.5], [-1.0, 0.0]], dtype=F64, requires_grad=True)
    u = energy.energy(x)
    assert u[0].item() == pytest.approx(1.125) and u[1].item() == math.inf
    (grad,) = torch.autograd.grad(u[0], x)
    assert torch.allclose(grad[0], torch.tensor([1.0, 0.5], dtype=F64))
    assert energy.n_evaluations == 2
    with pytest.raises(ValueError):
        energy.energy(torch.zeros(3, 3, dtype=F64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_smc_runs_on_gpu():
    target = MullerBrownEnergy().cuda()
    proposal = gaussian((-0.5, 1.4), (0.4, 0.3)).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = proposal.sample(4000, generator=g)
    result = smc_sample(proposal, target, x0, SMCConfig(step_size=0.01, kernel="mala"), generator=g)
    assert result.x.is_cuda and result.x.dtype == F64 and math.isfinite(result.log_z_ratio)
    assert result.log_z_ratio == pytest.approx(muller_brown_references()["log_z"], abs=0.15)
