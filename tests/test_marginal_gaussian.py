"""TruncatedNormalMarginals: invertibility, exact log-det, fitted marginals, tails."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from boltzgen.flows import TruncatedNormalMarginals
from flow_checks import assert_invertible, assert_logdet_matches_jacobian

CIRCULAR = torch.tensor([False, False, True, True, False])


def make_layer():
    """Interval dims (narrow, at an edge-ish mean, inactive), an active and an inactive torsion."""
    return TruncatedNormalMarginals(
        mean=[0.5, 0.2, 0.97, 0.3, 0.4],
        std=[0.02, 0.15, 0.03, 0.2, 0.1],
        active=[True, True, True, False, False],
        circular=CIRCULAR,
    )


def test_invertible_and_exact_logdet_float64():
    layer = make_layer()
    v = torch.rand(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v.clamp(1e-6, 1 - 1e-6)
    u, _ = assert_invertible(layer, v, atol=1e-9, circular_mask=[False] * 5)
    assert ((u >= 0) & (u < 1)).all()
    assert_logdet_matches_jacobian(layer, v, atol=1e-8)
    assert_logdet_matches_jacobian(layer, u, inverse=True, atol=1e-8)


def test_inactive_dims_pass_through():
    layer = make_layer()
    v = torch.rand(8, 5, generator=torch.Generator().manual_seed(1))
    u, _ = layer(v)
    assert torch.equal(u[:, 3:], v[:, 3:])


def test_forward_pushes_uniform_onto_the_truncated_normal():
    """The CDF of the pushed-forward uniform grid equals scipy's truncated normal (interval dim)."""
    layer = make_layer()
    grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    v = torch.rand(1001, 5, dtype=torch.float64)
    v[:, 1] = grid
    u, logdet = layer(v)
    mean, std = 0.2, 0.15
    expected = stats.truncnorm.ppf(grid.numpy(), (0 - mean) / std, (1 - mean) / std, loc=mean, scale=std)
    np.testing.assert_allclose(u[:, 1].numpy(), expected, atol=1e-10)
    density = stats.truncnorm.pdf(expected[1:-1], (0 - mean) / std, (1 - mean) / std, loc=mean, scale=std)
    # logdet of this single dim: the other active dims contribute the rest
    only_dim_1 = TruncatedNormalMarginals([0.5, 0.2, 0.5, 0.5, 0.5], [1, 0.15, 1, 1, 1],
                                          [False, True, False, False, False], CIRCULAR)
    _, logdet_1 = only_dim_1(v)
    np.testing.assert_allclose(logdet_1[1:-1].numpy(), -np.log(density), rtol=1e-9)


def test_circular_dim_wraps_across_the_seam():
    """A torsion centred at 0.97 (next to the seam) maps onto both sides of 0 / 1."""
    layer = make_layer()
    v = torch.full((3, 5), 0.5, dtype=torch.float64)
    v[:, 2] = torch.tensor([0.1, 0.5, 0.99])
    u, _ = layer(v)
    assert u[1, 2] == pytest.approx(0.97, abs=1e-12)
    assert u[0, 2] < 0.97 and u[2, 2] < 0.1  # the upper tail wrapped past 1
    back, _ = layer.inverse(u)
    np.testing.assert_allclose(back[:, 2].numpy(), v[:, 2].numpy(), atol=1e-12)


def test_extreme_tails_stay_finite_in_float32():
    layer = make_layer()
    v = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0],
                      [1e-30, 1e-30, 1e-30, 0.5, 0.5], [1 - 6e-8, 1 - 6e-8, 1 - 6e-8, 0.5, 0.5]])
    u, logdet = layer(v)
    assert torch.isfinite(u).all() and torch.isfinite(logdet).all()
    assert u.dtype == torch.float32
    assert ((u[:, :2] >= 0) & (u[:, :2] <= 1)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ends_of_the_box_stay_within_the_resolved_tail(dtype):
    """v exactly 0 or 1 (a float32 coupling output rounded to 1) must not land on the truncation bound.

    A stiff bond (std 1e-3 of its box) has its bounds 500 std out: there log f ~ -1.25e5, and one
    such sample would carry an importance weight e^(1e5) times the others. Clamped to the dtype's
    resolved ends, v = 1 goes no further than the largest v below 1 does (~5.3 std in float32).
    """
    stiff = TruncatedNormalMarginals([0.5], [1e-3], [True], [False])
    gap = torch.finfo(dtype).eps / 2
    v = torch.tensor([[0.0], [gap], [1.0 - gap], [1.0], [0.5]], dtype=dtype)
    u, logdet = stiff(v)
    assert u.dtype == dtype and torch.isfinite(logdet).all()
    xi = (u.double()[:, 0] - 0.5) / 1e-3
    expected_end = float(-stats.norm.ppf(gap))  # 5.3 std (float32), 8.2 std (float64)
    np.testing.assert_allclose(xi[:4].numpy(), [-expected_end, -expected_end, expected_end, expected_end], rtol=1e-4)
    # log-det at the ends is the density at the point returned: -log f = xi^2 / 2 + const
    np.testing.assert_allclose((logdet[:4] - logdet[4]).double().numpy(), 0.5 * xi[:4].numpy() ** 2, rtol=1e-4)


def test_values_outside_the_box_stay_outside():
    """An interval value outside [0, 1] (zero density) maps outside [0, 1]: the prior rejects it."""
    layer = make_layer()
    u = torch.tensor([[1.2, -0.1, 0.5, 0.5, 0.5]], dtype=torch.float64)
    v, logdet = layer.inverse(u)
    assert v[0, 0] > 1 and v[0, 1] < 0 and torch.isfinite(logdet).all()


def test_fit_recovers_means_and_chooses_unimodal_torsions():
    generator = torch.Generator().manual_seed(2)
    m = 20_000
    bond = 0.5 + 0.01 * torch.randn(m, generator=generator, dtype=torch.float64)
    narrow_torsion = torch.remainder(0.99 + 0.02 * torch.randn(m, generator=generator, dtype=torch.float64), 1)
    rotor = torch.remainder(torch.randint(0, 3, (m,), generator=generator) / 3.0
                            + 0.03 * torch.randn(m, generator=generator, dtype=torch.float64), 1)
    data = torch.stack([bond, narrow_torsion, rotor], -1)
    layer = TruncatedNormalMarginals.fit(data, [False, True, True])
    assert layer.active.tolist() == [True, True, False]
    assert layer.coupling_circular_mask.tolist() == [False, False, True]
    assert layer.mean[0].item() == pytest.approx(0.5, abs=1e-3)
    assert layer.std[0].item() == pytest.approx(0.01, rel=0.03)
    assert layer.mean[1].item() == pytest.approx(0.99, abs=1e-3)  # across the seam, not 0.5
    assert layer.std[1].item() == pytest.approx(0.02, rel=0.03)
    # the fitted layer maps the data to (nearly) uniform values in the active dims
    v, _ = layer.inverse(data)
    for k in (0, 1):
        assert stats.kstest(v[:, k].numpy(), "uniform").statistic < 0.02


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="one length D"):
        TruncatedNormalMarginals([0.5], [0.1, 0.1], [True], [False])
    with pytest.raises(ValueError, match="positive std"):
        TruncatedNormalMarginals([0.5], [0.0], [True], [False])
    with pytest.raises(ValueError, match="inside"):
        TruncatedNormalMarginals([1.5], [0.1], [True], [False])
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        make_layer()(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        TruncatedNormalMarginals.fit(torch.tensor([[math.nan], [0.1]]), [False])
