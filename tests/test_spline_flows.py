"""Rational-quadratic spline transformers, coupling layers, circular shifts and the spline stack."""

from __future__ import annotations

import math

import pytest
import torch

from boltzgen.distributions import UniformInterval
from boltzgen.flows import (
    CircularShift,
    CouplingLayer,
    FixedPrecisionConditioner,
    InverseFlow,
    MLPConditioner,
    RationalQuadraticSpline,
    SequentialFlow,
    circular_spline,
    coupling_stack,
    interval_spline,
    spline_coupling_layer,
)
from boltzgen.flows.splines import identity_spline_parameters, n_spline_parameters
from flow_checks import FixedParameterFlow, assert_invertible, assert_logdet_matches_jacobian, perturb_parameters

N_BINS = 5
ALANINE_CIRCULAR = [False] * 41 + [True] * 19  # 21 bonds + 20 angles, then 19 torsions


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def random_spline_params(batch: int, dim: int, circular: bool, scale: float = 1.5) -> torch.Tensor:
    n = n_spline_parameters(N_BINS, circular)
    return scale * torch.randn(batch, dim, n, dtype=torch.float64)


def spline(circular: bool):
    return circular_spline if circular else interval_spline




# --- the spline functions ------------------------------------------------------------------------


@pytest.mark.parametrize("circular", [False, True])
def test_identity_parameters_give_the_identity(circular):
    x = torch.rand(64, 3, dtype=torch.float64)
    params = identity_spline_parameters(N_BINS, circular, dtype=torch.float64).expand(64, 3, -1)
    for inverse in (False, True):
        y, log_derivative = spline(circular)(x, params, inverse=inverse)
        torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
        torch.testing.assert_close(log_derivative, torch.zeros_like(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("circular", [False, True])
def test_splines_are_monotone_with_fixed_end_points(circular):
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)[:-1] if circular else torch.linspace(
        0, 1, 2001, dtype=torch.float64
    )
    params = random_spline_params(1, 4, circular).expand(grid.numel(), 4, -1)
    y, _ = spline(circular)(grid[:, None].expand(-1, 4), params)
    assert (y[1:] > y[:-1]).all()
    assert y[0].abs().max() < 1e-12  # f(0) = 0
    if circular:
        end = torch.full((1, 4), 1 - 1e-12, dtype=torch.float64)
        y_end, _ = circular_spline(end, params[:1])
        torch.testing.assert_close(y_end, torch.ones_like(y_end), atol=1e-9, rtol=0)
    else:
        torch.testing.assert_close(y[-1], torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_circular_derivative_matches_across_the_seam_and_interval_does_not():
    params = random_spline_params(1, 6, circular=False)
    ends = torch.tensor([[0.0], [1 - 1e-13]], dtype=torch.float64).expand(2, 6)
    _, interval_ld = interval_spline(ends, params.expand(2, -1, -1))
    assert (interval_ld[0] - interval_ld[1]).abs().min() > 1e-3  # free boundary derivatives
    circle_params = params[..., :-1]  # 3K: derivative at 1 tied to derivative at 0
    _, circle_ld = circular_spline(ends, circle_params.expand(2, -1, -1))
    torch.testing.assert_close(circle_ld[0], circle_ld[1], atol=1e-6, rtol=0)


def test_circular_spline_is_periodic():
    x = torch.rand(50, 3, dtype=torch.float64)
    params = random_spline_params(50, 3, circular=True)
    y, ld = circular_spline(x, params)
    assert ((y >= 0) & (y < 1)).all()
    for shift in (1.0, -1.0, 3.0):
        y_shifted, ld_shifted = circular_spline(x + shift, params)
        torch.testing.assert_close(y_shifted, y, atol=1e-12, rtol=0)
        torch.testing.assert_close(ld_shifted, ld, atol=1e-10, rtol=0)
    x_back, _ = circular_spline(y + 2.0, params, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("circular", [False, True])
def test_log_derivative_is_the_derivative_of_the_values(circular):
    """exp(log f') integrates to f: over [0, 1] to 1, and cumulatively to f(x)."""
    n = 100001
    grid = torch.linspace(0, 1 - 1e-12, n, dtype=torch.float64)
    params = random_spline_params(1, 3, circular).expand(n, 3, -1)
    y, ld = spline(circular)(grid[:, None].expand(-1, 3), params)
    density = ld.exp()
    cumulative = torch.cat(
        [torch.zeros(1, 3, dtype=torch.float64),
         torch.cumulative_trapezoid(density, grid, dim=0)]
    )
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(cumulative[-1], ones, atol=1e-5, rtol=0)
    torch.testing.assert_close(cumulative, y - y[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("circular", [False, True])
def test_spline_inverse_undoes_forward(circular):
    x = torch.rand(200, 4, dtype=torch.float64)
    params = random_spline_params(200, 4, circular, scale=3.0)
    y, ld = spline(circular)(x, params)
    x_back, ld_back = spline(circular)(y, params, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld + ld_back, torch.zeros_like(ld), atol=1e-9, rtol=0)


def test_interval_spline_boundaries():
    params = random_spline_params(6, 1, circular=False, scale=1.0).float()
    x = torch.tensor([[-1e-7], [0.0], [1e-30], [1 - 1e-7], [1.0], [1 + 1e-7]])
    for inverse in (False, True):
        y, ld = interval_spline(x, params, inverse=inverse)
        assert torch.isfinite(y).all() and torch.isfinite(ld).all()
        assert ((y >= 0) & (y <= 1)).all()
        ends = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
        torch.testing.assert_close(y[[0, 1, 4, 5]], ends, atol=1e-6, rtol=0)
    for bad in (1.5, -0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            interval_spline(torch.full((6, 1), bad), params)
    with pytest.raises(ValueError, match="not finite"):
        interval_spline(torch.full((6, 1), 0.5), torch.full_like(params, float("nan")))
    with pytest.raises(ValueError, match="not finite|finite"):
        circular_spline(torch.full((6, 1), float("nan")), params[..., :-1])


def test_spline_shape_errors():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match="3K \\+ 1"):
        interval_spline(x, torch.zeros(4, 3, 3 * N_BINS))
    with pytest.raises(ValueError, match="3K \\(circular\\)"):
        circular_spline(x, torch.zeros(4, 3, 3 * N_BINS + 1))
    with pytest.raises(ValueError, match="\\[B, D, n_params\\]"):
        interval_spline(x, torch.zeros(4, 2, 3 * N_BINS + 1))


def test_splines_support_double_backward():
    x = torch.rand(2, 1, dtype=torch.float64, requires_grad=True)
    for circular in (False, True):
        params = random_spline_params(2, 1, circular).requires_grad_(True)
        function = spline(circular)
        assert torch.autograd.gradcheck(lambda a, p: function(a, p), (x, params), fast_mode=True)
        assert torch.autograd.gradgradcheck(
            lambda a, p: function(a, p)[1], (x, params), fast_mode=True
        )


# --- the transformer module and generic flow checks ------------------------------------------


@pytest.mark.parametrize("circular", [[False] * 3, [True] * 3, [True, False, True, False]])
def test_rational_quadratic_spline_passes_flow_checks(circular):
    transformer = RationalQuadraticSpline(circular, n_bins=N_BINS).double()
    batch = 6
    identity = transformer.identity_parameters().double()
    assert identity.shape == (transformer.n_params,)
    x = torch.rand(batch, len(circular), dtype=torch.float64)
    y, ld = transformer(x, identity.expand(batch, -1))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)  # identity constant rounded in float32
    params = identity + 1.5 * torch.randn(batch, transformer.n_params, dtype=torch.float64)
    flow = FixedParameterFlow(transformer, params)
    assert_invertible(flow, x, atol=1e-9, circular_mask=circular)
    assert_logdet_matches_jacobian(flow, x)
    assert_logdet_matches_jacobian(flow, flow(x)[0], inverse=True)


def test_rational_quadratic_spline_parameter_layout():
    transformer = RationalQuadraticSpline([True, False, True], n_bins=N_BINS)
    assert transformer.n_params == (3 * N_BINS + 1) + 2 * 3 * N_BINS
    params = transformer.identity_parameters().expand(5, -1).clone()
    # Perturb only the interval variable's block: only dim 1 may change.
    params[:, : 3 * N_BINS + 1] += torch.randn(5, 3 * N_BINS + 1)
    x = torch.rand(5, 3)
    y, _ = transformer(x, params)
    torch.testing.assert_close(y[:, [0, 2]], x[:, [0, 2]], atol=1e-6, rtol=0)
    assert (y[:, 1] - x[:, 1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="parameters"):
        transformer(x, params[:, :-1])


# --- coupling layers ------------------------------------------------------------------------


MIXED_CIRCULAR = [True, False, True, False, False]


def make_layer(context_dim: int = 0, transformed=(0, 3, 4)) -> CouplingLayer:
    layer = spline_coupling_layer(
        5, list(transformed), MIXED_CIRCULAR, hidden=(16, 16), n_bins=N_BINS,
        context_dim=context_dim,
    ).double()
    return layer


def test_coupling_layer_is_identity_at_initialisation():
    layer = make_layer()
    x = torch.rand(8, 5, dtype=torch.float64)
    y, logdet = layer(x)
    # The identity bias is a float32 constant (the layer was built in float32, then cast).
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(8, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("context_dim", [0, 3])
def test_coupling_layer_passes_flow_checks(context_dim):
    layer = perturb_parameters(make_layer(context_dim), scale=0.5)
    x = torch.rand(6, 5, dtype=torch.float64)
    context = torch.randn(6, context_dim, dtype=torch.float64) if context_dim else None
    y, logdet = assert_invertible(
        layer, x, context=context, atol=1e-9, circular_mask=MIXED_CIRCULAR
    )
    assert logdet.abs().min() > 1e-3, "perturbation left the layer (near) identity"
    torch.testing.assert_close(y[:, [1, 2]], x[:, [1, 2]], atol=0, rtol=0)  # conditioning dims
    assert_logdet_matches_jacobian(layer, x, context=context)
    assert_logdet_matches_jacobian(layer, y, context=context, inverse=True)
    if context_dim:
        y_other, _ = layer(x, context=context + 1.0)
        assert (y_other - y).abs().max() > 1e-3, "the context is ignored"


def test_fixed_precision_conditioner_keeps_its_dtype_and_the_layer_stays_exact():
    layer = perturb_parameters(make_layer(context_dim=3), scale=0.5)
    network = layer.conditioner
    layer.conditioner = FixedPrecisionConditioner(network, torch.float32)
    layer.double()  # the enclosing flow's cast does not reach the wrapped network
    assert {p.dtype for p in layer.conditioner.parameters()} == {torch.float32}
    x = torch.rand(6, 5, dtype=torch.float64)
    context = torch.randn(6, 3, dtype=torch.float64)
    params = layer.conditioner(x[:, [1, 2]], context)
    assert params.dtype == torch.float64
    # the same float32 computation as the network on rounded inputs
    expected = network(x[:, [1, 2]].float(), context.float())
    torch.testing.assert_close(params, expected.double(), rtol=0, atol=0)
    y, logdet = assert_invertible(layer, x, context=context, atol=1e-10, circular_mask=MIXED_CIRCULAR)
    assert logdet.dtype == torch.float64 and logdet.abs().min() > 1e-3
    y, logdet = layer(x, context=context)
    (y.square().sum() + logdet.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.conditioner.parameters())
    with pytest.raises(ValueError, match="floating"):
        FixedPrecisionConditioner(network, torch.int32)


def test_coupling_layer_accepts_a_boolean_mask_and_a_partial_conditioning_set():
    mask = torch.tensor([True, False, False, True, False])
    layer = spline_coupling_layer(
        5, mask, MIXED_CIRCULAR, hidden=(8,), n_bins=N_BINS, conditioning=[2]
    ).double()
    perturb_parameters(layer)
    assert layer.transformed.tolist() == [0, 3] and layer.conditioning.tolist() == [2]
    x = torch.rand(5, 5, dtype=torch.float64)
    y, _ = assert_invertible(layer, x, atol=1e-9, circular_mask=MIXED_CIRCULAR)
    torch.testing.assert_close(y[:, [1, 2, 4]], x[:, [1, 2, 4]], atol=0, rtol=0)
    assert_logdet_matches_jacobian(layer, x)
    # Dims 1 and 4 are neither transformed nor seen by the conditioner.
    x_other = x.clone()
    x_other[:, [1, 4]] = torch.rand(5, 2, dtype=torch.float64)
    torch.testing.assert_close(layer(x_other)[0][:, [0, 3]], y[:, [0, 3]], atol=0, rtol=0)


def test_coupling_layer_without_conditioning_dims_is_a_learned_elementwise_flow():
    layer = spline_coupling_layer(3, [0, 1, 2], [True, False, False], hidden=(8,), n_bins=N_BINS)
    layer = perturb_parameters(layer.double())
    x = torch.rand(4, 3, dtype=torch.float64)
    _, logdet = assert_invertible(layer, x, atol=1e-9, circular_mask=[True, False, False])
    assert logdet.abs().min() > 1e-3
    assert_logdet_matches_jacobian(layer, x)
    y_empty, logdet_empty = layer(torch.rand(0, 3, dtype=torch.float64))
    assert y_empty.shape == (0, 3) and logdet_empty.shape == (0,)


def test_conditioner_sees_circle_dims_periodically():
    layer = perturb_parameters(make_layer(transformed=(1, 3, 4)))  # conditioning: circle dims 0, 2
    x = torch.rand(4, 5, dtype=torch.float64)
    shifted = x.clone()
    shifted[:, [0, 2]] += torch.tensor([1.0, -2.0], dtype=torch.float64)
    y, logdet = layer(x)
    y_shifted, logdet_shifted = layer(shifted)
    torch.testing.assert_close(y_shifted[:, [1, 3, 4]], y[:, [1, 3, 4]], atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet_shifted, logdet, atol=1e-12, rtol=0)


def test_coupling_layer_errors():
    transformer = RationalQuadraticSpline([False, False], n_bins=N_BINS)
    conditioner = MLPConditioner([False], transformer.n_params, hidden=(4,))
    with pytest.raises(ValueError, match="both transformed and conditioning"):
        CouplingLayer(3, [0, 1], conditioner, transformer, conditioning=[1])
    with pytest.raises(ValueError, match="acts on 2 dims"):
        CouplingLayer(3, [0], conditioner, transformer)
    with pytest.raises(ValueError, match="indices must lie in"):
        CouplingLayer(3, [0, 3], conditioner, transformer)
    with pytest.raises(ValueError, match="mask must have shape"):
        CouplingLayer(3, [True, False], conditioner, transformer)
    layer = CouplingLayer(3, [0, 1], conditioner, transformer)
    with pytest.raises(ValueError, match="\\[batch, 3\\]"):
        layer(torch.rand(4, 4))
    with_context = make_layer(context_dim=2)
    with pytest.raises(ValueError, match="needs a context"):
        with_context(torch.rand(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="context"):
        with_context(
            torch.rand(4, 5, dtype=torch.float64), context=torch.rand(4, 3, dtype=torch.float64)
        )


# --- circular shift -------------------------------------------------------------------------


@pytest.mark.parametrize("learnable", [False, True])
def test_circular_shift(learnable):
    shift = CircularShift(MIXED_CIRCULAR, offset=[0.3, 0.9], learnable=learnable).double()
    x = torch.rand(6, 5, dtype=torch.float64)
    y, logdet = assert_invertible(shift, x, atol=1e-12, circular_mask=MIXED_CIRCULAR)
    assert (logdet == 0).all()
    offset = shift.offset.detach()  # [0.3, 0.9] rounded to float32
    requested = torch.tensor([0.3, 0.9], dtype=torch.float64)
    torch.testing.assert_close(offset, requested, atol=1e-7, rtol=0)
    expected = x.clone()
    expected[:, 0] = (x[:, 0] + offset[0]) % 1.0
    expected[:, 2] = (x[:, 2] + offset[1]) % 1.0
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    assert ((y >= 0) & (y < 1)).all()
    assert_logdet_matches_jacobian(shift, x)
    assert_logdet_matches_jacobian(shift, y, inverse=True)
    assert (len(list(shift.parameters())) == 1) == learnable
    with pytest.raises(ValueError, match="one value per circle variable"):
        CircularShift(MIXED_CIRCULAR, offset=[0.1, 0.2, 0.3])


def test_learnable_shift_receives_gradients():
    shift = CircularShift([True, False], offset=0.25, learnable=True)
    y, _ = shift(torch.rand(4, 2))
    y[:, 0].sum().backward()
    torch.testing.assert_close(shift.offset.grad, torch.tensor([4.0]))


# --- the stack and compositions ---------------------------------------------------------------


def test_coupling_stack_masks_cover_every_dimension_in_each_pair():
    n_layers = 6
    stack = coupling_stack(60, ALANINE_CIRCULAR, n_layers, hidden=(8,), n_bins=N_BINS)
    couplings = [layer for layer in stack if isinstance(layer, CouplingLayer)]
    shifts = [layer for layer in stack if isinstance(layer, CircularShift)]
    assert len(couplings) == n_layers
    assert len(shifts) == n_layers  # between layers, plus the one undoing the accumulated offset
    circular = torch.tensor(ALANINE_CIRCULAR)
    for first, second in zip(couplings[::2], couplings[1::2]):
        both = torch.cat([first.transformed, second.transformed])
        assert sorted(both.tolist()) == list(range(60))  # complementary halves
        for layer in (first, second):
            n_circle = int(circular[layer.transformed].sum())
            assert n_circle in (9, 10)  # half the torsions in every layer ...
            assert layer.transformed.numel() - n_circle in (20, 21)  # ... and half the others
    splits = {tuple(layer.transformed.tolist()) for layer in couplings[::2]}
    assert len(splits) == n_layers // 2  # a fresh split per pair
    again = coupling_stack(60, ALANINE_CIRCULAR, n_layers, hidden=(8,), n_bins=N_BINS)
    assert [tuple(c.transformed.tolist()) for c in again if isinstance(c, CouplingLayer)] == [
        tuple(c.transformed.tolist()) for c in couplings
    ]


def test_coupling_stack_is_identity_at_initialisation():
    stack = coupling_stack(60, ALANINE_CIRCULAR, 4, hidden=(8,), n_bins=N_BINS).double()
    x = torch.rand(16, 60, dtype=torch.float64)
    y, logdet = stack(x)
    error = (torch.remainder(y - x + 0.5, 1.0) - 0.5).abs().max()
    assert error < 1e-6  # float32-rounded identity constants
    assert logdet.abs().max() < 1e-5


def test_alanine_sized_stack_passes_flow_checks():
    stack = coupling_stack(60, ALANINE_CIRCULAR, 4, hidden=(16,), n_bins=N_BINS).double()
    perturb_parameters(stack, scale=0.3)
    x = torch.rand(3, 60, dtype=torch.float64)
    _, logdet = assert_invertible(stack, x, atol=1e-8, circular_mask=ALANINE_CIRCULAR)
    assert logdet.abs().min() > 1e-2
    assert_logdet_matches_jacobian(stack, x, atol=1e-6)


def test_small_stack_with_context_compositions_and_inverse_pass_flow_checks():
    circular = [True, True, False, False, False]
    stack = coupling_stack(5, circular, 3, hidden=(16,), n_bins=N_BINS, context_dim=2).double()
    perturb_parameters(stack, scale=0.3)
    x = torch.rand(5, 5, dtype=torch.float64)
    context = torch.randn(5, 2, dtype=torch.float64)
    assert_invertible(stack, x, context=context, atol=1e-8, circular_mask=circular)
    assert_logdet_matches_jacobian(stack, x, context=context)

    layer = spline_coupling_layer(5, [1, 2], circular, hidden=(8,), n_bins=N_BINS)
    perturb_parameters(layer)
    composed = SequentialFlow(
        [CircularShift(circular, 0.4), InverseFlow(layer.double()), InverseFlow(stack)]
    )
    assert_invertible(composed, x, context=context, atol=1e-8, circular_mask=circular)
    assert_logdet_matches_jacobian(composed, x, context=context)
    assert_logdet_matches_jacobian(composed, x, context=context, inverse=True)
    # InverseFlow swaps directions exactly.
    y_inverse, ld_inverse = InverseFlow(stack)(x, context=context)
    y_direct, ld_direct = stack.inverse(x, context=context)
    torch.testing.assert_close(y_inverse, y_direct, atol=0, rtol=0)
    torch.testing.assert_close(ld_inverse, ld_direct, atol=0, rtol=0)


def test_float32_round_trip_of_the_alanine_stack():
    stack = perturb_parameters(coupling_stack(60, ALANINE_CIRCULAR, 4, hidden=(32,), n_bins=8), 0.1)
    x = torch.rand(256, 60)
    _, logdet = assert_invertible(stack, x, atol=1e-4, circular_mask=ALANINE_CIRCULAR)
    assert logdet.std() > 1.0  # a far-from-identity map (log-density spread of several kT)


def test_state_dict_round_trip():
    circular = [True] * 3 + [False] * 3
    stack = perturb_parameters(coupling_stack(6, circular, 2, hidden=(8,), n_bins=4))
    copy = coupling_stack(6, circular, 2, hidden=(8,), n_bins=4)
    copy.load_state_dict(stack.state_dict())
    x = torch.rand(10, 6)
    torch.testing.assert_close(copy(x), stack(x), atol=0, rtol=0)


def test_flow_density_on_a_uniform_prior_integrates_to_one():
    """q(x) = prior(F^-1(x)) |det dF^-1/dx| over [0, 1]^2 (a circle dim and an interval dim)."""
    circular = [True, False]
    flow = coupling_stack(2, circular, 4, hidden=(16,), n_bins=N_BINS).double()
    perturb_parameters(flow, scale=0.15)  # log q spans about [-2, 2]: midpoint rule accurate
    prior = UniformInterval(0.0, 1.0, dim=2).double()
    n = 300
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # midpoint rule
    grid = torch.cartesian_prod(centres, centres)
    with torch.no_grad():
        z, logdet_inverse = flow.inverse(grid)
        log_q = prior.log_prob(z) + logdet_inverse
    assert log_q.max() - log_q.min() > 1.0, "the flow is too close to the identity for this test"
    integral = log_q.exp().mean().item()
    assert abs(integral - 1.0) < 1e-4, integral
    # The same density from the forward direction: log q(F(z)) = log p(z) - logdet_forward(z).
    with torch.no_grad():
        x, logdet_forward = flow(z)
        torch.testing.assert_close(x, grid, atol=1e-9, rtol=0)
        torch.testing.assert_close(prior.log_prob(z) - logdet_forward, log_q, atol=1e-9, rtol=0)
    assert math.isfinite(integral)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("n_bins", [3, 8, 16])
def test_spline_matches_nflows_values_logdet_and_gradients(inverse, n_bins):
    """Our RQ spline kernel is nflows' parametrisation: same outputs, log-derivatives and gradients."""
    from nflows.transforms.splines.rational_quadratic import rational_quadratic_spline as nflows_spline

    from boltzgen.flows.splines import rational_quadratic_spline

    generator = torch.Generator().manual_seed(n_bins)
    x = torch.rand(64, 7, generator=generator, dtype=torch.float64)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # both ends of the interval
    params = torch.randn(64, 7, 3 * n_bins + 1, generator=generator, dtype=torch.float64)
    results = []
    for spline, kwargs in [
        (rational_quadratic_spline, {}),
        (nflows_spline, dict(left=0.0, right=1.0, bottom=0.0, top=1.0)),
    ]:
        p = params.clone().requires_grad_(True)
        y, log_derivative = spline(
            x, p[..., :n_bins], p[..., n_bins : 2 * n_bins], p[..., 2 * n_bins :], inverse=inverse, **kwargs
        )
        (y.sin().sum() + log_derivative.cos().sum()).backward()
        results.append((y.detach(), log_derivative.detach(), p.grad))
    (y, ld, grad), (y_ref, ld_ref, grad_ref) = results
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld, ld_ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(grad, grad_ref, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_outputs_stay_in_the_unit_interval_in_float32(inverse):
    """Extreme bins (a 1e-3-high bin over most of the width) must not push outputs out of [0, 1]."""
    from boltzgen.flows.splines import rational_quadratic_spline

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4096, 6, generator=generator)
    x[:, 0] = 1.0
    params = 6.0 * torch.randn(4096, 6, 25, generator=generator)
    y, _ = rational_quadratic_spline(x, params[..., :8], params[..., 8:16], params[..., 16:], inverse=inverse)
    assert ((y >= 0) & (y <= 1)).all()
