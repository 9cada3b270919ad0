"""Flow-proposal independence Metropolis-Hastings: invariance, convergence, rejections."""

import math

import pytest
import torch

from boltzgen import BoltzmannGenerator
from boltzgen.distributions import NormalDistribution
from boltzgen.energy.quadrature import double_well_references
from boltzgen.energy.toy import DoubleWellEnergy
from boltzgen.flows import SequentialFlow
from boltzgen.sampling.mcmc import ChainState, FlowIndependenceMove, run_chains

F64 = torch.float64


def gaussian(mean, std):
    return NormalDistribution(2, mean=torch.tensor(mean, dtype=F64), std=torch.tensor(std, dtype=F64))


pytestmark = pytest.mark.usefixtures("single_thread")


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class Walled:
    """A 2-D energy that is +inf for x1 > wall."""

    def __init__(self, inner, wall):
        self.inner, self.wall = inner, wall

    def energy(self, x):
        u = self.inner.energy(x)
        return torch.where(x[:, 0] > self.wall, torch.full_like(u, math.inf), u)


def test_move_leaves_the_target_invariant():
    target = gaussian((1.0, -1.0), (0.5, 2.0))
    proposal = gaussian((0.0, 0.0), (1.5, 3.0))
    n = 20000
    move = FlowIndependenceMove(proposal, target, generator=seeded(0))
    state = move.state_at(target.sample(n, generator=seeded(1)))
    samples, acceptance = run_chains(move, state, n_steps=4)
    assert samples.shape == (4, n, 2) and 0.2 < acceptance < 0.9
    for x in samples:  # every step's states are exact, independent target samples
        mean_se = target.std / math.sqrt(n)
        var_se = target.std**2 * math.sqrt(2.0 / n)
        assert torch.all((x.mean(0) - target.mean).abs() < 4.5 * mean_se)
        assert torch.all((x.var(0) - target.std**2).abs() < 4.5 * var_se)
    # the states did move: a lazy chain that never accepted would pass the moments trivially
    assert float((samples[-1] != state.x).any(-1).double().mean()) > 0.5


def test_converges_from_a_bad_start_to_the_double_well_population():
    target = DoubleWellEnergy()
    proposal = gaussian((0.5, 0.0), (1.6, 1.1))
    n = 4000
    move = FlowIndependenceMove(proposal, target, generator=seeded(2))
    start = move.state_at(torch.tensor([[-1.71, 0.0]], dtype=F64).repeat(n, 1))  # all in the minor well
    samples, acceptance, final = run_chains(move, start, n_steps=40, thin=10, return_state=True)
    assert samples.shape == (4, n, 2)
    assert torch.equal(samples[-1], final.x)
    p = float((final.x[:, 0] > 0).double().mean())
    p_exact = double_well_references()["p_x1_positive"]  # 0.8443
    assert abs(p - p_exact) < 4 * math.sqrt(p_exact * (1 - p_exact) / n)
    assert move.acceptance_rate == pytest.approx(acceptance)
    assert move.n_proposed == 40 * n


def test_acceptance_is_one_when_the_proposal_is_the_target():
    target = gaussian((0.3, -0.2), (0.7, 1.3))
    move = FlowIndependenceMove(target, target, generator=seeded(3))
    samples, acceptance = run_chains(move, move.initial_state(1000), n_steps=5, flatten=True)
    assert acceptance == 1.0 and move.n_accepted == move.n_proposed == 5000
    assert samples.shape == (5000, 2)


def test_infinite_energies_and_non_finite_log_q_are_rejected():
    target = Walled(DoubleWellEnergy(), wall=1.0)
    proposal = gaussian((0.0, 0.0), (2.0, 1.0))
    move = FlowIndependenceMove(proposal, target, generator=seeded(4))
    x = torch.tensor([[-1.7, 0.0], [3.0, 0.0]], dtype=F64).repeat(500, 1)  # every second chain stuck in the wall
    state = move.state_at(x)
    assert torch.isinf(state.u[1::2]).all()
    samples, _ = run_chains(move, state, n_steps=20)
    assert bool((samples[-1][:, 0] <= 1.0).all())  # everyone left the wall and nobody entered it
    assert torch.isfinite(samples).all()
    assert bool((samples[:, :, 0] > 1.0).sum(0)[::2].eq(0).all())  # chains started outside never went in

    class NaNOutside(NormalDistribution):
        def _log_prob(self, x):
            lp = super()._log_prob(x)
            return torch.where(x[:, 0] > 0, torch.full_like(lp, math.nan), lp)

    nan_proposal = NaNOutside(2, mean=torch.zeros(2, dtype=F64), std=torch.ones(2, dtype=F64))
    nan_move = FlowIndependenceMove(nan_proposal, DoubleWellEnergy(), generator=seeded(5))
    after = nan_move.apply(nan_move.state_at(torch.tensor([[-1.7, 0.0]], dtype=F64).repeat(1000, 1)))
    assert bool((after.x[:, 0] <= 0).all()) and torch.isfinite(after.log_q).all()
    assert 0 < nan_move.n_accepted < 1000


def test_boltzmann_generator_as_proposal_and_state_validation():
    torch.manual_seed(0)
    bg = BoltzmannGenerator(gaussian((0.5, 0.0), (1.5, 1.0)), SequentialFlow([]), DoubleWellEnergy())
    move = FlowIndependenceMove(bg, bg.target, generator=seeded(6))
    state = move.initial_state(300)
    assert torch.allclose(state.log_q, bg.log_prob(state.x)) and torch.allclose(state.u, bg.energy(state.x))
    new = move.apply(state)
    assert new.x.shape == (300, 2) and move.n_proposed == 300
    assert torch.equal(new.log_w, torch.where(torch.isfinite(new.log_w), -new.u.double() - new.log_q.double(), new.log_w))
    with pytest.raises(ValueError):
        ChainState(torch.zeros(3, 2), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError):
        run_chains(move, state, n_steps=3, thin=0)
