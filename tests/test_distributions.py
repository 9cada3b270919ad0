"""Prior distributions: normalisation, moments, temperature scaling, bounds, devices and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from boltzgen.distributions import (
    Distribution,
    NormalDistribution,
    UniformInterval,
    UniformS3,
    UniformTorus,
    WatsonS3,
    WrappedNormalTorus,
)

N_SAMPLES = 40_000


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(4321)


def assert_moments(
    samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, n_sigma: float = 5.0
) -> None:
    """Sample mean and variance agree with the exact ones within ``n_sigma`` Monte Carlo errors."""
    n = samples.shape[0]
    mean_error = (var / n).sqrt()
    assert ((samples.mean(0) - mean).abs() < n_sigma * mean_error).all(), (samples.mean(0), mean)
    # Var of the sample variance is (mu_4 - var^2) / n; mu_4 <= 3 var^2 for the laws tested here.
    var_error = (2 * var.pow(2) / n).sqrt()
    assert ((samples.var(0) - var).abs() < n_sigma * var_error).all(), (samples.var(0), var)


# --- normal ------------------------------------------------------------------------------------


def test_normal_log_prob_matches_scipy_and_integrates_to_one():
    f64 = dict(dtype=torch.float64)
    mean, std = torch.tensor([0.3, -1.0], **f64), torch.tensor([0.7, 1.5], **f64)
    prior = NormalDistribution(2, mean=mean, std=std, temperature=2.0)
    assert prior.sample(3).dtype == torch.float64  # float64 parameters keep their precision
    x = torch.randn(10, 2, dtype=torch.float64)
    scale = math.sqrt(2.0) * torch.tensor([0.7, 1.5], dtype=torch.float64)
    expected = stats.norm.logpdf(x.numpy(), loc=[0.3, -1.0], scale=scale.numpy()).sum(-1)
    torch.testing.assert_close(prior.log_prob(x), torch.from_numpy(expected), atol=1e-12, rtol=0)
    torch.testing.assert_close(prior.energy(x), -prior.log_prob(x))
    # 2-D quadrature on a grid covering +-9 standard deviations.
    n = 601
    axes = [torch.linspace(m - 9 * s, m + 9 * s, n, **f64) for m, s in zip(mean, scale)]
    grid = torch.cartesian_prod(*axes)
    density = prior.log_prob(grid).exp().reshape(n, n)
    integral = torch.trapezoid(torch.trapezoid(density, axes[1], dim=1), axes[0])
    assert abs(integral.item() - 1.0) < 1e-8


def test_normal_moments_and_temperature_scaling():
    mean = torch.tensor([1.0, -2.0, 0.0])
    std = torch.tensor([0.5, 2.0, 1.0])
    for temperature in (1.0, 3.0):
        prior = NormalDistribution(3, mean=mean, std=std, temperature=temperature)
        samples = prior.sample(N_SAMPLES).double()
        assert samples.shape == (N_SAMPLES, 3)
        assert_moments(samples, mean.double(), temperature * std.double().pow(2))
    # The sample variances must resolve the temperature: at T = 3 they are 3x those at T = 1.
    hot = NormalDistribution(3, std=std, temperature=3.0).sample(N_SAMPLES)
    cold = NormalDistribution(3, std=std).sample(N_SAMPLES)
    ratio = hot.var(0) / cold.var(0)
    assert ((ratio - 3.0).abs() < 0.15).all(), ratio


def test_normal_temperature_scales_log_density_like_a_boltzmann_density():
    """log q^tau(x) - log q^1(x) / tau is the same for every x (METHODS.md §6)."""
    base = NormalDistribution(4, mean=0.5, std=[1.0, 2.0, 0.5, 1.5]).double()
    hot = base.at_temperature(2.5)
    assert hot.temperature.item() == 2.5 and hot.mean.dtype == torch.float64
    x = 3 * torch.randn(100, 4, dtype=torch.float64)
    difference = hot.log_prob(x) - base.log_prob(x) / 2.5
    assert difference.std() < 1e-12
    assert (hot.log_prob(x) - base.log_prob(x)).std() > 1.0  # the temperature does matter


def test_normal_argument_errors():
    with pytest.raises(ValueError, match="dim"):
        NormalDistribution(0)
    with pytest.raises(ValueError, match="std must be positive"):
        NormalDistribution(2, std=[1.0, 0.0])
    with pytest.raises(ValueError, match="mean must be a scalar or have shape \\[3\\]"):
        NormalDistribution(3, mean=[0.0, 1.0])
    with pytest.raises(ValueError, match="temperature"):
        NormalDistribution(2, temperature=-1.0)


# --- uniform box -------------------------------------------------------------------------------


def test_uniform_interval_normalisation_and_bounds():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.5])
    prior = UniformInterval(low, high).double()
    assert prior.dim == 2
    # Exact sum over a midpoint grid of the box: the density is constant inside.
    n = 200
    midpoints = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    axes = [lo + (hi - lo) * midpoints for lo, hi in zip(low, high)]
    grid = torch.cartesian_prod(*axes)
    cell = float((high - low).prod()) / n**2
    assert abs(prior.log_prob(grid).exp().sum().item() * cell - 1.0) < 1e-12
    torch.testing.assert_close(
        prior.log_prob(grid[:1]), torch.tensor([-math.log(1.0)], dtype=torch.float64)
    )
    # Outside (in any one dim) the density is zero; the bounds themselves are inside.
    outside = torch.tensor([[-1.01, 0.2], [0.0, 0.51], [2.0, -1.0]], dtype=torch.float64)
    assert (prior.log_prob(outside) == -math.inf).all()
    corners = torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=torch.float64)
    assert torch.isfinite(prior.log_prob(corners)).all()
    nan_input = torch.tensor([[float("nan"), 0.2]], dtype=torch.float64)
    assert torch.isnan(prior.log_prob(nan_input)).all()


def test_uniform_interval_samples():
    prior = UniformInterval([-1.0, 0.0, 2.0], [1.0, 0.5, 2.1])
    samples = prior.sample(N_SAMPLES)
    assert samples.shape == (N_SAMPLES, 3)
    assert ((samples >= prior.low) & (samples <= prior.high)).all()
    width = (prior.high - prior.low).double()
    assert_moments(samples.double(), (prior.low + prior.high).double() / 2, width.pow(2) / 12)
    assert torch.isfinite(prior.log_prob(samples)).all()


def test_uniform_interval_scalar_bounds_and_errors():
    prior = UniformInterval(0.0, 2.0, dim=3)
    expected = torch.full((2,), -3 * math.log(2.0))
    torch.testing.assert_close(prior.log_prob(torch.ones(2, 3)), expected)
    with pytest.raises(ValueError, match="needs dim|scalar bounds and dim"):
        UniformInterval(0.0, 1.0)
    with pytest.raises(ValueError, match="high > low"):
        UniformInterval([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        UniformInterval([0.0, 0.0], [1.0, 1.0, 1.0])


# --- torus -------------------------------------------------------------------------------------


def test_uniform_torus_normalisation_periodicity_and_samples():
    prior = UniformTorus(2, period=torch.tensor([1.0, 2 * math.pi], dtype=torch.float64))
    expected = -math.log(2 * math.pi)
    n = 100
    axes = [p * (torch.arange(n, dtype=torch.float64) + 0.5) / n for p in (1.0, 2 * math.pi)]
    grid = torch.cartesian_prod(*axes)
    assert abs(prior.log_prob(grid).exp().sum().item() * (2 * math.pi / n**2) - 1.0) < 1e-12
    x = torch.rand(20, 2, dtype=torch.float64)
    shifted = x + torch.tensor([3.0, -2 * 2 * math.pi], dtype=torch.float64)
    torch.testing.assert_close(
        prior.log_prob(shifted), torch.full((20,), expected, dtype=torch.float64)
    )
    torch.testing.assert_close(prior.wrap(shifted), x, atol=1e-12, rtol=0)
    inf_input = torch.tensor([[float("inf"), 0.0]], dtype=torch.float64)
    assert torch.isnan(prior.log_prob(inf_input)).all()

    samples = UniformTorus(3).sample(N_SAMPLES)
    assert ((samples >= 0) & (samples < 1)).all()
    assert_moments(samples.double(), torch.full((3,), 0.5, dtype=torch.float64),
                   torch.full((3,), 1 / 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="period"):
        UniformTorus(2, period=0.0)


# --- wrapped normal on the torus ---------------------------------------------------------------


@pytest.mark.parametrize("std", [0.05, 0.3, 1.0, 6.0])
def test_wrapped_normal_normalises_is_periodic_and_matches_its_circular_moment(std):
    period = 2.0
    prior = WrappedNormalTorus(torch.tensor([0.7], dtype=torch.float64), std, period=period)
    grid = torch.linspace(0.0, period, 20_001, dtype=torch.float64)[:-1].reshape(-1, 1)
    density = prior.log_prob(grid).exp()
    assert float(density.sum() * period / len(grid)) == pytest.approx(1.0, abs=1e-10)  # periodic: rectangle rule
    turns = torch.randint(-3, 4, grid.shape).to(torch.float64)
    torch.testing.assert_close(prior.log_prob(grid + turns * period), prior.log_prob(grid), rtol=0, atol=1e-9)
    samples = prior.sample(N_SAMPLES)
    assert bool(((samples >= 0) & (samples < period)).all())
    # E[cos(2 pi (x - m) / P)] = exp(-2 pi^2 std^2 / P^2) for the wrapped normal
    cosine = torch.cos(2 * math.pi * (samples - 0.7) / period)
    exact = math.exp(-2 * math.pi**2 * std**2 / period**2)
    assert abs(float(cosine.mean()) - exact) < 5 * float(cosine.std()) / math.sqrt(N_SAMPLES) + 1e-12
    if std == 0.05:  # no wrapping to speak of: the normal density at the nearest image
        x = torch.tensor([[0.65], [1.9], [0.1]], dtype=torch.float64)
        d = torch.remainder(x - 0.7 + 1.0, 2.0) - 1.0
        torch.testing.assert_close(prior.log_prob(x), torch.as_tensor(stats.norm.logpdf(d.numpy(), 0, std)).sum(-1))
    if std == 6.0:  # wrapped far beyond the period: uniform
        torch.testing.assert_close(density, torch.full_like(density, 1 / period), rtol=1e-12, atol=0)


def test_wrapped_normal_errors_and_nan():
    with pytest.raises(ValueError, match="std"):
        WrappedNormalTorus([0.0, 0.5], std=[0.1, 0.0])
    with pytest.raises(ValueError, match="period"):
        WrappedNormalTorus([0.0], std=0.1, period=-1.0)
    with pytest.raises(ValueError, match="shape"):
        WrappedNormalTorus(0.0, std=0.1)
    prior = WrappedNormalTorus(0.2, std=0.1, dim=2)
    assert prior.dim == 2
    log_p = prior.log_prob(torch.tensor([[float("nan"), 0.1], [0.2, 0.2]]))
    assert torch.isnan(log_p[0]) and torch.isfinite(log_p[1])


# --- Watson distribution on S^3 -----------------------------------------------------------------


def points_at_cosine(t: torch.Tensor, mean: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Unit quaternions ``[n, 4]`` with ``q . mean = t`` and a random direction orthogonal to ``mean``."""
    v = torch.randn(len(t), 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    v = v - (v @ mean)[:, None] * mean
    v = v / v.norm(dim=-1, keepdim=True)
    return t[:, None] * mean + torch.sqrt(1 - t[:, None] ** 2) * v


@pytest.mark.parametrize("rotation_std", [0.1, 0.8, 3.0, 1e3])
def test_watson_normalises_is_even_and_samples_its_density(rotation_std):
    mean = torch.tensor([0.5, -0.5, 0.5, 0.5], dtype=torch.float64)
    prior = WatsonS3(mean.reshape(1, 4), rotation_std)
    assert float(prior.kappa) == pytest.approx(2 / rotation_std**2)
    # the density depends on t = q . mean only; on S^3, d(area) = 4 pi sqrt(1 - t^2) dt:
    # Gauss-Chebyshev (second kind) quadrature of int 4 pi sqrt(1 - t^2) p(t) dt
    n = 4000
    k = torch.arange(1, n + 1, dtype=torch.float64)
    nodes = torch.cos(k * math.pi / (n + 1))
    weights = math.pi / (n + 1) * torch.sin(k * math.pi / (n + 1)) ** 2
    density = prior.log_prob(points_at_cosine(nodes, mean)).exp()
    assert float((4 * math.pi * weights * density).sum()) == pytest.approx(1.0, abs=1e-8)
    q = points_at_cosine(2 * torch.rand(50, dtype=torch.float64) - 1, mean, seed=1)
    torch.testing.assert_close(prior.log_prob(-q), prior.log_prob(q), rtol=0, atol=1e-12)
    samples = prior.sample(N_SAMPLES, generator=torch.Generator().manual_seed(3))
    assert samples.dtype == torch.float64 and samples.shape == (N_SAMPLES, 4)
    torch.testing.assert_close(samples.norm(dim=-1), torch.ones(N_SAMPLES, dtype=torch.float64))
    for power in (2, 4):  # E[t^2], E[t^4] of the samples against quadrature
        moment = (samples @ mean) ** power
        exact = float((4 * math.pi * weights * density * nodes**power).sum())
        assert abs(float(moment.mean()) - exact) < 5 * float(moment.std()) / math.sqrt(N_SAMPLES) + 1e-12
    if rotation_std == 0.1:  # concentrated: Gaussian rotation vectors of that standard deviation
        sign = torch.sign(samples @ mean)[:, None]
        tangent = samples * sign - (samples * sign @ mean)[:, None] * mean
        angle = 2 * torch.asin(tangent.norm(dim=-1).clamp(max=1.0))
        assert float(angle.square().mean() / 3) ** 0.5 == pytest.approx(rotation_std, rel=0.02)
    if rotation_std == 1e3:  # kappa = 2e-6: uniform
        torch.testing.assert_close(prior.log_prob(q), UniformS3(1).double().log_prob(q), rtol=0, atol=1e-5)


def test_watson_several_quaternions_off_sphere_and_errors():
    means = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]], dtype=torch.float64)  # normalised here
    prior = WatsonS3(means, torch.tensor([0.2, 0.6], dtype=torch.float64))
    x = prior.sample(8)
    assert x.shape == (8, 8)
    single = [WatsonS3(means[k : k + 1], s) for k, s in enumerate((0.2, 0.6))]
    torch.testing.assert_close(prior.log_prob(x), single[0].log_prob(x[:, :4]) + single[1].log_prob(x[:, 4:]))
    flipped = x.clone()
    flipped[:, 4:] *= -1
    torch.testing.assert_close(prior.log_prob(flipped), prior.log_prob(x), rtol=0, atol=1e-12)
    off = x.clone()
    off[:, :4] *= 1.1
    assert torch.isneginf(prior.log_prob(off)).all()
    x[0, 0] = float("nan")
    assert torch.isnan(prior.log_prob(x)[0])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="rotation_std"):
            WatsonS3(means, bad)
    with pytest.raises(ValueError, match="means"):
        WatsonS3(torch.zeros(1, 3), 0.5)
    with pytest.raises(ValueError, match="non-zero"):
        WatsonS3(torch.zeros(1, 4), 0.5)


# --- the common contract -----------------------------------------------------------------------


ALL_PRIORS = [
    lambda: NormalDistribution(3, mean=1.0, std=2.0, temperature=1.5),
    lambda: UniformInterval(0.0, 1.0, dim=3),
    lambda: UniformTorus(3),
    lambda: WrappedNormalTorus([0.1, 0.5, 0.9], std=[0.05, 0.2, 0.6]),
]


@pytest.mark.parametrize("make", ALL_PRIORS)
def test_double_moves_buffers_and_sampling_follows(make):
    prior = make()
    assert isinstance(prior, Distribution)
    assert prior.sample(4).dtype == torch.float32
    prior = prior.double()
    assert all(buffer.dtype == torch.float64 for buffer in prior.buffers())
    samples = prior.sample(5)
    assert samples.shape == (5, 3) and samples.dtype == torch.float64
    assert prior.log_prob(samples).shape == (5,) and prior.log_prob(samples).dtype == torch.float64
    assert prior.sample(0).shape == (0, 3)
    state = prior.state_dict()
    assert set(state) == {name for name, _ in prior.named_buffers() if not name.startswith("_")}


@pytest.mark.parametrize("make", ALL_PRIORS)
def test_sampling_is_reproducible_with_a_generator(make):
    prior = make()
    first = prior.sample(6, generator=torch.Generator().manual_seed(7))
    second = prior.sample(6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("make", ALL_PRIORS)
def test_wrong_shapes_give_clear_errors(make):
    prior = make()
    for bad in (torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 3, 1)):
        with pytest.raises(ValueError, match="\\[batch, 3\\]"):
            prior.log_prob(bad)
    with pytest.raises(ValueError, match="floating-point"):
        prior.log_prob(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative integer"):
        prior.sample(-1)
