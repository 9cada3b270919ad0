"""Generic checks that every flow test in the project uses (``from flow_checks import ...``).

- :func:`assert_invertible`: ``inverse(forward(x)) == x`` and ``logdet_f + logdet_inv == 0``.
- :func:`assert_logdet_matches_jacobian`: the flow's ``logdet`` equals ``log |det J|`` of the
  autograd Jacobian, per sample, in float64 (and that samples do not influence each other).
- :func:`perturb_parameters`: randomise a flow's parameters (coupling layers start as the identity
  map, so without this a check would only test the identity).
- :func:`rigid_tangent_log_det`: log |det| of a map of the rigid latent manifold torus x (S^3)^K
  (:func:`tangent_basis` of S^3, :func:`manifold_basis` of the whole layout).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _circular_difference(a: torch.Tensor, b: torch.Tensor, circular_mask) -> torch.Tensor:
    """``a - b`` ``[B, D]``; on circle dims (period 1) the shortest signed difference."""
    diff = a - b
    if circular_mask is not None:
        mask = torch.as_tensor(circular_mask, dtype=torch.bool, device=diff.device)
        wrapped = torch.remainder(diff + 0.5, 1.0) - 0.5
        diff = torch.where(mask, wrapped, diff)
    return diff


def assert_invertible(
    flow: torch.nn.Module,
    x: torch.Tensor,
    context: Optional[torch.Tensor] = None,
    atol: float = 1e-5,
    circular_mask: Optional[Sequence[bool]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assert ``flow.inverse(flow(x))`` returns ``x`` and the two log-dets cancel.

    Args:
        flow: a ``Flow``; ``x`` ``[B, D]`` inputs in its domain; ``context`` passed to both calls.
        atol: absolute tolerance for the round trip and for ``|logdet_f + logdet_inv|``.
        circular_mask: ``[D]`` flags of circle dims (period 1), compared modulo 1.

    Returns:
        ``(y, logdet_forward)`` for further checks.
    """
    with torch.no_grad():
        y, logdet_forward = flow(x, context=context)
        x_back, logdet_inverse = flow.inverse(y, context=context)
    for name, logdet in [("forward", logdet_forward), ("inverse", logdet_inverse)]:
        assert logdet.shape == (x.shape[0],), f"{name} logdet has shape {tuple(logdet.shape)}"
    assert x_back.shape == x.shape, f"round trip changed the shape: {tuple(x_back.shape)}"
    for name, value in [("y", y), ("logdet_forward", logdet_forward), ("x_back", x_back),
                        ("logdet_inverse", logdet_inverse)]:
        assert torch.isfinite(value).all(), f"{name} is not finite"
    error = _circular_difference(x_back, x, circular_mask).abs().max().item()
    assert error <= atol, f"inverse(forward(x)) differs from x by {error:.3g} > {atol:g}"
    logdet_error = (logdet_forward + logdet_inverse).abs().max().item()
    assert logdet_error <= atol, f"logdet_forward + logdet_inverse = {logdet_error:.3g} != 0"
    return y, logdet_forward


def per_sample_jacobian(function, x: torch.Tensor) -> torch.Tensor:
    """Jacobians ``[B, D_out, D_in]`` of ``function: [B, D_in] -> [B, D_out]``, one per sample.

    Differentiates the batch sum of the outputs (D_out backward passes, vectorised where autograd
    allows), which gives each sample's Jacobian when samples do not interact; see
    :func:`assert_samples_independent`.
    """
    def summed(inputs):
        return function(inputs).sum(dim=0)

    try:
        jacobian = torch.autograd.functional.jacobian(summed, x, vectorize=True)
    except RuntimeError:  # an operation without a batching rule: one backward pass per output
        jacobian = torch.autograd.functional.jacobian(summed, x)
    return jacobian.permute(1, 0, 2)


def assert_samples_independent(function, x: torch.Tensor) -> None:
    """Assert changing one sample's input leaves the other samples' outputs unchanged."""
    if x.shape[0] < 2:
        return
    with torch.no_grad():
        reference = function(x)
        changed = x.clone()
        changed[0] = x[1]
        others = function(changed)[1:]
    assert torch.equal(others, reference[1:]), "outputs of one sample depend on another sample"


def assert_logdet_matches_jacobian(
    flow: torch.nn.Module,
    x: torch.Tensor,
    context: Optional[torch.Tensor] = None,
    inverse: bool = False,
    atol: float = 1e-6,
    input_dims: Optional[Sequence[int]] = None,
    output_dims: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Assert the flow's logdet equals ``log |det dy/dx|`` of the autograd Jacobian (float64).

    Args:
        flow: a ``Flow`` (in float64); ``x`` ``[B, D_in]`` float64 inputs; ``context`` fixed.
        inverse: check ``flow.inverse`` instead of ``flow.forward``.
        atol: absolute tolerance on the log-determinant.
        input_dims, output_dims: square sub-block of the Jacobian to use when ``D_in != D_out``
            (maps between equal-dimensional manifolds embedded differently); default all dims.

    Returns:
        The autograd ``log |det J|`` per sample, ``[B]``.
    """
    if x.dtype != torch.float64:
        raise ValueError(f"the Jacobian check needs float64 inputs (and flow), got {x.dtype}")
    apply = flow.inverse if inverse else flow
    x = x.detach()
    with torch.no_grad():
        _, logdet = apply(x, context=context)
    function = lambda inputs: apply(inputs, context=context)[0]  # noqa: E731
    assert_samples_independent(function, x)
    per_sample = per_sample_jacobian(function, x)  # [B, D_out, D_in]
    if output_dims is not None:
        per_sample = per_sample[:, list(output_dims), :]
    if input_dims is not None:
        per_sample = per_sample[:, :, list(input_dims)]
    assert per_sample.shape[1] == per_sample.shape[2], (
        f"Jacobian block {tuple(per_sample.shape[1:])} is not square: pass input_dims/output_dims"
    )
    sign, log_abs_det = torch.linalg.slogdet(per_sample)
    assert (sign != 0).all(), "the Jacobian is singular for some samples"
    error = (log_abs_det - logdet).abs().max().item()
    assert error <= atol, (
        f"logdet differs from autograd log|det J| by {error:.3g} > {atol:g}:\n"
        f"flow: {logdet.tolist()}\nautograd: {log_abs_det.tolist()}"
    )
    return log_abs_det


def perturb_parameters(
    module: torch.nn.Module, scale: float = 0.5, seed: int = 0
) -> torch.nn.Module:
    """Add ``scale`` x N(0, 1) noise (seeded) to every parameter of ``module``, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise.to(parameter.device))
    return module


class FixedParameterFlow(torch.nn.Module):
    """Test-only flow: an element-wise transformer with fixed per-sample parameters ``[B, n_params]``
    (``forward``/``inverse`` return the summed log-derivative as logdet ``[B]``)."""

    def __init__(self, transformer, params: torch.Tensor):
        super().__init__()
        self.transformer = transformer
        self.register_buffer("params", params)

    def forward(self, x, context=None):
        y, log_derivative = self.transformer(x, self.params)
        return y, log_derivative.sum(-1)

    def inverse(self, y, context=None):
        x, log_derivative = self.transformer.inverse(y, self.params)
        return x, log_derivative.sum(-1)


def tangent_basis(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal bases ``[B, 4, 3]`` of the tangent spaces of S^3 at ``p`` ``[B, 4]``."""
    filler = torch.randn(p.shape[0], 4, 3, dtype=p.dtype, generator=torch.Generator().manual_seed(5))
    q_factor, _ = torch.linalg.qr(torch.cat([p[..., None], filler], dim=-1))
    return q_factor[..., 1:]


def manifold_basis(z: torch.Tensor, layout) -> torch.Tensor:
    """``[B, D, 3(K-1) + 3K]`` for a `boltzgen.flows.rigid_flow.RigidLatentLayout`: identity on the
    positions, tangent bases of each quaternion."""
    batch, n_pos = z.shape[0], layout.n_position_dims
    basis = z.new_zeros(batch, layout.dim, layout.n_degrees_of_freedom)
    basis[:, :n_pos, :n_pos] = torch.eye(n_pos, dtype=z.dtype)
    for k in range(layout.n_molecules):
        rows = slice(n_pos + 4 * k, n_pos + 4 * k + 4)
        cols = slice(n_pos + 3 * k, n_pos + 3 * k + 3)
        basis[:, rows, cols] = tangent_basis(z[:, rows])
    return basis


def rigid_tangent_log_det(flow, z: torch.Tensor, layout) -> torch.Tensor:
    """log |det| ``[B]`` of ``flow`` (``flow(z)[0]``) as a map of torus x (S^3)^K, from the autograd
    Jacobian projected onto the tangent spaces at ``z`` and at its image."""
    jacobian = per_sample_jacobian(lambda u: flow(u)[0], z.detach())  # [B, D, D]
    with torch.no_grad():
        y = flow(z)[0]
    tangent = manifold_basis(y, layout).transpose(-1, -2) @ jacobian @ manifold_basis(z, layout)
    sign, log_abs = torch.linalg.slogdet(tangent)
    assert (sign != 0).all()
    return log_abs
