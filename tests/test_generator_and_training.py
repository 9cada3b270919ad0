"""BoltzmannGenerator weights on exact cases, losses, and the resumable trainer."""

import math

import pytest
import torch

from boltzgen import BoltzmannGenerator
from boltzgen.distributions import NormalDistribution
from boltzgen.energy import DoubleWellEnergy, Energy
from boltzgen.errors import BoltzgenError
from boltzgen.flows import Flow, SequentialFlow
from boltzgen.sampling import ess
from boltzgen.train import LinLogCut, Trainer, TrainerConfig, TrainingStage, load_checkpoint, nll_loss
from boltzgen.train.losses import force_matching_loss, reverse_kl_loss


class GaussianEnergy(Energy):
    """u(x) = |x - mean|^2 / (2 std^2)."""

    def __init__(self, dim, mean=0.0, std=1.0):
        super().__init__(dim)
        self.mean, self.std = mean, std

    def energy(self, x):
        return 0.5 * (((self.check_input(x) - self.mean) / self.std) ** 2).sum(1)


class ElementwiseAffine(Flow):
    """y = exp(log_scale) * x + shift: a minimal learnable flow for trainer tests."""

    def __init__(self, dim):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(dim))
        self.log_scale = torch.nn.Parameter(torch.zeros(dim))

    def _forward(self, x, context=None):
        return x * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(x.shape[0])

    def _inverse(self, y, context=None):
        return (y - self.shift) * (-self.log_scale).exp(), -self.log_scale.sum().expand(y.shape[0])


def test_prior_equal_to_target_gives_ess_one():
    torch.manual_seed(0)
    bg = BoltzmannGenerator(NormalDistribution(3), SequentialFlow([]), GaussianEnergy(3))
    x, log_w = bg.sample_with_log_weights(1000)
    assert x.shape == (1000, 3)
    assert ess(log_w) == pytest.approx(1.0, abs=1e-9)
    # log q is the normalised prior density: w = Z_target = (2 pi)^(3/2)
    assert torch.allclose(log_w, torch.full_like(log_w, 1.5 * math.log(2 * math.pi)), atol=1e-5)


def test_double_well_weights_estimate_the_exact_partition_function():
    torch.manual_seed(1)
    bg = BoltzmannGenerator(NormalDistribution(2).double(), SequentialFlow([]), DoubleWellEnergy())
    x, log_w, u = bg.sample_with_log_weights(400_000, return_energies=True)
    assert log_w.dtype == torch.float64 and u.shape == (400_000,)
    log_z = float(torch.logsumexp(log_w, 0) - math.log(len(log_w)))
    w = torch.softmax(log_w, 0)
    p_right = float(w[x[:, 0] > 0].sum())
    # METHODS.md: log Z_X = 10.2935, P(x1 > 0) = 0.8443 (MC error here ~0.01 and ~0.003)
    assert log_z == pytest.approx(10.2935, abs=0.04)
    assert p_right == pytest.approx(0.8443, abs=0.012)


def test_log_prob_inverts_sampling_density():
    torch.manual_seed(2)
    flow = ElementwiseAffine(2)
    with torch.no_grad():
        flow.shift.copy_(torch.tensor([1.0, -2.0]))
        flow.log_scale.copy_(torch.tensor([0.3, -0.5]))
    bg = BoltzmannGenerator(NormalDistribution(2), flow)
    x, log_q = bg.sample_with_log_prob(50)
    assert torch.allclose(bg.log_prob(x), log_q, atol=1e-5)
    with pytest.raises(ValueError, match="no target energy"):
        bg.sample_with_log_weights(4)


def test_lin_log_cut_is_continuous_and_never_nan():
    cut = LinLogCut(high=10.0, maximum=1e4)
    u = torch.tensor([5.0, 10.0, 20.0, 1e6, math.inf, math.nan], requires_grad=True)
    v = cut(u)
    values = v.tolist()
    assert values[0] == 5.0 and values[1] == 10.0
    assert values[2] == pytest.approx(10 + math.log(11))
    assert values[3:] == pytest.approx([10 + math.log1p(1e4 - 10)] * 3)
    v.sum().backward()
    assert torch.isfinite(u.grad).all()
    assert u.grad[0] == 1.0 and u.grad[2] == pytest.approx(1 / 11) and (u.grad[3:] == 0).all()


def _config(n_steps, checkpoint_every=5, kl_weight=0.0):
    return TrainerConfig(
        stages=[
            TrainingStage("nll", n_steps, learning_rate=0.05, batch_size=64),
            TrainingStage("nll+kl", n_steps, kl_weight=kl_weight if kl_weight else 0.5,
                          learning_rate=0.02, batch_size=64, kl_batch_size=64),
        ],
        checkpoint_every=checkpoint_every,
        validate_every=5,
        seed=3,
    )


def _gaussian_problem(seed=0):
    torch.manual_seed(seed)
    target = GaussianEnergy(2, mean=torch.tensor([1.5, -0.5]), std=torch.tensor([0.5, 2.0]))
    data = target.mean + target.std * torch.randn(4000, 2)
    bg = BoltzmannGenerator(NormalDistribution(2), ElementwiseAffine(2), target)
    return bg, data


def test_trainer_learns_a_gaussian_with_both_stages(tmp_path):
    bg, data = _gaussian_problem()
    trainer = Trainer(bg, data[:3000], _config(150), tmp_path / "ckpt.pt", validation_data=data[3000:], quiet=True)
    state = trainer.fit()
    assert state.global_step == 300 and state.n_energy_evaluations == 150 * 64
    assert torch.allclose(bg.flow.shift, torch.tensor([1.5, -0.5]), atol=0.1)
    assert torch.allclose(bg.flow.log_scale.exp(), torch.tensor([0.5, 2.0]), rtol=0.1)
    # validation NLL per dim approaches the entropy of the target per dim
    entropy = 0.5 * (2 * math.log(2 * math.pi * math.e) + 2 * math.log(0.5 * 2.0)) / 2
    assert state.history[-1]["val_nll_per_dim"] == pytest.approx(entropy, abs=0.05)
    checkpoint = load_checkpoint(tmp_path / "ckpt.pt")
    assert checkpoint["boltzgen_version"] and checkpoint["trainer_config"]["stages"][1]["kl_weight"] == 0.5


def test_interrupted_training_resumes_exactly(tmp_path):
    bg_ref, data = _gaussian_problem()
    Trainer(bg_ref, data, _config(20), None, quiet=True).fit()

    bg, data = _gaussian_problem()
    trainer = Trainer(bg, data, _config(20), tmp_path / "ckpt.pt", quiet=True)
    original_step = trainer._step
    calls = {"n": 0}

    def interrupted_step(stage):
        calls["n"] += 1
        if calls["n"] > 25:  # dies in the second stage, after the checkpoint at step 25
            raise KeyboardInterrupt
        return original_step(stage)

    trainer._step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    bg2, _ = _gaussian_problem(seed=99)  # a fresh process: other parameters and RNG state
    resumed = Trainer(bg2, data, _config(20), tmp_path / "ckpt.pt", quiet=True)
    state = resumed.fit()
    assert state.global_step == 40
    for p, q in zip(bg_ref.parameters(), bg2.parameters()):
        assert torch.equal(p, q)


def test_resume_with_other_settings_and_corrupt_checkpoint_are_clear_errors(tmp_path):
    bg, data = _gaussian_problem()
    Trainer(bg, data, _config(5), tmp_path / "ckpt.pt", quiet=True).fit()
    with pytest.raises(BoltzgenError, match="other training settings"):
        Trainer(bg, data, _config(6), tmp_path / "ckpt.pt", quiet=True).fit()
    (tmp_path / "bad.pt").write_bytes(b"this is not a model")
    with pytest.raises(BoltzgenError, match="not a readable boltzgen checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(BoltzgenError, match="not a boltzgen checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(BoltzgenError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_nonfinite_loss_skips_the_step_instead_of_corrupting_parameters():
    bg, data = _gaussian_problem()
    data[:] = math.nan
    before = [p.detach().clone() for p in bg.parameters()]
    state = Trainer(bg, data, TrainerConfig([TrainingStage("nll", 3)]), None, quiet=True).fit()
    assert state.n_skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, bg.parameters()))
    assert nll_loss(bg, data[:2]).isnan()


def test_many_consecutive_nonfinite_steps_stop_training_with_a_clear_error():
    bg, data = _gaussian_problem()
    config = TrainerConfig([TrainingStage("nll", 10)], max_consecutive_skipped_steps=4)
    good = Trainer(bg, data, config, None, quiet=True).fit()  # finite data: never stops
    assert good.global_step == 10 and good.n_consecutive_skipped_steps == 0
    data[:] = math.nan
    with pytest.raises(BoltzgenError, match="training diverged: 4 consecutive steps"):
        Trainer(bg, data, config, None, quiet=True).fit()


def _kl_gradients(generator, n, path_gradient, seed=0):
    torch.manual_seed(seed)
    generator.zero_grad()
    result = reverse_kl_loss(generator, n, path_gradient=path_gradient)
    result.loss.backward()
    flow = generator.flow
    return result.loss.item(), torch.cat([flow.shift.grad.clone(), flow.log_scale.grad.clone()])


def test_path_gradient_is_exactly_zero_when_the_generator_equals_the_target():
    """q = p: every batch's path gradient vanishes; the plain estimator is only zero on average."""
    generator = BoltzmannGenerator(NormalDistribution(3), ElementwiseAffine(3), GaussianEnergy(3)).double()
    loss_path, path = _kl_gradients(generator, 64, path_gradient=True)
    loss_plain, plain = _kl_gradients(generator, 64, path_gradient=False)
    assert loss_path == pytest.approx(loss_plain, abs=1e-12)  # same loss value
    assert path.abs().max() < 1e-12
    assert plain.abs().max() > 1e-2


def test_path_gradient_is_unbiased():
    """q = N(0, 1), p = N(1, 2^2) per dim: E[grad] is d KL / d shift = -1/4, d / d log_scale = -3/4."""
    generator = BoltzmannGenerator(
        NormalDistribution(2), ElementwiseAffine(2), GaussianEnergy(2, mean=1.0, std=2.0)
    ).double()
    expected = torch.tensor([-0.25, -0.25, -0.75, -0.75], dtype=torch.float64)
    for path_gradient in (True, False):
        _, gradient = _kl_gradients(generator, 200_000, path_gradient=path_gradient, seed=3)
        torch.testing.assert_close(gradient, expected, atol=0.01, rtol=0)


def test_force_matching_loss_is_zero_for_the_exact_score_and_the_mean_square_otherwise():
    target = GaussianEnergy(3)
    generator = BoltzmannGenerator(NormalDistribution(3), ElementwiseAffine(3), target).double()
    x = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = target.force(x)  # -grad u = -x = grad log q
    assert force_matching_loss(generator, x, exact).item() < 1e-24
    zero = torch.zeros_like(x)
    loss = force_matching_loss(generator, x, zero, scale=2.0)
    assert loss.item() == pytest.approx((x**2).sum(1).mean().item() / 2.0, rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        force_matching_loss(generator, x, zero[:, :2])


def test_trainer_learns_a_gaussian_from_forces_alone():
    """Force matching fixes the score -(x - mean) / std^2, hence mean and std, without any NLL."""
    bg, data = _gaussian_problem()
    forces = bg.target.force(data)
    config = TrainerConfig(stages=[TrainingStage("fm", 400, nll_weight=0.0, force_weight=1.0, learning_rate=0.05,
                                                 batch_size=256)], seed=0)
    state = Trainer(bg, data, config, None, quiet=True, train_forces=forces).fit()
    assert state.history[-1]["force_error"] < 1e-3
    assert torch.allclose(bg.flow.shift, torch.tensor([1.5, -0.5]), atol=0.02)
    assert torch.allclose(bg.flow.log_scale.exp(), torch.tensor([0.5, 2.0]), rtol=0.02)
    with pytest.raises(ValueError, match="no train_forces"):
        Trainer(bg, data, config, None, quiet=True)
    with pytest.raises(ValueError, match="shape of train_data"):
        Trainer(bg, data, config, None, quiet=True, train_forces=forces[:10])


class _DivergingTrainer(Trainer):
    """Blows the flow's parameters up once, at step ``explode_at`` (a stand-in for a diverged step)."""

    explode_at = 12

    def _step(self, stage):
        record = super()._step(stage)
        if self.state.global_step + 1 == self.explode_at:
            with torch.no_grad():
                self.generator.flow.log_scale.add_(6.0)
        return record


def test_a_diverged_fit_is_rolled_back_to_the_last_good_validation_with_half_the_learning_rate():
    bg, data = _gaussian_problem()
    config = TrainerConfig([TrainingStage("nll", 150, learning_rate=0.05, batch_size=64)], validate_every=5, seed=3)
    trainer = _DivergingTrainer(bg, data[:3000], config, None, validation_data=data[3000:], quiet=True)
    state = trainer.fit()
    assert state.n_rollbacks == 1 and state.lr_scale == 0.5
    rolled = [record for record in state.history if record.get("rolled_back")]
    assert len(rolled) == 1 and rolled[0]["step"] == 15
    assert rolled[0]["val_nll_per_dim"] > state.best_val_nll_per_dim + 0.5
    assert rolled[0]["val_nll_per_dim_after_rollback"] <= state.history[1]["val_nll_per_dim"] + 1e-9
    # and training went on to fit the target
    assert torch.allclose(bg.flow.shift, torch.tensor([1.5, -0.5]), atol=0.15)
    # without the safeguard the explosion stays
    bg2, _ = _gaussian_problem()
    off = TrainerConfig(config.stages, validate_every=5, seed=3, rollback_tolerance=0.0)
    state2 = _DivergingTrainer(bg2, data[:3000], off, None, validation_data=data[3000:], quiet=True).fit()
    assert state2.n_rollbacks == 0 and state2.history[-1]["val_nll_per_dim"] > state.history[-1]["val_nll_per_dim"] + 0.5


def test_repeated_divergence_stops_with_a_clear_error():
    class AlwaysDiverging(_DivergingTrainer):
        def _step(self, stage):
            record = Trainer._step(self, stage)
            if (self.state.global_step + 1) % 5 == 0 and self.state.global_step > 5:
                with torch.no_grad():
                    self.generator.flow.log_scale.add_(6.0)
            return record

    bg, data = _gaussian_problem()
    config = TrainerConfig([TrainingStage("nll", 100, learning_rate=0.05, batch_size=64)], validate_every=5,
                           seed=3, max_rollbacks=2)
    with pytest.raises(BoltzgenError, match="diverged 3 times"):
        AlwaysDiverging(bg, data[:3000], config, None, validation_data=data[3000:], quiet=True).fit()
