"""Temperature-change flows: the loss and its training, LFEP / BAR estimates, MBAR over a temperature ladder.

The exact case: a d-dimensional harmonic oscillator ``U = |x|^2 / 2`` at "temperatures" T (kT = T,
dimensionless), ``Z_T = (2 pi T)^(d/2)``, so ``dF = F_T - F_B = -(d/2) log(T_T / T_B)`` and the map
``x -> sqrt(T_T / T_B) x`` carries p_B exactly onto p_T (every work equals dF).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from boltzgen.analysis.perturbation import bar, ess_with_error, lfep
from boltzgen.analysis.temperature_ladder import (
    mbar_temperature_ladder,
    reduced_potentials,
    run_temperature_ladder,
    temperature_ladder,
)
from boltzgen.errors import BoltzgenError
from boltzgen.flows.base import Flow
from boltzgen.sampling.weights import ess
from boltzgen.train.temperature_change import (
    base_to_target_loss,
    forward_works,
    reverse_works,
    mixture_forward_works,
    mixture_reverse_works,
    train_temperature_change,
)
from boltzgen.units import kt_kj_per_mol

D, T_BASE, T_TARGET = 4, 2.5, 1.0
EXACT_DF = -(D / 2) * math.log(T_TARGET / T_BASE)
OPTIMAL_LOG_SCALE = 0.5 * math.log(T_TARGET / T_BASE)


pytestmark = pytest.mark.usefixtures("single_thread")


class ScaleFlow(Flow):
    """``y = exp(s) * x + b`` with a learnable per-dimension log scale ``s`` ``[D]`` (a scalar or
    ``[D]`` at the start) and a fixed shift ``b`` ``[D]`` (default 0)."""

    def __init__(self, dim: int, log_scale=0.0, shift=None):
        super().__init__()
        log_scale = torch.as_tensor(log_scale, dtype=torch.float64).expand(dim).clone()
        self.log_scale = torch.nn.Parameter(log_scale)
        shift = torch.zeros(dim, dtype=torch.float64) if shift is None else torch.as_tensor(shift, dtype=torch.float64)
        self.register_buffer("shift", shift.expand(dim).clone())

    def _forward(self, x, context=None):
        return x * torch.exp(self.log_scale) + self.shift, self.log_scale.sum().expand(x.shape[0])

    def _inverse(self, y, context=None):
        return (y - self.shift) * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(y.shape[0])


def harmonic(temperature: float):
    """Reduced energy ``|x|^2 / (2 T)`` ``[B, D] -> [B]``."""
    return lambda x: 0.5 * (x**2).sum(-1) / temperature


def samples(temperature: float, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return math.sqrt(temperature) * torch.randn(n, D, generator=gen, dtype=torch.float64)


def works(flow: Flow, n_base: int, n_target: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = samples(T_BASE, n_base, seed), samples(T_TARGET, n_target, seed + 1)
    w_f = forward_works(flow, x, harmonic(T_BASE)(x), harmonic(T_TARGET))
    w_r = reverse_works(flow, y, harmonic(T_TARGET)(y), harmonic(T_BASE))
    return w_f, w_r


# ---------------------------------------------------------------------------------------------
# (1) exact harmonic case: LFEP and BAR
# ---------------------------------------------------------------------------------------------


def test_identity_flow_lfep_and_bar_recover_the_exact_temperature_change():
    w_f, w_r = works(ScaleFlow(D), 10_000, 10_000, seed=0)
    df, err = lfep(-w_f)
    assert 0 < err < 0.05
    assert abs(df - EXACT_DF) < 4 * err
    # (reverse FEP alone, -log mean exp(-W_R), has infinite variance here: cooling -> heating)
    df_bar, err_bar = bar(w_f, w_r)
    assert 0 < err_bar < err  # BAR uses both ensembles: smaller error than one-sided FEP
    assert abs(df_bar - EXACT_DF) < 4 * err_bar
    # identity flow: ESS below 1 (per dimension sqrt(a(2b - a))/b with a = 1/T_B, b = 1/T_T)
    expected_ess = (math.sqrt((1 / T_BASE) * (2 / T_TARGET - 1 / T_BASE)) * T_TARGET) ** D
    assert abs(ess(-w_f) - expected_ess) < 0.05


def test_optimal_scaling_flow_gives_constant_works_exact_df_and_unit_ess():
    flow = ScaleFlow(D, OPTIMAL_LOG_SCALE)
    w_f, w_r = works(flow, 2000, 1000, seed=3)
    assert torch.allclose(w_f, torch.full_like(w_f, EXACT_DF), atol=1e-12)
    assert torch.allclose(w_r, torch.full_like(w_r, -EXACT_DF), atol=1e-12)
    df, err = lfep(-w_f)
    assert df == pytest.approx(EXACT_DF, abs=1e-12) and err < 1e-12
    assert ess(-w_f) == pytest.approx(1.0, abs=1e-12)
    df_bar, err_bar = bar(w_f, w_r)
    assert df_bar == pytest.approx(EXACT_DF, abs=1e-9) and err_bar < 1e-9


def test_loss_is_the_mean_work_and_an_upper_bound_on_df():
    x = samples(T_BASE, 5000, seed=5)
    u_b = harmonic(T_BASE)(x)
    for log_scale in (0.0, OPTIMAL_LOG_SCALE, -1.0):
        flow = ScaleFlow(D, log_scale)
        loss, diag = base_to_target_loss(flow, x, u_b, harmonic(T_TARGET))
        loss = float(loss.detach())
        assert loss == pytest.approx(float(forward_works(flow, x, u_b, harmonic(T_TARGET)).mean()), rel=1e-12)
        assert diag.mean_work == pytest.approx(loss, rel=1e-12)
        assert diag.n_cut == 0
        # analytic E_B[W_F] = d (s^2 T_B / (2 T_T) - 1/2 - log s) >= dF, equality at the optimum
        s2 = math.exp(2 * log_scale)
        expected = D * (s2 * T_BASE / (2 * T_TARGET) - 0.5 - log_scale)
        assert loss == pytest.approx(expected, abs=0.1)
        assert loss >= EXACT_DF - 1e-9
    # a broken target energy is cut, not propagated: finite loss, counted
    def broken(y):
        u = harmonic(T_TARGET)(y)
        return torch.where(torch.arange(len(u)) % 10 == 0, torch.full_like(u, math.nan), u)

    loss, diag = base_to_target_loss(ScaleFlow(D), x, u_b, broken)
    assert torch.isfinite(loss) and diag.n_cut == 500
    assert diag.ess < 0.95 and torch.isinf(diag.works).sum() == 500


# ---------------------------------------------------------------------------------------------
# (1b) mixtures of flows and group averages: a symmetric two-mode target
# ---------------------------------------------------------------------------------------------


class PointReflection:
    """The group {y, -y} on R^D."""

    def __len__(self):
        return 2

    def apply(self, y, operation):
        return y if operation == 0 else -y


def two_mode_energy(mode: torch.Tensor, sigma: float):
    """``u(y) = -log(exp(-|y - m|^2 / 2s^2) + exp(-|y + m|^2 / 2s^2))`` ``[B, D] -> [B]``;
    ``Z = 2 (2 pi s^2)^(D/2)``, invariant under ``y -> -y``."""
    def energy(y):
        modes = torch.stack([((y - mode) ** 2).sum(-1), ((y + mode) ** 2).sum(-1)])
        return -torch.logsumexp(-modes / (2 * sigma**2), 0)
    return energy


def test_group_averaged_flow_gives_exact_df_where_the_plain_flow_misses_a_mode():
    sigma = 0.4
    mode = torch.full((D,), 1.5, dtype=torch.float64)
    u_target = two_mode_energy(mode, sigma)
    u_base = harmonic(1.0)
    exact_df = -math.log(2.0) - D * math.log(sigma)  # -log(Z_T / Z_B), Z_B = (2 pi)^(D/2)
    flow = ScaleFlow(D, math.log(sigma), mode)  # onto the +m mode exactly
    x = samples(1.0, 4000, seed=11)
    y = samples(1.0, 3000, seed=12)
    y = torch.where(torch.rand(3000, 1, generator=torch.Generator().manual_seed(13)) < 0.5, -1.0, 1.0) * (
        sigma * y + mode)  # exact target samples
    # the plain flow weights one mode: ESS ~1, but dF is off by log 2
    plain = forward_works(flow, x, u_base(x), u_target)
    assert lfep(-plain)[0] == pytest.approx(exact_df + math.log(2.0), abs=1e-3)
    # the average over {y, -y} is the target itself: constant works, exact LFEP and BAR, ESS 1
    w_f = mixture_forward_works(flow, x, u_target, u_base, PointReflection(), batch_size=1000)
    w_r = mixture_reverse_works(flow, y, u_target(y), u_base, PointReflection(), batch_size=1000)
    assert w_f.dtype == torch.float64 and w_f.shape == (4000,) and w_r.shape == (3000,)
    assert torch.allclose(w_f, torch.full_like(w_f, exact_df), atol=1e-10)
    assert torch.allclose(w_r, torch.full_like(w_r, -exact_df), atol=1e-10)
    assert ess(-w_f) == pytest.approx(1.0, abs=1e-12)
    assert bar(w_f, w_r)[0] == pytest.approx(exact_df, abs=1e-8)
    # one flow without a group is the plain flow
    alone = mixture_forward_works(flow, x, u_target, u_base)
    assert torch.allclose(alone, plain, atol=1e-10)


def test_ensemble_of_two_flows_that_each_find_one_mode_is_exact():
    sigma = 0.5
    mode = torch.full((D,), 1.2, dtype=torch.float64)
    u_target = two_mode_energy(mode, sigma)
    exact_df = -math.log(2.0) - D * math.log(sigma)
    flows = [ScaleFlow(D, math.log(sigma), mode), ScaleFlow(D, math.log(sigma), -mode)]
    x = samples(1.0, 1001, seed=21)
    w_f = mixture_forward_works(flows, x, u_target, harmonic(1.0), batch_size=300)
    assert w_f.shape == (1001,)
    assert torch.allclose(w_f, torch.full_like(w_f, exact_df), atol=1e-10)
    # samples alternate between the flows: the even ones sit in the +m mode, the odd ones in -m
    y_even = flows[0](x[0::2])[0].detach()
    assert float((y_even * mode).sum(-1).min()) > 0 and torch.allclose(
        mixture_reverse_works(flows, y_even, u_target(y_even), harmonic(1.0)), torch.full((501,), -exact_df,
                                                                                      dtype=torch.float64), atol=1e-10)
    # ensemble and group together: M |G| = 4 components, still exact
    both = mixture_forward_works(flows, x, u_target, harmonic(1.0), PointReflection())
    assert torch.allclose(both, torch.full_like(both, exact_df), atol=1e-10)
    with pytest.raises(ValueError):
        mixture_forward_works([], x, u_target, harmonic(1.0))


def test_group_averaged_weights_are_unbiased_for_any_flow_by_quadrature():
    """1D, an asymmetric flow: E_B[exp(-W_G(f(x)))] = Z_T / Z_B by quadrature, and W_G(-y) = W_G(y)."""
    u_target = two_mode_energy(torch.tensor([0.8], dtype=torch.float64), 0.6)
    u_base = harmonic(1.0)
    flow = ScaleFlow(1, -0.3, 0.5)
    x = torch.linspace(-12, 12, 48001, dtype=torch.float64).unsqueeze(-1)
    dx = float(x[1] - x[0])
    p_base = torch.exp(-u_base(x)) / math.sqrt(2 * math.pi)
    z_ratio = float(torch.exp(-u_target(x)).sum() * dx) / math.sqrt(2 * math.pi)
    w_g = mixture_forward_works(flow, x, u_target, u_base, PointReflection(), batch_size=10000)
    assert float((p_base * torch.exp(-w_g)).sum() * dx) == pytest.approx(z_ratio, rel=1e-9)
    w_plain = forward_works(flow, x, u_base(x), u_target)
    assert float((p_base * torch.exp(-w_plain)).sum() * dx) == pytest.approx(z_ratio, rel=1e-9)
    # invariance: the works of y and -y agree (reverse works of the same points, negated)
    y = flow(x[::100])[0]
    assert torch.allclose(mixture_reverse_works(flow, y, u_target(y), u_base, PointReflection()),
                          mixture_reverse_works(flow, -y, u_target(-y), u_base, PointReflection()),
                          atol=1e-10)
    # the group average has the lower KL (mean work) here: it puts mass on the mode f misses
    assert float((p_base.squeeze() * w_g).sum() * dx) < float((p_base.squeeze() * w_plain).sum() * dx)
    # an ensemble of two different flows: sample i comes from flow i mod 2, so the expectation is
    # the average over both pushforwards, one quadrature per flow
    flows = [flow, ScaleFlow(1, 0.2, -0.7)]
    expectation = 0.0
    for m in range(2):
        pushed = flows[m](x)[0]
        w = -mixture_reverse_works(flows, pushed, u_target(pushed), u_base)
        expectation += 0.5 * float((p_base.squeeze() * torch.exp(-w)).sum() * dx)
    assert expectation == pytest.approx(z_ratio, rel=1e-9)
    interleaved = mixture_forward_works(flows, x[:6], u_target, u_base)
    assert torch.allclose(interleaved[1::2], -mixture_reverse_works(flows, flows[1](x[1:6:2])[0],
                                                                    u_target(flows[1](x[1:6:2])[0]), u_base))


# ---------------------------------------------------------------------------------------------
# (2) training reaches the optimal map
# ---------------------------------------------------------------------------------------------


def test_training_a_scale_flow_reaches_the_optimal_scale_and_unit_ess():
    x = samples(T_BASE, 4096, seed=7)
    u_b = harmonic(T_BASE)(x)
    flow = ScaleFlow(D)
    history = train_temperature_change(
        flow, x, u_b, harmonic(T_TARGET), n_steps=300, batch_size=256, learning_rate=0.05, seed=0,
        log_every=50, quiet=True,
    )
    assert history.n_steps == 300 and history.n_skipped_steps == 0 and len(history.records) == 6
    assert history.records[-1]["loss"] < history.records[0]["loss"]
    assert torch.allclose(flow.log_scale.detach(), torch.full((D,), OPTIMAL_LOG_SCALE, dtype=torch.float64), atol=0.03)
    held_out = samples(T_BASE, 4096, seed=8)
    w_f = forward_works(flow, held_out, harmonic(T_BASE)(held_out), harmonic(T_TARGET))
    assert ess(-w_f) > 0.99
    df, err = lfep(-w_f)
    assert abs(df - EXACT_DF) < max(4 * err, 1e-3)
    # seeded: the same seed gives the same parameters
    again = ScaleFlow(D)
    train_temperature_change(again, x, u_b, harmonic(T_TARGET), n_steps=300, batch_size=256, learning_rate=0.05,
                             seed=0, quiet=True)
    assert torch.equal(again.log_scale, flow.log_scale)


def test_validation_keeps_the_parameters_of_the_best_check():
    """The flow ends with the parameters of the validation check with the highest ESS."""
    x, x_val = samples(T_BASE, 2048, seed=10), samples(T_BASE, 1024, seed=11)
    validation = (x_val, harmonic(T_BASE)(x_val))
    # started at the exact map (validation ESS 1) with a step size that throws it off: step 0 wins
    flow = ScaleFlow(D, log_scale=OPTIMAL_LOG_SCALE)
    start = flow.log_scale.detach().clone()
    history = train_temperature_change(
        flow, x, harmonic(T_BASE)(x), harmonic(T_TARGET), n_steps=40, batch_size=16, learning_rate=0.3, seed=0,
        quiet=True, validation=validation, validate_every=10,
    )
    assert [r["step"] for r in history.validation_records] == [0, 10, 20, 30, 40]
    assert history.validation_records[0]["ess"] == pytest.approx(1.0, abs=1e-12)
    assert min(r["ess"] for r in history.validation_records[1:]) < 0.99  # training did move it away
    assert history.best_step == 0 and torch.equal(flow.log_scale.detach(), start)
    assert history.n_energy_evaluations == 40 * 16 + 5 * 1024
    # from the identity, training improves it: the best check is a late one, and it is what is kept
    flow = ScaleFlow(D)
    history = train_temperature_change(
        flow, x, harmonic(T_BASE)(x), harmonic(T_TARGET), n_steps=200, batch_size=256, learning_rate=0.05, seed=0,
        quiet=True, validation=validation, validate_every=50,
    )
    values = [r["ess"] for r in history.validation_records]
    assert history.best_step == history.validation_records[int(np.argmax(values))]["step"] > 0
    kept = ess(-forward_works(flow, x_val, validation[1], harmonic(T_TARGET)))
    assert kept == pytest.approx(history.best_validation_ess, rel=1e-12) and kept > 0.99
    with pytest.raises(ValueError, match="validation must be"):
        train_temperature_change(flow, x, harmonic(T_BASE)(x), harmonic(T_TARGET), n_steps=1, batch_size=8,
                                 learning_rate=0.01, seed=0, quiet=True, validation=(x_val[:, :2], validation[1]))


def test_ess_penalty_is_minus_log_batch_ess_and_vanishes_at_the_exact_map():
    x = samples(T_BASE, 64, seed=12)
    u_b = harmonic(T_BASE)(x)
    flow = ScaleFlow(D, log_scale=0.3 * OPTIMAL_LOG_SCALE)
    plain, diag = base_to_target_loss(flow, x, u_b, harmonic(T_TARGET))
    penalised, _ = base_to_target_loss(flow, x, u_b, harmonic(T_TARGET), ess_weight=0.7)
    penalty = float((penalised - plain).detach())
    assert penalty == pytest.approx(-0.7 * math.log(ess(-diag.works)), rel=1e-10) and penalty > 0.01
    # at the exact map every work equals dF: the penalty and its gradient vanish
    gradients = []
    for weight in (0.0, 0.7):
        exact = ScaleFlow(D, log_scale=OPTIMAL_LOG_SCALE)
        loss, _ = base_to_target_loss(exact, x, u_b, harmonic(T_TARGET), ess_weight=weight)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(EXACT_DF, abs=1e-9)
        gradients.append(exact.log_scale.grad)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=0, atol=1e-9)
    trained = ScaleFlow(D)
    train_temperature_change(trained, samples(T_BASE, 4096, seed=7), harmonic(T_BASE)(samples(T_BASE, 4096, seed=7)),
                             harmonic(T_TARGET), n_steps=300, batch_size=256, learning_rate=0.05, seed=0, quiet=True,
                             ess_weight=0.5)
    assert torch.allclose(trained.log_scale.detach(), torch.full((D,), OPTIMAL_LOG_SCALE, dtype=torch.float64), atol=0.03)
    with pytest.raises(ValueError, match="ess_weight"):
        train_temperature_change(trained, x, u_b, harmonic(T_TARGET), n_steps=1, batch_size=8, learning_rate=0.01,
                                 seed=0, quiet=True, ess_weight=-1.0)


def test_augmentation_is_applied_to_every_minibatch():
    """An ensemble-preserving augmentation (x -> -x per sample, a symmetry of the harmonic p_B) still
    trains to the optimal map; one that is the identity leaves training unchanged."""
    x = samples(T_BASE, 4096, seed=7)
    u_b = harmonic(T_BASE)(x)
    seen = []

    def identity(batch, generator):
        seen.append(batch.shape)
        return batch

    reference, recorded = ScaleFlow(D), ScaleFlow(D)
    options = dict(n_steps=50, batch_size=64, learning_rate=0.05, seed=0, quiet=True)
    train_temperature_change(reference, x, u_b, harmonic(T_TARGET), **options)
    train_temperature_change(recorded, x, u_b, harmonic(T_TARGET), augment=identity, **options)
    assert seen == [torch.Size([64, D])] * 50 and torch.equal(recorded.log_scale, reference.log_scale)

    def flip(batch, generator):
        signs = torch.randint(0, 2, (batch.shape[0], 1), generator=generator).to(batch) * 2 - 1
        return batch * signs

    flipped = ScaleFlow(D)
    train_temperature_change(flipped, x, u_b, harmonic(T_TARGET), augment=flip, **dict(options, n_steps=300, batch_size=256))
    assert torch.allclose(flipped.log_scale.detach(), torch.full((D,), OPTIMAL_LOG_SCALE, dtype=torch.float64), atol=0.03)

    def shift(batch, generator):  # not a symmetry: moves the samples off the base ensemble
        return batch + 3.0

    shifted = ScaleFlow(D)
    train_temperature_change(shifted, x, u_b, harmonic(T_TARGET), augment=shift, **dict(options, n_steps=300, batch_size=256))
    assert not torch.allclose(shifted.log_scale.detach(), flipped.log_scale.detach(), atol=0.1)


def test_moving_average_of_the_parameters_is_what_the_flow_keeps():
    """With ``ema_decay`` the flow ends with the EMA of the parameter trajectory (recomputed here
    from runs stopped after 1, 2, ... steps), ``last_state`` with the last parameters."""
    x = samples(T_BASE, 1024, seed=3)
    u_b = harmonic(T_BASE)(x)
    options = dict(batch_size=8, learning_rate=0.05, seed=4, quiet=True, final_lr_fraction=1.0)
    n_steps, decay = 12, 0.7
    trajectory = []
    for n in range(1, n_steps + 1):  # the trajectory of one training run (the schedule is flat)
        flow = ScaleFlow(D)
        train_temperature_change(flow, x, u_b, harmonic(T_TARGET), n_steps=n, **options)
        trajectory.append(flow.log_scale.detach().clone())
    expected = torch.zeros(D, dtype=torch.float64)  # the initial parameters
    for n, theta in enumerate(trajectory):
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        expected = expected + weight * (theta - expected)
    flow = ScaleFlow(D)
    history = train_temperature_change(flow, x, u_b, harmonic(T_TARGET), n_steps=n_steps, ema_decay=decay, **options)
    assert torch.allclose(flow.log_scale.detach(), expected, rtol=0, atol=1e-12)
    assert torch.equal(history.last_state["log_scale"], trajectory[-1])
    assert not torch.allclose(expected, trajectory[-1], atol=1e-3)  # the average differs from the last step
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay"):
            train_temperature_change(ScaleFlow(D), x, u_b, harmonic(T_TARGET), n_steps=1, ema_decay=bad, **options)


def test_parameter_average_swaps_in_and_restores():
    from boltzgen.train.averaging import ParameterAverage

    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    average = ParameterAverage([theta], decay=0.5)
    with torch.no_grad():
        theta.fill_(1.0)
    average.update()  # d_0 = min(0.5, 1 / 10) = 0.1: avg = 0.9
    with torch.no_grad():
        theta.fill_(2.0)
    average.update()  # d_1 = min(0.5, 2 / 11): avg = 0.9 + (9 / 11) * 1.1 = 1.8
    assert torch.allclose(average.averages[0], torch.full((3,), 1.8, dtype=torch.float64), atol=1e-12)
    with average.swapped_in():
        assert torch.allclose(theta.detach(), torch.full((3,), 1.8, dtype=torch.float64), atol=1e-12)
    assert torch.equal(theta.detach(), torch.full((3,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="decay"):
        ParameterAverage([theta], decay=1.0)


def test_validation_checks_the_averaged_parameters():
    x, x_val = samples(T_BASE, 2048, seed=10), samples(T_BASE, 1024, seed=11)
    validation = (x_val, harmonic(T_BASE)(x_val))
    options = dict(n_steps=60, batch_size=16, learning_rate=0.05, seed=0, quiet=True, ema_decay=0.9)
    averaged = ScaleFlow(D)  # no validation: left with the averaged parameters
    history = train_temperature_change(averaged, x, harmonic(T_BASE)(x), harmonic(T_TARGET), **options)
    last = ScaleFlow(D)
    last.load_state_dict(history.last_state)
    checked = train_temperature_change(ScaleFlow(D), x, harmonic(T_BASE)(x), harmonic(T_TARGET),
                                       validation=validation, validate_every=60, **options)
    assert [r["step"] for r in checked.validation_records] == [0, 60]
    ess_averaged = ess(-forward_works(averaged, x_val, validation[1], harmonic(T_TARGET)))
    ess_last = ess(-forward_works(last, x_val, validation[1], harmonic(T_TARGET)))
    assert checked.validation_records[1]["ess"] == pytest.approx(ess_averaged, rel=1e-12)
    assert abs(ess_last - ess_averaged) > 1e-6


def test_training_skips_non_finite_steps_and_stops_when_diverged():
    class NaNFlow(ScaleFlow):
        def _forward(self, x, context=None):
            y, logdet = super()._forward(x, context)
            return y, logdet * math.nan

    x = samples(T_BASE, 256, seed=9)
    flow = NaNFlow(D)
    with pytest.raises(BoltzgenError, match="diverged"):
        train_temperature_change(flow, x, harmonic(T_BASE)(x), harmonic(T_TARGET), n_steps=50, batch_size=32,
                                 learning_rate=0.01, seed=0, max_consecutive_skipped_steps=5, quiet=True)
    assert torch.equal(flow.log_scale.detach(), torch.zeros(D, dtype=torch.float64))  # never stepped


# ---------------------------------------------------------------------------------------------
# (3) MBAR over a temperature ladder
# ---------------------------------------------------------------------------------------------


def test_temperature_ladder_is_geometric_from_high_to_low():
    ladder = temperature_ladder(5, 250.0, 100.0)
    assert ladder[0] == pytest.approx(250.0) and ladder[-1] == pytest.approx(100.0)
    ratios = ladder[1:] / ladder[:-1]
    assert np.allclose(ratios, (100.0 / 250.0) ** 0.25)
    with pytest.raises(ValueError):
        temperature_ladder(1, 250.0, 100.0)
    u = reduced_potentials([kt_kj_per_mol(300.0)], [300.0, 150.0])
    assert u[:, 0] == pytest.approx([1.0, 2.0])


def test_mbar_ladder_on_exact_harmonic_samples():
    """1-D harmonic U = k x^2 / 2 (kJ/mol): Z_k ∝ sqrt(kT_k), so F_k - F_0 = -log(T_k / T_0) / 2."""
    rng = np.random.default_rng(11)
    k_spring = 100.0
    temps = temperature_ladder(4, 300.0, 100.0)
    counts = np.array([1500, 1000, 1000, 500])
    x = np.concatenate([rng.normal(0, math.sqrt(kt_kj_per_mol(t) / k_spring), n) for t, n in zip(temps, counts)])
    result = mbar_temperature_ladder(0.5 * k_spring * x**2, temps, counts)
    exact = -0.5 * np.log(temps / temps[0])
    assert result.free_energies[0] == 0.0 and result.errors[0] == 0.0
    assert (result.errors[1:] > 0).all() and (result.errors[1:] < 0.05).all()
    assert np.all(np.abs(result.free_energies - exact) <= 4 * result.errors + 1e-12)
    assert (result.neighbour_overlap > 0.1).all()
    value, error = result.difference(1, 3)
    assert abs(value - (exact[3] - exact[1])) < 4 * error
    with pytest.raises(ValueError, match="sum"):
        mbar_temperature_ladder(x, temps, counts + 1)


def test_md_ladder_reproduces_the_exact_tetrahedron_partition_functions():
    from boltzgen.systems.rigid import tetrahedron_in_field, tetrahedron_log_partition_function

    temps = temperature_ladder(3, 250.0, 100.0)
    run = run_temperature_ladder(
        tetrahedron_in_field(), temps, 800, stride_steps=500, equilibration_steps=2000, timestep_fs=2.0, seed=1,
        keep_positions=True, quiet=True,
    )
    assert run.potential_energies_kj.shape == (2400,) and run.positions_nm.shape == (2400, 5, 3)
    assert list(run.sample_counts) == [800, 800, 800]
    # rigid: the C-H distances stay at 0.109 nm
    bonds = np.linalg.norm(run.positions_nm[:, 1:] - run.positions_nm[:, :1], axis=-1)
    assert np.allclose(bonds, 0.109, atol=1e-4)
    result = mbar_temperature_ladder(run.potential_energies_kj, run.temperatures, run.sample_counts)
    log_z = np.array([tetrahedron_log_partition_function(t) for t in temps])
    exact = -(log_z - log_z[0])
    # the analytical MBAR error assumes independent samples: widen it by sqrt(g)
    error = result.errors * math.sqrt(run.statistical_inefficiency.max())
    assert (run.statistical_inefficiency < 5).all()
    assert np.all(np.abs(result.free_energies - exact) <= 4 * error + 1e-12)
    # seeded: the same seed reproduces the energies (Reference platform)
    again = run_temperature_ladder(tetrahedron_in_field(), temps[:1], 20, stride_steps=500, equilibration_steps=2000,
                                   timestep_fs=2.0, seed=1, quiet=True)
    assert np.array_equal(again.potential_energies_kj, run.potential_energies_kj[:20])


# ---------------------------------------------------------------------------------------------
# (4) sign conventions and bootstrap errors
# ---------------------------------------------------------------------------------------------


def test_sign_conventions_and_agreement_with_pymbar():
    c = -669.711
    w_f, w_r = np.full(50, c), np.full(70, -c)
    assert lfep(-w_f).value == pytest.approx(c, abs=1e-9)
    assert bar(w_f, w_r).value == pytest.approx(c, abs=1e-9)
    assert bar(w_r, w_f).value == pytest.approx(-c, abs=1e-9)
    # huge offsets: works of hundreds of kT around dF are solved in float64 without overflow
    w_f, w_r = works(ScaleFlow(D), 3000, 2000, seed=21)
    shift = -669.0
    df, _ = bar(w_f + shift, w_r - shift, n_bootstrap=0)
    df0, _ = bar(w_f, w_r, n_bootstrap=0)
    assert df == pytest.approx(df0 + shift, abs=1e-8)
    # antisymmetry under exchanging the roles of the ensembles
    assert bar(w_r, w_f, n_bootstrap=0).value == pytest.approx(-df0, abs=1e-9)
    # pymbar's BAR, same convention, unequal sample counts
    logging.getLogger("pymbar").setLevel(logging.ERROR)
    from pymbar.other_estimators import bar as pymbar_bar

    reference = pymbar_bar(w_f.numpy(), w_r.numpy(), compute_uncertainty=True)
    assert df0 == pytest.approx(reference["Delta_f"], abs=1e-7)
    _, err = bar(w_f, w_r, n_bootstrap=300, seed=2)
    assert 0.7 < err / reference["dDelta_f"] < 1.4
    # a zero-weight sample (+inf work / -inf log weight) counts in N
    log_w = -w_f.numpy()
    with_dropped = np.append(log_w, -np.inf)
    assert lfep(with_dropped, n_bootstrap=0).value == pytest.approx(
        lfep(log_w, n_bootstrap=0).value + math.log((log_w.size + 1) / log_w.size), abs=1e-12
    )
    assert math.isfinite(bar(np.append(w_f.numpy(), np.inf), w_r, n_bootstrap=0).value)
    with pytest.raises(ValueError):
        bar(np.array([np.nan, 1.0]), w_r)
    with pytest.raises(ValueError):
        lfep(np.array([np.inf, 1.0]))
    assert lfep(np.full(5, -np.inf)).value == math.inf


def test_bootstrap_errors_match_the_spread_of_repeated_estimates():
    lfep_values, lfep_errors, bar_values, bar_errors = [], [], [], []
    for repeat in range(50):
        w_f, w_r = works(ScaleFlow(D), 400, 400, seed=1000 + 2 * repeat)
        value, error = lfep(-w_f, n_bootstrap=100, seed=repeat)
        lfep_values.append(value), lfep_errors.append(error)
        value, error = bar(w_f, w_r, n_bootstrap=100, seed=repeat)
        bar_values.append(value), bar_errors.append(error)
    for values, errors in ((lfep_values, lfep_errors), (bar_values, bar_errors)):
        spread = np.std(values, ddof=1)
        assert 0.5 < np.mean(errors) / spread < 2.0
        # and the estimates scatter around the exact value (mean within 4 standard errors)
        assert abs(np.mean(values) - EXACT_DF) < 4 * spread / math.sqrt(len(values)) + 0.01


def test_ess_with_error_matches_kish_and_the_spread_over_sample_sets():
    # log-normal weights, log w ~ N(0, s^2): the Kish ESS tends to exp(-s^2)
    s, n = 0.6, 4000
    rng = np.random.default_rng(7)
    values, errors = [], []
    for repeat in range(40):
        log_w = rng.normal(0.0, s, size=n)
        value, error = ess_with_error(log_w, n_bootstrap=100, seed=repeat)
        assert value == pytest.approx(ess(torch.as_tensor(log_w)), rel=1e-12)
        values.append(value), errors.append(error)
    spread = np.std(values, ddof=1)
    assert 0.6 < np.mean(errors) / spread < 1.6
    assert abs(np.mean(values) - math.exp(-s * s)) < 4 * spread / math.sqrt(len(values)) + 2e-3
    # equal weights: ESS 1 with zero spread; all weights zero: 0 and no error
    assert ess_with_error(np.zeros(50), n_bootstrap=20) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    value, error = ess_with_error(np.full(5, -np.inf), n_bootstrap=20)
    assert value == 0.0 and math.isnan(error)
