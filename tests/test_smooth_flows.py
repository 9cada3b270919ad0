"""Smooth mixture transformers (Köhler, Krämer, Noé 2021), root finding, implicit gradients."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from boltzgen.flows import Flow
from boltzgen.flows.root_finding import (
    ImplicitInverse,
    invert_monotone,
    multi_bin_bisection,
    safeguarded_newton,
    solve_monotone,
)
from boltzgen.flows.smooth import (
    MIN_ALPHA,
    SmoothMixtureTransformer,
    identity_smooth_parameters,
    mixture_map,
    n_smooth_parameters,
    pack_parameters,
    smooth_component,
    smooth_coupling_layer,
    smooth_coupling_stack,
    smooth_mixture,
    smooth_ramp,
    smooth_sigmoid,
    smooth_sigmoid_derivatives,
)
from boltzgen.flows.spline_stack import coupling_stack
from flow_checks import FixedParameterFlow, assert_invertible, assert_logdet_matches_jacobian, perturb_parameters

K = 4
F64 = torch.float64
MIXED_6D = [True, False, True, False, False, True]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(2021)


def random_params(batch: int, dim: int, scale: float = 1.0, k: int = K, dtype=F64) -> torch.Tensor:
    """Unnormalised parameters ``[batch, dim, 4k + 2]`` around the identity parameters with a
    far-from-identity minimum density (``1 - c`` around 1/2)."""
    params = identity_smooth_parameters(k, dtype=dtype) + scale * torch.randn(
        batch, dim, n_smooth_parameters(k), dtype=dtype
    )
    params[..., -1] = scale * torch.randn(batch, dim, dtype=dtype)
    return params


def autograd_derivative(function, x: torch.Tensor) -> torch.Tensor:
    """Element-wise ``d function(x) / dx`` (``function`` element-wise)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(x).sum(), x)
    return grad


def local_maxima(values: torch.Tensor) -> int:
    inner = values[1:-1]
    return int(((inner > values[:-2]) & (inner >= values[2:])).sum())


# --- ramp and smooth sigmoid --------------------------------------------------------------------


def test_smooth_sigmoid_is_the_ramp_ratio_and_flat_outside_the_ramp():
    alpha = torch.tensor([MIN_ALPHA, 2.0, 10.9], dtype=F64)[:, None]
    z = torch.linspace(-0.5, 1.5, 4001, dtype=F64)
    sigma, first, second = smooth_sigmoid_derivatives(z, alpha)
    outside_low, outside_high, inside = z <= 0, z >= 1, (z > 0) & (z < 1)
    assert (sigma[:, outside_low] == 0).all() and (sigma[:, outside_high] == 1).all()
    assert (first[:, ~inside] == 0).all() and (second[:, ~inside] == 0).all()
    middle = (z > 0.05) & (z < 0.95)  # the ramps do not underflow here
    rho, rho_mirror = smooth_ramp(z[middle], alpha), smooth_ramp(1 - z[middle], alpha)
    torch.testing.assert_close(sigma[:, middle], rho / (rho + rho_mirror), atol=1e-14, rtol=0)
    torch.testing.assert_close(sigma + sigma.flip(-1), torch.ones_like(sigma), atol=1e-14, rtol=0)
    assert (sigma[:, 1:] >= sigma[:, :-1]).all() and (first[:, middle] > 0).all()
    assert (smooth_ramp(torch.tensor([-1.0, 0.0, 1e-9]), 1.0) == 0).all()
    half = smooth_sigmoid(torch.tensor(0.5, dtype=F64), 3.0)
    assert half.item() == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("alpha", [MIN_ALPHA, 3.0, 10.9])
def test_smooth_sigmoid_derivatives_match_autograd(alpha):
    z = torch.cat([torch.rand(200, dtype=F64), torch.tensor([1e-3, 0.002, 0.997], dtype=F64)])
    _, first, second = smooth_sigmoid_derivatives(z, alpha)
    torch.testing.assert_close(
        first, autograd_derivative(lambda v: smooth_sigmoid(v, alpha), z), atol=1e-10, rtol=1e-10
    )
    second_autograd = autograd_derivative(lambda v: smooth_sigmoid_derivatives(v, alpha)[1], z)
    torch.testing.assert_close(second, second_autograd, atol=1e-9, rtol=1e-10)


def test_component_density_is_unimodal_exactly_from_alpha_sqrt3_over_2():
    z = torch.linspace(0, 1, 20001, dtype=F64)
    assert local_maxima(smooth_sigmoid_derivatives(z, MIN_ALPHA)[1]) == 1
    assert local_maxima(smooth_sigmoid_derivatives(z, MIN_ALPHA * 1.2)[1]) == 1
    assert local_maxima(smooth_sigmoid_derivatives(z, MIN_ALPHA * 0.95)[1]) == 2
    # the learned alpha never goes below the bound
    raw = identity_smooth_parameters(K, dtype=F64)
    raw[3 * K + 1 : 4 * K + 1] = torch.tensor([-60.0, -5.0, 0.0, 60.0])
    alpha = pack_parameters(raw, circular=False)[3 * K : 4 * K]
    assert (alpha >= MIN_ALPHA).all() and alpha[0] == pytest.approx(MIN_ALPHA)


# --- components ----------------------------------------------------------------------------------


@pytest.mark.parametrize("circular", [False, True])
def test_components_fix_the_ends_and_are_monotone(circular):
    # centres near 0 give a negative shifted centre m = mu - 1/(2s), near 1 one close to 1
    mu = torch.tensor([0.02, 0.3, 0.5, 0.97, 0.999], dtype=F64)[:, None]
    slope = torch.tensor([1.0, 1.7, 4.0, 12.0, 2.5], dtype=F64)[:, None]
    alpha = torch.tensor([MIN_ALPHA, 1.0, 3.0, 10.0, 6.0], dtype=F64)[:, None]
    lower, upper, n = (-1, 2, 3001) if circular else (0, 1, 1001)
    x = torch.linspace(lower, upper, n, dtype=F64)
    f, first, _ = smooth_component(x, mu, slope, alpha, circular)
    ends, _, _ = smooth_component(torch.tensor([0.0, 1.0], dtype=F64), mu, slope, alpha, circular)
    torch.testing.assert_close(ends, torch.tensor([[0.0, 1.0]], dtype=F64).expand(5, 2),
                               atol=1e-14, rtol=0)
    assert (f[:, 1:] >= f[:, :-1]).all() and (first >= 0).all()
    if circular:  # f(x + 1) = f(x) + 1 on the lift
        shifted, first_shifted, _ = smooth_component(x + 1.0, mu, slope, alpha, circular)
        torch.testing.assert_close(shifted, f + 1.0, atol=1e-12, rtol=0)
        torch.testing.assert_close(first_shifted, first, atol=1e-9, rtol=1e-9)


def test_circle_formula_correction_for_negative_shifted_centres():
    """The circle component as first specified, ``... + floor(x - m) + [m != 0]``, gives
    f(0) = 1 when the shifted centre m = mu - 1/(2s) is negative; ``- floor(-m)`` is right."""
    x = torch.tensor([0.0, 0.25, 1.0], dtype=F64)

    def as_specified(mu, slope, alpha):
        shifted = mu - 0.5 / slope
        sigma = partial(smooth_sigmoid, alpha=alpha)
        z = torch.remainder(x - shifted, 1.0) * slope
        at_zero = sigma(torch.remainder(torch.tensor(-shifted, dtype=F64), 1.0) * slope)
        return sigma(z) - at_zero + torch.floor(x - shifted) + float(shifted != 0)

    for mu, slope in [(0.6, 2.0), (0.1, 2.0), (0.3, 1.0)]:
        ours, _, _ = smooth_component(x, mu, slope, 2.0, circular=True)
        torch.testing.assert_close(ours[[0, 2]], torch.tensor([0.0, 1.0], dtype=F64))
        if mu - 0.5 / slope > 0:
            torch.testing.assert_close(as_specified(mu, slope, 2.0), ours)
        else:
            assert as_specified(mu, slope, 2.0)[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("circular", [False, True])
def test_component_derivatives_match_autograd(circular):
    mu, slope, alpha = torch.tensor([0.05, 0.5, 0.9], dtype=F64)[:, None], 2.5, 1.7
    x = torch.rand(3, 300, dtype=F64) * (3 if circular else 1) - (1 if circular else 0)
    _, first, second = smooth_component(x, mu, slope, alpha, circular)
    value = lambda v: smooth_component(v, mu, slope, alpha, circular)[0]  # noqa: E731
    derivative = lambda v: smooth_component(v, mu, slope, alpha, circular)[1]  # noqa: E731
    torch.testing.assert_close(first, autograd_derivative(value, x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(second, autograd_derivative(derivative, x), atol=1e-9, rtol=1e-9)


# --- the mixture --------------------------------------------------------------------------------


@pytest.mark.parametrize("circular", [False, True])
def test_mixture_derivatives_and_minimum_density(circular):
    params = random_params(1, 5, scale=1.5)[0]
    theta = pack_parameters(params, circular)
    x = torch.rand(400, 5, dtype=F64)
    f, first, second = mixture_map(x, theta, circular)
    value = lambda v: mixture_map(v, theta, circular)[0]  # noqa: E731
    derivative = lambda v: mixture_map(v, theta, circular)[1]  # noqa: E731
    torch.testing.assert_close(first, autograd_derivative(value, x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(second, autograd_derivative(derivative, x), atol=1e-8, rtol=1e-9)
    minimum_density = 1.0 - theta[:, -1]
    assert (first >= minimum_density * (1 - 1e-12)).all()
    assert ((f >= 0) & (f <= 1)).all()


@pytest.mark.parametrize("circular", [False, True])
def test_derivative_integrates_to_the_map(circular):
    """Quadrature: the integral of f' over [0, 1] is 1, and its running integral is f."""
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    params = random_params(1, 4, scale=1.5)[0]
    y, log_derivative = smooth_mixture(
        grid[:, None].expand(-1, 4), params.expand(grid.numel(), -1, -1), circular
    )
    if circular:
        y[-1] += 1.0  # f(1) = 1 is the point 0 of the circle
    running = torch.cumulative_trapezoid(log_derivative.exp(), grid, dim=0)
    # trapezoid error ~ h^2 |f'''| / 12 with h = 5e-5 and sharp components
    torch.testing.assert_close(running[-1], torch.ones(4, dtype=F64), atol=2e-6, rtol=0)
    torch.testing.assert_close(running, y[1:] - y[0], atol=2e-6, rtol=0)


def test_second_derivative_is_continuous_across_the_periodic_seam():
    """Closed-form f', f'' agree at 0 and 1, one-sided finite differences of f' agree with them."""
    params = random_params(1, 6, scale=0.5)[0]
    params[:, K : 2 * K + 1] = torch.tensor([-3.0, 0.0, 0.0, 0.0, 0.0])  # first centre near 0
    params[:, 2 * K + 1] = 0.7  # its ramp (1/s < 1/2 wide) straddles the seam
    theta = pack_parameters(params, circular=True)
    shifted = theta[:, K]
    assert (shifted < 0).all(), "the test needs a component across the seam"
    h = 1e-5
    points = torch.tensor([0.0, h, 1.0 - h, 1.0], dtype=F64)[:, None].expand(-1, 6)
    _, first, second = mixture_map(points, theta, circular=True)
    torch.testing.assert_close(first[0], first[3], atol=1e-12, rtol=0)
    torch.testing.assert_close(second[0], second[3], atol=1e-9, rtol=0)
    assert second[0].abs().min() > 1e-2, "f'' vanishes at the seam: the test would be trivial"
    right, left = (first[1] - first[0]) / h, (first[3] - first[2]) / h
    torch.testing.assert_close(right, second[0], atol=1e-3 * second[0].abs().max(), rtol=1e-3)
    torch.testing.assert_close(left, second[3], atol=1e-3 * second[3].abs().max(), rtol=1e-3)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_identity_parameters_are_within_1e_6_of_the_identity(circular, dtype):
    params = identity_smooth_parameters(8, dtype=dtype).expand(200, 3, -1)
    x = torch.rand(200, 3, dtype=dtype)
    for inverse in (False, True):
        y, log_derivative = smooth_mixture(x, params, circular, inverse=inverse)
        assert (y - x).abs().max() <= 1e-6 and log_derivative.abs().max() <= 1e-6
    gap = pack_parameters(params[0, 0].double(), circular)[-1]
    assert gap.item() == pytest.approx(1e-6, rel=1e-6)


def test_periodic_slopes_are_learned_and_at_least_one():
    params = random_params(1, 3)[0]
    params[:, 2 * K + 1 : 3 * K + 1] = torch.tensor([-40.0, -1.0, 0.0, 3.0])
    slope = pack_parameters(params, circular=True)[:, 2 * K : 3 * K]
    assert (slope >= 1).all() and slope[:, 0].sub(1).abs().max() < 1e-12
    expected = math.exp(math.log1p(math.exp(3.0)))
    torch.testing.assert_close(slope[:, 3], torch.full((3,), expected, dtype=F64))
    params.requires_grad_(True)
    x = torch.rand(3, dtype=F64)[None]
    y, _ = smooth_mixture(x, params[None], circular=True)
    (grad,) = torch.autograd.grad(y.sum(), params)
    assert (grad[:, 2 * K + 1 : 3 * K + 1].abs().sum(-1) > 1e-8).all()


# --- root finding --------------------------------------------------------------------------------


def cubic(x: torch.Tensor, theta: torch.Tensor):
    """A generic monotone map of [0, 1] onto itself with f'(0) = 0: f = a x^3 + (1 - a) x^5."""
    a, b = theta[..., 0], 1 - theta[..., 0]
    return a * x**3 + b * x**5, 3 * a * x**2 + 5 * b * x**4, 6 * a * x + 20 * b * x**3


@pytest.mark.parametrize("method", ["newton", "bisection"])
def test_solvers_invert_generic_and_nearly_flat_maps(method):
    x_true = torch.cat([torch.rand(300, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)])
    theta = torch.rand(302, 1, dtype=F64)
    y = cubic(x_true, theta)[0]
    x = solve_monotone(cubic, y, theta, method=method)
    assert (cubic(x, theta)[0] - y).abs().max() < 1e-13
    torch.testing.assert_close(x[x_true > 0.05], x_true[x_true > 0.05], atol=1e-10, rtol=0)
    # a mixture with sharp components and minimum density 1e-6 (plateaus with f' ~ 1e-6)
    params = random_params(200, 1, scale=1.0)[:, 0]
    params[:, 2 * K + 1 : 4 * K + 1] = 3.0
    params[:, -1] = -40.0
    packed = pack_parameters(params, circular=False)
    map_fn = partial(mixture_map, circular=False)
    y = torch.rand(200, dtype=F64)
    x = solve_monotone(map_fn, y, packed, method=method)
    assert (map_fn(x, packed)[0] - y).abs().max() < 1e-12


def test_multi_bin_bisection_brackets_the_root_and_newton_stays_inside():
    theta = torch.rand(50, 1, dtype=F64)
    y = torch.rand(50, dtype=F64)
    lo, hi, r_lo, r_hi = multi_bin_bisection(cubic, y, theta, n_grid=10, tol=1e-4)
    assert (hi - lo).max() <= 1e-4 * (1 + 1e-9) and (r_lo <= 0).all() and (r_hi >= 0).all()
    x = safeguarded_newton(cubic, y, theta, lo, hi, tol=1e-14)
    assert ((x >= lo) & (x <= hi)).all()
    assert (cubic(x, theta)[0] - y).abs().max() < 1e-14


def test_periodic_inverse_uses_the_lift():
    params = random_params(40, 1, scale=1.5)[:, 0]
    theta = pack_parameters(params, circular=True)
    map_fn = partial(mixture_map, circular=True)
    x_true = torch.rand(40, dtype=F64) * 6 - 3
    y = map_fn(x_true, theta)[0]
    x, log_derivative = invert_monotone(map_fn, y, theta, periodic=True)
    torch.testing.assert_close(x, x_true, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_derivative, -map_fn(x_true, theta)[1].log(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("method", ["newton", "bisection"])
def test_round_trip(circular, method):
    for dtype, atol, logdet_atol in [(torch.float32, 1e-5, 1e-4), (F64, 1e-11, 1e-9)]:
        params = random_params(200, 3, dtype=dtype)
        x = torch.rand(200, 3, dtype=dtype)
        y, log_derivative = smooth_mixture(x, params, circular)
        x_back, log_derivative_back = smooth_mixture(
            y, params, circular, inverse=True, method=method
        )
        error = x_back - x
        if circular:
            error = torch.remainder(error + 0.5, 1.0) - 0.5
        assert error.abs().max() < atol, (dtype, error.abs().max())
        assert (log_derivative + log_derivative_back).abs().max() < logdet_atol


# --- implicit gradients -------------------------------------------------------------------------


def test_inverse_of_the_identity_mixture():
    """c = 1 (``1 - c = 0``): f is the identity; dx/d(1 - c) = -(m(x) - x), the rest is 0."""
    theta = pack_parameters(random_params(1, 6, scale=1.5)[0], circular=False)
    theta[:, -1] = 0.0
    theta.requires_grad_(True)
    y = torch.rand(6, dtype=F64, requires_grad=True)
    map_fn = partial(mixture_map, circular=False)
    x, log_derivative = invert_monotone(map_fn, y, theta)
    torch.testing.assert_close(x, y, atol=1e-15, rtol=0)
    grad_y, grad_theta = torch.autograd.grad(x.sum(), (y, theta), retain_graph=True)
    torch.testing.assert_close(grad_y, torch.ones_like(y))
    with_mixture = theta.detach().clone()
    with_mixture[:, -1] = 1.0
    mixture, mixture_first, _ = map_fn(y.detach(), with_mixture)
    expected = torch.zeros_like(theta)
    expected[:, -1] = -(mixture - y.detach())
    torch.testing.assert_close(grad_theta, expected)
    (grad_theta,) = torch.autograd.grad(log_derivative.sum(), theta)
    torch.testing.assert_close(grad_theta[:, -1], -(mixture_first - 1.0))


def closed_form_inverse(y, mu, slope, alpha):
    """x and -log f'(x) of one interval component, inverted analytically: sigma(z) = p means
    ``alpha (2z - 1) / (z (1 - z)) = logit p``, whose root in (0, 1) is
    ``z = 2 alpha / (sqrt(L^2 + 4 alpha^2) - L + 2 alpha)``, ``L = logit p``."""
    shifted = mu - 0.5 / slope
    lower = smooth_sigmoid(-slope * shifted, alpha)
    span = smooth_sigmoid(slope * (1 - shifted), alpha) - lower
    logit = torch.logit(y * span + lower)
    z = 2 * alpha / (torch.sqrt(logit**2 + 4 * alpha**2) - logit + 2 * alpha)
    _, first, _ = smooth_sigmoid_derivatives(z, alpha)
    return z / slope + shifted, -torch.log(slope * first / span)


def one_component_inverse(y, mu, slope, alpha, newton_corrections=None):
    """The root-finding inverse of the same component (a K = 1 mixture with c = 0); or, with
    ``newton_corrections``, the detached root plus that many differentiable Newton steps."""
    shifted = mu - 0.5 / slope
    lower = smooth_sigmoid(-slope * shifted, alpha)
    scale = 1 / (smooth_sigmoid(slope * (1 - shifted), alpha) - lower)
    one, zero = torch.ones_like(mu), torch.zeros_like(mu)
    theta = torch.stack([one, shifted, slope, alpha, scale, lower, zero, one], -1)
    map_fn = partial(mixture_map, circular=False)
    x, log_derivative = invert_monotone(map_fn, y, theta)
    if newton_corrections is None:
        return x, log_derivative
    x = x.detach()
    for _ in range(newton_corrections):
        f, first, _ = map_fn(x, theta)
        x = x - (f - y) / first
    return x, -torch.log(map_fn(x, theta)[1])


def test_implicit_derivatives_match_the_closed_form_inverse_to_second_order():
    inputs = (
        torch.tensor([0.2, 0.45, 0.7], dtype=F64),  # y
        torch.tensor([0.3, 0.5, 0.6], dtype=F64),  # mu
        torch.tensor([1.0, 1.3, 0.8], dtype=F64),  # s
        torch.tensor([1.0, 2.0, 4.0], dtype=F64),  # alpha
    )

    def scalar(inverse):
        def function(*args):
            x, log_derivative = inverse(*args)
            return (x**2 + x * log_derivative + log_derivative**2).sum()
        return function

    torch.testing.assert_close(one_component_inverse(*inputs), closed_form_inverse(*inputs))
    for derivative in (torch.autograd.functional.jacobian, torch.autograd.functional.hessian):
        expected = derivative(scalar(closed_form_inverse), inputs)
        found = derivative(scalar(one_component_inverse), inputs)
        torch.testing.assert_close(found, expected, atol=1e-8, rtol=1e-7)
    # One detached Newton correction gives exact first but wrong second derivatives; two give both.
    hessian = torch.autograd.functional.hessian
    expected = hessian(scalar(closed_form_inverse), inputs)
    one_step = hessian(scalar(partial(one_component_inverse, newton_corrections=1)), inputs)
    two_steps = hessian(scalar(partial(one_component_inverse, newton_corrections=2)), inputs)
    assert (one_step[0][0] - expected[0][0]).abs().max() > 1e-2
    torch.testing.assert_close(two_steps, expected, atol=1e-8, rtol=1e-7)


@pytest.mark.parametrize("circular", [False, True])
def test_gradcheck_and_gradgradcheck_of_the_root_finding_inverse(circular):
    params = random_params(2, 1, k=2).requires_grad_(True)
    x = torch.rand(2, 1, dtype=F64)
    y = smooth_mixture(x, params.detach(), circular)[0].requires_grad_(True)
    inverse = partial(smooth_mixture, circular=circular, inverse=True)
    assert torch.autograd.gradcheck(inverse, (y, params))
    assert torch.autograd.gradgradcheck(inverse, (y, params), fast_mode=True)


def test_implicit_inverse_backward_without_parameter_gradients():
    theta = pack_parameters(random_params(1, 3)[0], circular=False)
    y = torch.rand(3, dtype=F64, requires_grad=True)
    map_fn = partial(mixture_map, circular=False)
    solver = partial(solve_monotone, method="newton")
    assert torch.autograd.gradgradcheck(
        lambda v: ImplicitInverse.apply(v, theta, map_fn, solver, None), (y,)
    )


# --- the transformer and flows -------------------------------------------------------------------




def test_transformer_layout_and_directions():
    circular = [True, False, True]
    forward_closed = SmoothMixtureTransformer(circular, n_components=K).double()
    inverse_closed = SmoothMixtureTransformer(circular, n_components=K, analytic="inverse").double()
    assert forward_closed.n_params == 3 * n_smooth_parameters(K)
    params = forward_closed.identity_parameters().double().expand(5, -1).clone()
    params[:, : n_smooth_parameters(K)] += torch.randn(5, n_smooth_parameters(K), dtype=F64)
    params[:, n_smooth_parameters(K) - 1] = 0.0  # the interval block: only dim 1 may change
    x = torch.rand(5, 3, dtype=F64)
    y, log_derivative = forward_closed(x, params)
    torch.testing.assert_close(y[:, [0, 2]], x[:, [0, 2]], atol=1e-6, rtol=0)
    assert (y[:, 1] - x[:, 1]).abs().max() > 1e-3
    block = params[:, : n_smooth_parameters(K)][:, None]
    expected = smooth_mixture(x[:, 1:2], block, circular=False)
    torch.testing.assert_close(y[:, 1:2], expected[0], atol=0, rtol=0)
    torch.testing.assert_close(log_derivative[:, 1:2], expected[1], atol=0, rtol=0)
    # analytic="inverse" swaps the directions
    torch.testing.assert_close(inverse_closed.inverse(x, params)[0], y, atol=0, rtol=0)
    x_root, ld_root = inverse_closed(y, params)
    torch.testing.assert_close(x_root, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_root, -log_derivative, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="parameters"):
        forward_closed(x, params[:, :-1])


@pytest.mark.parametrize("analytic", ["forward", "inverse"])
def test_transformer_passes_flow_checks(analytic):
    circular = [True, False, False, True]
    transformer = SmoothMixtureTransformer(circular, n_components=K, analytic=analytic).double()
    params = random_params(5, 4).reshape(5, -1)
    params = torch.cat([params[:, 10:30], params[:, :10], params[:, 30:]], -1)  # any layout
    flow = FixedParameterFlow(transformer, params)
    x = torch.rand(5, 4, dtype=F64)
    y, logdet = assert_invertible(flow, x, atol=1e-10, circular_mask=circular)
    assert logdet.abs().min() > 1e-2
    assert_logdet_matches_jacobian(flow, x, atol=1e-9)
    assert_logdet_matches_jacobian(flow, y, inverse=True, atol=1e-9)


def test_input_validation():
    transformer = SmoothMixtureTransformer([False, True], n_components=K)
    params = transformer.identity_parameters().expand(3, -1)
    for bad in (1.5, -0.01, float("nan")):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            transformer(torch.tensor([[bad, 0.5]] * 3), params)
    with pytest.raises(ValueError, match="finite"):
        transformer(torch.tensor([[0.5, float("inf")]] * 3), params)
    with pytest.raises(ValueError, match="not finite"):
        transformer.inverse(torch.rand(3, 2), torch.full_like(params, float("nan")))
    with pytest.raises(ValueError, match="4K \\+ 2"):
        smooth_mixture(torch.rand(3, 2), torch.zeros(3, 2, 7), circular=False)
    with pytest.raises(ValueError, match="analytic"):
        SmoothMixtureTransformer([True], analytic="both")
    with pytest.raises(ValueError, match="method"):
        SmoothMixtureTransformer([True], method="secant")


def smooth_stack(analytic: str = "forward", identity_gap: float = 0.3) -> Flow:
    return smooth_coupling_stack(
        6, MIXED_6D, 4, hidden=(16, 16), n_components=K, analytic=analytic,
        identity_gap=identity_gap,
    ).double()


def test_smooth_stack_starts_at_the_identity():
    stack = smooth_coupling_stack(6, MIXED_6D, 4, hidden=(8,), n_components=8).double()
    x = torch.rand(64, 6, dtype=F64)
    y, logdet = stack(x)
    error = torch.remainder(y - x + 0.5, 1.0) - 0.5
    assert error.abs().max() < 4e-6 and logdet.abs().max() < 4e-6


@pytest.mark.parametrize("analytic", ["forward", "inverse"])
def test_smooth_coupling_stack_passes_flow_checks(analytic):
    stack = perturb_parameters(smooth_stack(analytic), scale=0.5)
    x = torch.rand(4, 6, dtype=F64)
    y, logdet = assert_invertible(stack, x, atol=1e-9, circular_mask=MIXED_6D)
    assert logdet.abs().min() > 1e-2, "the perturbed stack is (near) the identity"
    assert_logdet_matches_jacobian(stack, x, atol=1e-8)
    assert_logdet_matches_jacobian(stack, y, inverse=True, atol=1e-8)
    context_layer = smooth_coupling_layer(6, [0, 3], MIXED_6D, hidden=(8,), n_components=2,
                                          context_dim=2, identity_gap=0.3).double()
    perturb_parameters(context_layer)
    context = torch.randn(4, 2, dtype=F64)
    assert_invertible(context_layer, x, context=context, atol=1e-9, circular_mask=MIXED_6D)


def force_jumps(flow: Flow, x0: torch.Tensor, dim: int, step: float) -> float:
    """max |g(t + step) - g(t)| of the force g = d logdet(x) / dx_dim along the line
    ``x0 + t e_dim``, t over one period (the seam of a circle dim in the middle)."""
    t = torch.arange(-0.5, 0.5, step, dtype=F64)
    x = x0.expand(t.numel(), -1).clone()
    x[:, dim] = torch.remainder(x[:, dim] + t, 1.0) if MIXED_6D[dim] else t + 0.5
    x.requires_grad_(True)
    (force,) = torch.autograd.grad(flow(x)[1].sum(), x)
    return (force[1:, dim] - force[:-1, dim]).abs().max().item()


def test_force_of_the_smooth_flow_is_continuous_unlike_the_spline_flow():
    """The derivative of the log density is continuous (its jumps shrink like the step) for the
    smooth flow, across the circle seam too; a spline flow's has jumps that do not shrink."""
    # a moderate perturbation: much larger ones make features narrower than the steps
    smooth = perturb_parameters(smooth_stack(), scale=0.2)
    spline = perturb_parameters(
        coupling_stack(6, MIXED_6D, 4, hidden=(16, 16), n_bins=K).double(), scale=0.2
    )
    x0 = torch.rand(1, 6, dtype=F64)
    for dim in (0, 1):  # a circle dim and an interval dim
        coarse, fine = force_jumps(smooth, x0, dim, 2e-3), force_jumps(smooth, x0, dim, 5e-4)
        assert coarse > 1e-2 and fine < coarse / 3, (dim, coarse, fine)
        coarse, fine = force_jumps(spline, x0, dim, 2e-3), force_jumps(spline, x0, dim, 5e-4)
        assert fine > coarse / 2, (dim, coarse, fine)


def test_force_matching_gradient_through_the_root_finding_inverse():
    """d/d(weight) of |d logdet_inverse / dy|^2 (double backward through the root finding)
    matches a central finite difference."""
    layer = smooth_coupling_layer(6, [0, 1, 5], MIXED_6D, hidden=(8,), n_components=2,
                                  identity_gap=0.3).double()
    perturb_parameters(layer, scale=0.5)
    weight = layer.conditioner.network[0].weight
    y = torch.rand(3, 6, dtype=F64)

    def loss() -> torch.Tensor:
        points = y.clone().requires_grad_(True)
        (force,) = torch.autograd.grad(layer.inverse(points)[1].sum(), points, create_graph=True)
        return (force**2).sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    h = 1e-5
    with torch.no_grad():
        weight[0, 0] += h
    up = loss().item()
    with torch.no_grad():
        weight[0, 0] -= 2 * h
    down = loss().item()
    assert abs(grad[0, 0].item()) > 1e-4
    assert grad[0, 0].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
