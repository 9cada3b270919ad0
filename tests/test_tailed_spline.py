"""The linear-tail RQ spline (flows on the real line): identity outside the bound, exact log-det."""

import pytest
import torch
from flow_checks import assert_invertible, assert_logdet_matches_jacobian, perturb_parameters

from boltzgen.flows import CouplingLayer, MLPConditioner
from boltzgen.flows.tailed_spline import LinearTailSpline


def _coupling(dim=2, bound=3.0, seed=0):
    torch.manual_seed(seed)
    transformer = LinearTailSpline(1, n_bins=6, tail_bound=bound)
    conditioner = MLPConditioner([False] * (dim - 1), transformer.n_params, hidden=(16,),
                                 output_bias=transformer.identity_parameters())
    layer = CouplingLayer(dim, [0], conditioner, transformer).double()
    return perturb_parameters(layer, scale=0.5, seed=seed)


def test_identity_parameters_give_the_identity():
    spline = LinearTailSpline(3, n_bins=5, tail_bound=2.0).double()
    x = torch.linspace(-4, 4, 30, dtype=torch.float64).reshape(10, 3)
    params = spline.identity_parameters().double().expand(10, -1)
    y, log_derivative = spline(x, params)
    assert torch.allclose(y, x, atol=1e-12)
    assert log_derivative.abs().max() < 1e-7  # the derivative constant is rounded to float32


def test_coupling_with_tailed_spline_is_invertible_with_exact_logdet():
    layer = _coupling()
    x = 2.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert ((x[:, 0].abs() > 3.0).any() and (x[:, 0].abs() < 3.0).any()), "need points on both sides of the bound"
    y, _ = assert_invertible(layer, x, atol=1e-10)
    assert_logdet_matches_jacobian(layer, x)
    outside = x[:, 0].abs() > 3.0
    assert torch.equal(y[outside, 0], x[outside, 0]), "the map must be the identity beyond the tail bound"


def test_map_and_derivative_are_continuous_at_the_bound():
    spline = LinearTailSpline(1, n_bins=6, tail_bound=3.0).double()
    params = torch.randn(1, spline.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1e-9
    x = torch.tensor([[3.0 - eps], [3.0 + eps], [-3.0 - eps], [-3.0 + eps]], dtype=torch.float64)
    y, log_derivative = spline(x, params.expand(4, -1))
    assert torch.allclose(y, x, atol=1e-7)
    assert log_derivative.abs().max() < 1e-6


def test_bad_shapes_are_rejected():
    spline = LinearTailSpline(2, n_bins=4)
    with pytest.raises(ValueError, match="parameters"):
        spline(torch.zeros(3, 2), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="n_bins"):
        LinearTailSpline(2, n_bins=1)
