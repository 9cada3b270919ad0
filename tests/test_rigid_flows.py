"""Rigid-body flows: quaternions, Möbius maps on the circle and on S^3, uniform S^3 prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzgen.distributions.rotations import S3_AREA, UniformS3
from boltzgen.flows import CouplingLayer, MLPConditioner
from boltzgen.flows.mobius import (
    MobiusCircleTransformer,
    QuaternionMobiusTransformer,
    double_mobius_s3,
    double_mobius_s3_inverse,
    mobius_circle,
    squash_to_ball,
)
from boltzgen.flows.quaternions import (
    SignInvariantConditioner,
    canonical_hemisphere,
    quaternion_multiply,
    quaternion_to_rotation_matrix,
    random_quaternion_sign,
    rotation_matrix_to_quaternion,
    sign_invariant_features,
)
from flow_checks import (
    assert_invertible,
    assert_logdet_matches_jacobian,
    per_sample_jacobian,
    perturb_parameters,
    tangent_basis,
)

F64 = torch.float64


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-12) -> None:
    """Absolute closeness (relative tolerance 0)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(2023)


def unit(shape, generator=None) -> torch.Tensor:
    v = torch.randn(*shape, 4, dtype=F64, generator=generator)
    return v / v.norm(dim=-1, keepdim=True)


def ball(shape, radius_scale: float = 3.0) -> torch.Tensor:
    """Möbius parameters of norms spread over [0, 0.95)."""
    return squash_to_ball(radius_scale * torch.randn(*shape, 4, dtype=F64))


def reference_mobius(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The sphere Möbius map (1 - |q|^2)/|p - q|^2 (p - q) - q, written out independently."""
    q2 = (q * q).sum(-1, keepdim=True)
    return (1 - q2) / ((p - q) ** 2).sum(-1, keepdim=True) * (p - q) - q


def stated_log_volume(p: torch.Tensor, q: torch.Tensor, d: int = 4) -> torch.Tensor:
    """log of the paper's |det| = -(|q|^2-1)(|q|^2+1)^(d-1) / ((|q|^2+1)^2 - 4<q,p>^2)^(d/2)."""
    q2 = (q * q).sum(-1)
    c = (q * p).sum(-1)
    return torch.log(-(q2 - 1) * (q2 + 1) ** (d - 1) / ((q2 + 1) ** 2 - 4 * c**2) ** (d / 2))


def tangent_log_det(function, p: torch.Tensor) -> torch.Tensor:
    """log |det| of the tangent map of ``function: S^3 -> S^3`` (batched ``[B, 4] -> [B, 4]``),
    from the 4 x 4 autograd Jacobian projected onto tangent bases at ``p`` and ``function(p)``."""
    jacobian = per_sample_jacobian(function, p.detach())  # [B, 4, 4]
    with torch.no_grad():
        image = function(p)
    tangent = tangent_basis(image).transpose(-1, -2) @ jacobian @ tangent_basis(p)  # [B, 3, 3]
    return torch.linalg.slogdet(tangent)[1]


def s3_quadrature(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``[N, 4]`` and weights ``[N]`` integrating over S^3 (surface measure):
    p = (cos e cos a, cos e sin a, sin e cos b, sin e sin b), dA = sin e cos e de da db, with
    Gauss-Legendre in e on [0, pi/2] and the periodic trapezoid rule in a and b."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    eta = torch.tensor((nodes + 1) * math.pi / 4, dtype=F64)
    w_eta = torch.tensor(weights * math.pi / 4, dtype=F64) * torch.sin(eta) * torch.cos(eta)
    angle = torch.arange(n, dtype=F64) * 2 * math.pi / n
    e, a, b = torch.meshgrid(eta, angle, angle, indexing="ij")
    we = w_eta[:, None, None].expand_as(e)
    points = torch.stack(
        [e.cos() * a.cos(), e.cos() * a.sin(), e.sin() * b.cos(), e.sin() * b.sin()], dim=-1
    )
    return points.reshape(-1, 4), (we * (2 * math.pi / n) ** 2).reshape(-1)


# ------------------------------------------------------------------------------------------------
# quaternions


def test_rotation_matrix_reference_values_and_properties():
    angle = 0.7
    q_z = torch.tensor([math.cos(angle / 2), 0, 0, math.sin(angle / 2)], dtype=F64)
    expected = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]],
        dtype=F64,
    )
    close(quaternion_to_rotation_matrix(q_z), expected, atol=1e-15)
    q = unit((64,))
    R = quaternion_to_rotation_matrix(q)
    eye = torch.eye(3, dtype=F64).expand(64, 3, 3)
    close(R @ R.transpose(-1, -2), eye, atol=1e-14)
    close(torch.linalg.det(R), torch.ones(64, dtype=F64), atol=1e-14)
    assert torch.equal(quaternion_to_rotation_matrix(-q), R)  # R(q) = R(-q) exactly
    # R v equals the quaternion sandwich q (0, v) q*
    v = torch.randn(64, 3, dtype=F64)
    conjugate = q * torch.tensor([1, -1, -1, -1], dtype=F64)
    pure = torch.cat([torch.zeros(64, 1, dtype=F64), v], -1)
    sandwich = quaternion_multiply(quaternion_multiply(q, pure), conjugate)
    close(sandwich[:, 1:], (R @ v[..., None])[..., 0], atol=1e-14)
    close(sandwich[:, 0], torch.zeros(64, dtype=F64), atol=1e-14)
    # Hamilton convention: R(a b) = R(a) R(b); non-unit q gives the rotation of q / |q|
    b = unit((64,))
    close(
        quaternion_to_rotation_matrix(quaternion_multiply(q, b)),
        R @ quaternion_to_rotation_matrix(b), atol=1e-14,
    )
    close(quaternion_to_rotation_matrix(3.5 * q), R, atol=1e-14)


def test_rotation_matrix_to_quaternion_round_trip_including_half_turns():
    q = canonical_hemisphere(unit((200,)))
    special = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0.6, 0.8, 0],
         [1e-9, 0.6, 0, 0.8], [0.5, 0.5, 0.5, 0.5]],
        dtype=F64,
    )
    q = torch.cat([q, special / special.norm(dim=-1, keepdim=True)])
    back = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(q))
    assert (back[:, 0] >= 0).all()
    close(back.norm(dim=-1), torch.ones(len(q), dtype=F64), atol=1e-15)
    # equal up to the sign (w = 0 is ambiguous), and exactly the same rotation
    error = torch.minimum((back - q).abs().amax(-1), (back + q).abs().amax(-1))
    assert error.max() < 1e-14, error.max()
    assert (back[:-3] - q[:-3]).abs().max() < 1e-14  # w > 0: the canonical sign is unique
    batched = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(q).reshape(-1, 3, 3, 3))
    assert batched.shape == (len(q) // 3, 3, 4)


def test_sign_invariant_features_and_random_signs():
    q = unit((5, 3))
    features = sign_invariant_features(q)
    assert features.shape == (5, 3, 10)
    outer = q[..., :, None] * q[..., None, :]
    rows, cols = torch.triu_indices(4, 4)
    assert torch.equal(features, outer[..., rows, cols])
    assert torch.equal(features[0, 0, :4], q[0, 0, 0] * q[0, 0])  # ww, wx, wy, wz first
    flipped = random_quaternion_sign(q, torch.Generator().manual_seed(1))
    signs = (flipped / q)  # each quaternion by one sign, all components alike
    assert torch.equal(signs.abs(), torch.ones_like(signs))
    assert (signs == signs[..., :1]).all()
    assert (signs[..., 0] > 0).any() and (signs[..., 0] < 0).any()
    assert torch.equal(flipped, random_quaternion_sign(q, torch.Generator().manual_seed(1)))
    assert torch.equal(sign_invariant_features(flipped), features)
    assert (canonical_hemisphere(flipped)[..., 0] >= 0).all()
    close(canonical_hemisphere(flipped).abs(), q.abs(), atol=0)


# ------------------------------------------------------------------------------------------------
# Möbius on the circle


def test_mobius_circle_bijection_derivative_periodicity_and_inverse():
    w = squash_to_ball(torch.tensor([[1.3, -0.4], [40.0, 25.0], [0.0, 0.0]], dtype=F64))
    assert (w.norm(dim=-1) < 0.95).all() and w.norm(dim=-1)[1] > 0.93
    n = 4000
    x = (torch.arange(n, dtype=F64) / n)[:, None].expand(n, 3).contiguous()
    y, log_derivative = mobius_circle(x, w)
    assert ((y >= 0) & (y < 1)).all()
    # one monotone winding: the forward steps are positive and add up to exactly one turn
    steps = torch.remainder(torch.diff(torch.cat([y, y[:1]]), dim=0), 1.0)
    assert (steps > 0).all()
    close(steps.sum(0), torch.ones(3, dtype=F64), atol=1e-12)
    # the density of the image normalises (periodic trapezoid rule: exponential accuracy)
    close(log_derivative.exp().mean(0), torch.ones(3, dtype=F64), atol=1e-12)
    # exact log-derivative (autograd) and periodicity
    xs = torch.rand(50, 3, dtype=F64, requires_grad=True)
    ys, lds = mobius_circle(xs, w)
    (grad,) = torch.autograd.grad(ys.sum(), xs)
    close(lds, grad.log(), atol=1e-12)
    y_shifted, ld_shifted = mobius_circle(xs.detach() + 3.0, w)
    wrapped = torch.remainder(y_shifted - ys.detach() + 0.5, 1.0) - 0.5
    assert wrapped.abs().max() < 1e-12
    close(ld_shifted, lds.detach(), atol=1e-12)
    # inverse and identity
    x_back, ld_inverse = mobius_circle(ys.detach(), w, inverse=True)
    assert (torch.remainder(x_back - xs.detach() + 0.5, 1.0) - 0.5).abs().max() < 1e-12
    close(ld_inverse, -lds.detach(), atol=1e-12)
    close(ys[:, 2].detach(), xs[:, 2].detach(), atol=1e-15)
    # reference value: w = 0.5, theta = pi/2: (i - 1/2) / (1 - i/2) = (-4 + 3i) / 5
    w_ref = torch.tensor([[0.5, 0.0]], dtype=F64)
    y_ref, ld_ref = mobius_circle(torch.tensor([0.25], dtype=F64), w_ref)
    assert abs(y_ref.item() - math.atan2(3, -4) / (2 * math.pi)) < 1e-15
    assert abs(ld_ref.item() - math.log(0.75 / 1.25)) < 1e-15


def test_mobius_circle_change_of_variables_by_quadrature():
    """E_x[g(f(x))] = ∫ g(y) exp(log f^-1'(y)) dy for uniform x, by quadrature on both sides."""
    w = torch.tensor([[0.6, -0.3]], dtype=F64)
    grid = (torch.arange(2000, dtype=F64) / 2000)[:, None]
    g = lambda y: torch.cos(2 * math.pi * y) + 0.3 * torch.sin(6 * math.pi * y)  # noqa: E731
    lhs = g(mobius_circle(grid, w)[0]).mean()
    _, ld_inverse = mobius_circle(grid, w, inverse=True)
    rhs = (g(grid) * ld_inverse.exp()).mean()
    assert abs(lhs - rhs) < 1e-12 and abs(lhs) > 0.1


# ------------------------------------------------------------------------------------------------
# double Möbius on S^3


def test_double_mobius_matches_definition_and_stated_log_volume():
    p, q = unit((256,)), ball((256,))
    y, logdet = double_mobius_s3(p, q)
    expected = reference_mobius(p, q) + reference_mobius(p, -q)
    close(y, expected / expected.norm(dim=-1, keepdim=True), atol=1e-14)
    close(logdet, stated_log_volume(p, q), atol=1e-12)
    close(y.norm(dim=-1), torch.ones(256, dtype=F64), atol=1e-15)
    # the image stays on the great circle through p and q: y in span(p, q)
    span, _ = torch.linalg.qr(torch.stack([p, q], dim=-1))
    residual = y - (span @ (span.transpose(-1, -2) @ y[..., None]))[..., 0]
    assert residual.abs().max() < 1e-14
    # q = 0 is the identity
    y0, logdet0 = double_mobius_s3(p, torch.zeros_like(p))
    close(y0, p, atol=1e-15)
    assert logdet0.abs().max() < 1e-15


def test_double_mobius_inverse_antipodal_and_tangent_jacobian():
    p, q = unit((64,)), ball((64,))
    y, logdet = double_mobius_s3(p, q)
    p_back, logdet_inverse = double_mobius_s3_inverse(y, q)
    assert (p_back - p).abs().max() < 1e-10
    assert (logdet + logdet_inverse).abs().max() < 1e-10
    y_minus, logdet_minus = double_mobius_s3(-p, q)
    close(y_minus, -y, atol=1e-15)
    close(logdet_minus, logdet, atol=1e-15)
    x_minus, li_minus = double_mobius_s3_inverse(-y, q)
    close(x_minus, -p_back, atol=1e-15)
    close(li_minus, logdet_inverse, atol=1e-15)
    # log-volume = log |det| of the tangent-space Jacobian (autograd), both directions
    autograd_forward = tangent_log_det(lambda x: double_mobius_s3(x, q)[0], p)
    close(logdet, autograd_forward, atol=1e-10)
    autograd_inverse = tangent_log_det(lambda x: double_mobius_s3_inverse(x, q)[0], y)
    close(logdet_inverse, autograd_inverse, atol=1e-10)
    assert logdet.abs().max() > 1.0  # a strongly non-trivial map was tested


def test_double_mobius_is_safe_near_plus_minus_q_and_differentiable():
    q = ball((6,))
    q[0] = torch.tensor([0.0, 0.0, 0.0, 0.95], dtype=F64) * (1 - 1e-12)
    direction = q / q.norm(dim=-1, keepdim=True)
    for p in (direction, -direction, direction + 1e-9 * unit((6,))):
        p = p.clone().requires_grad_(True)
        q_var = q.clone().requires_grad_(True)
        y, logdet = double_mobius_s3(p, q_var)
        x, logdet_inverse = double_mobius_s3_inverse(y, q_var)
        (y.sum() + logdet.sum() + x.sum() + logdet_inverse.sum()).backward()
        assert torch.isfinite(p.grad).all() and torch.isfinite(q_var.grad).all()
        assert (x - p / p.norm(dim=-1, keepdim=True)).abs().max() < 1e-10
        assert (logdet + logdet_inverse).abs().max() < 1e-10
    # at p = q/|q| the density grows by the largest factor ((1 + |q|^2) / (1 - |q|^2))^3
    _, logdet = double_mobius_s3(direction, q)
    q2 = (q * q).sum(-1)
    close(logdet, 3 * torch.log((1 + q2) / (1 - q2)), atol=1e-9)
    # through the squash at raw = 0 the gradient is finite and exactly zero (f_q = f_{-q}: q = 0
    # is a critical point); at |q| = 0.1 it is not
    p = unit((3,))
    for scale, nonzero in [(0.0, False), (0.1 / 0.85, True)]:
        raw = (scale * unit((3,))).requires_grad_(True)
        y, logdet = double_mobius_s3(p, squash_to_ball(raw))
        (y[:, 1].sum() + logdet.sum()).backward()
        assert torch.isfinite(raw.grad).all()
        assert (raw.grad.abs().max() > 1e-3) == nonzero, raw.grad
    close(double_mobius_s3(p, -q[:3])[0], double_mobius_s3(p, q[:3])[0])


def test_double_mobius_density_normalises_monte_carlo_and_quadrature():
    q = torch.tensor([0.3, -0.4, 0.1, 0.35], dtype=F64)  # |q| = 0.6
    generator = torch.Generator().manual_seed(11)
    u = UniformS3(1).double().sample(40000, generator)
    for values in (double_mobius_s3(u, q)[1].exp(), double_mobius_s3_inverse(u, q)[1].exp()):
        mean, standard_error = values.mean().item(), values.std().item() / math.sqrt(len(values))
        assert abs(mean - 1) < 4 * standard_error, (mean, standard_error)
        assert values.max() > 2  # the test would see a wrong log-volume
    # deterministic: ∫ exp(logdet) dA = area of S^3
    nodes, weights = s3_quadrature(40)
    close(weights.sum(), torch.tensor(S3_AREA, dtype=F64), atol=1e-12)
    integral = (weights * double_mobius_s3(nodes, q)[1].exp()).sum() / S3_AREA
    assert abs(integral.item() - 1) < 1e-9, integral.item()
    wrong = (weights * (1.01 * double_mobius_s3(nodes, q)[1]).exp()).sum() / S3_AREA
    assert abs(wrong.item() - 1) > 1e-3


# ------------------------------------------------------------------------------------------------
# uniform prior on (S^3)^K


def test_uniform_s3_log_prob_samples_and_normalisation():
    prior = UniformS3(2).double()
    assert prior.dim == 8
    x = prior.sample(20000, torch.Generator().manual_seed(3))
    assert x.dtype == F64 and x.shape == (20000, 8)
    blocks = x.reshape(-1, 2, 4)
    close(blocks.norm(dim=-1), torch.ones(20000, 2, dtype=F64), atol=1e-14)
    expected = torch.full((20000,), -2 * math.log(2 * math.pi**2), dtype=F64)
    close(prior.log_prob(x), expected)
    # moments of the uniform distribution on S^3: E[q q^T] = I/4, E[w^4] = 1/8 (4 SE bounds)
    second = torch.einsum("nki,nkj->ij", blocks, blocks) / (2 * 20000)
    assert (second - torch.eye(4, dtype=F64) / 4).abs().max() < 4 * math.sqrt(1 / 12 / 40000)
    fourth = (blocks[..., 0] ** 4).mean().item()
    assert abs(fourth - 1 / 8) < 4 * math.sqrt((105 / 1920 - 1 / 64) / 40000)  # E w^8 = 7/128
    # Haar on SO(3): E[R] = 0
    assert quaternion_to_rotation_matrix(blocks).mean((0, 1)).abs().max() < 0.02
    # off the sphere: -inf; NaN: NaN
    bad = x[:3].clone()
    bad[0, 5] += 1e-3
    bad[1, 0] = float("nan")
    log_p = prior.log_prob(bad)
    assert log_p[0] == -float("inf") and torch.isnan(log_p[1]) and torch.isfinite(log_p[2])
    with pytest.raises(ValueError):
        prior.log_prob(x[:, :7])
    with pytest.raises(ValueError):
        UniformS3(0)


def test_s3_area_constant_by_monte_carlo():
    """2 pi^2 = 4 x volume of the 4-ball, estimated from uniform points in the cube [-1, 1]^4."""
    points = 2 * torch.rand(200000, 4, dtype=F64, generator=torch.Generator().manual_seed(9)) - 1
    inside = (points.norm(dim=-1) <= 1).to(F64)
    volume = 16 * inside.mean().item()
    standard_error = 16 * inside.std().item() / math.sqrt(len(inside))
    assert abs(4 * volume - S3_AREA) < 4 * 4 * standard_error
    assert abs(4 * volume - 4 * math.pi) > 4 * 4 * standard_error  # the test can tell a wrong area


# ------------------------------------------------------------------------------------------------
# transformers in coupling layers

K = 3  # molecules: positions in dims 0..8 (torus, [0, 1)), quaternions in dims 9..20
D = 7 * K
CIRCULAR_MASK = [True] * 3 * K + [False] * 4 * K


def rigid_batch(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(17)
    positions = torch.rand(n, 3 * K, dtype=F64, generator=generator)
    quaternions = UniformS3(K).double().sample(n, generator)
    return torch.cat([positions, quaternions], dim=-1)


def position_layer() -> CouplingLayer:
    """Möbius maps of all positions, conditioned on the orientations through q_i q_j."""
    mlp = MLPConditioner([False] * 10 * K, 2 * 3 * K, hidden=(16,))
    conditioner = SignInvariantConditioner(4 * K, range(4 * K), mlp)
    layer = CouplingLayer(D, range(3 * K), conditioner, MobiusCircleTransformer(3 * K))
    return perturb_parameters(layer.double(), scale=1.0, seed=1)


def orientation_layer() -> CouplingLayer:
    """Double Möbius of molecule 0's quaternion (dims 9..12), conditioned on all positions and
    the other orientations (sign-invariant)."""
    conditioning = list(range(3 * K)) + list(range(3 * K + 4, D))
    mlp = MLPConditioner([True] * 3 * K + [False] * 10 * (K - 1), 4, hidden=(16,))
    conditioner = SignInvariantConditioner(len(conditioning), range(3 * K, len(conditioning)), mlp)
    layer = CouplingLayer(
        D, range(3 * K, 3 * K + 4), conditioner, QuaternionMobiusTransformer(1), conditioning
    )
    return perturb_parameters(layer.double(), scale=1.0, seed=2)


def test_transformers_identity_parameters_and_layout():
    x = rigid_batch(8)
    circle, rotation = MobiusCircleTransformer(3 * K), QuaternionMobiusTransformer(K)
    for transformer, inputs in [(circle, x[:, : 3 * K]), (rotation, x[:, 3 * K :])]:
        params = transformer.identity_parameters().to(F64).expand(8, -1)
        outputs, log_derivative = transformer(inputs, params)
        close(outputs, inputs, atol=1e-15)
        assert log_derivative.shape == inputs.shape and log_derivative.abs().max() < 1e-15
        with pytest.raises(ValueError):
            transformer(inputs, params[:, 1:])
    params = torch.randn(8, 4 * K, dtype=F64)
    outputs, log_derivative = rotation(x[:, 3 * K :], params)
    blocks = log_derivative.reshape(8, K, 4)
    assert torch.equal(blocks[..., 1:], torch.zeros(8, K, 3, dtype=F64))
    q = squash_to_ball(params.reshape(8, K, 4))
    expected_y, expected_logdet = double_mobius_s3(x[:, 3 * K :].reshape(8, K, 4), q)
    close(blocks[..., 0], expected_logdet, atol=1e-15)
    close(outputs, expected_y.reshape(8, 4 * K), atol=1e-15)
    x_back, log_inverse = rotation.inverse(outputs, params)
    assert (x_back - x[:, 3 * K :]).abs().max() < 1e-10
    assert (log_inverse + log_derivative).abs().max() < 1e-10


def test_position_coupling_layer_invertible_sign_invariant_and_exact_logdet():
    layer, x = position_layer(), rigid_batch(16)
    y, logdet = assert_invertible(layer, x, atol=1e-10, circular_mask=CIRCULAR_MASK)
    assert logdet.abs().max() > 0.1  # not the identity
    assert torch.equal(y[:, 3 * K :], x[:, 3 * K :])
    assert ((y[:, : 3 * K] >= 0) & (y[:, : 3 * K] < 1)).all()
    flipped = x.clone()
    flipped[:, 3 * K :] = random_quaternion_sign(
        x[:, 3 * K :].reshape(16, K, 4), torch.Generator().manual_seed(4)
    ).reshape(16, 4 * K)
    y_flipped, logdet_flipped = layer(flipped)
    assert torch.equal(y_flipped[:, : 3 * K], y[:, : 3 * K])  # a function of the rotations
    assert torch.equal(logdet_flipped, logdet)
    # the quaternions pass unchanged (identity block), so the full Jacobian is exact here
    assert_logdet_matches_jacobian(layer, x, atol=1e-10)
    assert_logdet_matches_jacobian(layer, y, inverse=True, atol=1e-10)


def test_orientation_coupling_layer_invertible_equivariant_and_tangent_logdet():
    layer, x = orientation_layer(), rigid_batch(16)
    y, logdet = assert_invertible(layer, x, atol=1e-10, circular_mask=CIRCULAR_MASK)
    assert logdet.abs().max() > 0.1
    untouched = [i for i in range(D) if not 3 * K <= i < 3 * K + 4]
    assert torch.equal(y[:, untouched], x[:, untouched])
    close(y[:, 3 * K : 3 * K + 4].norm(dim=-1), torch.ones(16, dtype=F64), atol=1e-14)
    # odd in its own quaternion, invariant to the signs of the others
    own, other = x.clone(), x.clone()
    own[:, 3 * K : 3 * K + 4] *= -1
    other[:, 3 * K + 4 :] *= -1
    y_own, logdet_own = layer(own)
    y_other, logdet_other = layer(other)
    close(y_own[:, 3 * K : 3 * K + 4], -y[:, 3 * K : 3 * K + 4], atol=1e-15)
    close(logdet_own, logdet, atol=1e-15)
    assert torch.equal(y_other[:, 3 * K : 3 * K + 4], y[:, 3 * K : 3 * K + 4])
    assert torch.equal(logdet_other, logdet)
    # log-volume on S^3 = tangent-space Jacobian determinant of the transformed quaternion

    def transformed_quaternion(p: torch.Tensor) -> torch.Tensor:
        full = torch.cat([x[:, : 3 * K], p, x[:, 3 * K + 4 :]], dim=-1)
        return layer(full)[0][:, 3 * K : 3 * K + 4]

    autograd = tangent_log_det(transformed_quaternion, x[:, 3 * K : 3 * K + 4])
    close(logdet, autograd, atol=1e-10)


def test_coupling_layers_at_and_near_identity_gradients():
    """Zero-initialised conditioners: the circle layer trains, the double Möbius layer has exactly
    zero gradient (q = 0 is a critical point); near_identity_parameters as the output bias fixes
    that while staying close to the identity."""
    x = rigid_batch(4)
    conditioning = list(range(3 * K)) + list(range(3 * K + 4, D))
    transformer = QuaternionMobiusTransformer(1)
    near = transformer.near_identity_parameters(0.1, torch.Generator().manual_seed(0))
    close(squash_to_ball(near.double()).norm(), torch.tensor(0.1, dtype=F64), atol=1e-6)
    circle_mlp = MLPConditioner([False] * 10 * K, 2 * 3 * K, hidden=(8,))
    circle_layer = CouplingLayer(
        D, range(3 * K), SignInvariantConditioner(4 * K, range(4 * K), circle_mlp),
        MobiusCircleTransformer(3 * K),
    )
    for output_bias, layer_kind in [(None, "circle"), (None, "quaternion"), (near, "quaternion")]:
        if layer_kind == "circle":
            layer = circle_layer.double()
        else:
            mlp = MLPConditioner(
                [True] * 3 * K + [False] * 10 * (K - 1), 4, hidden=(8,), output_bias=output_bias
            )
            conditioner = SignInvariantConditioner(
                len(conditioning), range(3 * K, len(conditioning)), mlp
            )
            layer = CouplingLayer(
                D, range(3 * K, 3 * K + 4), conditioner, transformer, conditioning
            ).double()
        y, logdet = layer(x)
        if output_bias is None:
            close(y, x, atol=1e-15)
            assert logdet.abs().max() < 1e-15
        else:
            assert 1e-4 < (y - x).abs().max() < 0.05
            assert logdet.abs().max() < 3 * math.log(1.01 / 0.99)
            assert_invertible(layer, x, atol=1e-10, circular_mask=CIRCULAR_MASK)
        layer.zero_grad()
        (logdet.sum() + y[:, 3 * K + 1].sum() + y[:, 0].sum()).backward()
        gradients = [p.grad for p in layer.parameters() if p.grad is not None]
        assert gradients and all(torch.isfinite(g).all() for g in gradients)
        largest = max(g.abs().max().item() for g in gradients)
        trains = not (layer_kind == "quaternion" and output_bias is None)
        assert (largest > 1e-3) == trains, (layer_kind, largest)
