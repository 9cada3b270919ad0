"""Möbius transformations for rigid-body flows: circles (positions) and S^3 (orientations).

Rigid-body flows (Köhler, Invernizzi, de Haan, Noé 2023) move each rigid molecule's position on
the torus of the periodic box and its orientation, a unit quaternion on S^3, with Möbius maps.

The Möbius transformation of the unit sphere S^{d-1} with parameter ``w`` in the open unit ball is
(Rezende et al. 2020, "Normalizing flows on tori and spheres")

    M_w(z) = (1 - |w|^2) / |z - w|^2 * (z - w) - w,

a diffeomorphism of the sphere with tangent Jacobian determinant
``((1 - |w|^2) / |z - w|^2)^(d-1)``; ``M_0`` is the identity.

**Circle** (:func:`mobius_circle`, d = 2): with ``z = exp(i theta)`` this is the Blaschke factor
``(z - w) / (1 - conj(w) z)``, orientation preserving, with inverse ``M_{-w}`` and derivative
``d theta' / d theta = (1 - |w|^2) / |z - w|^2``. Angles are normalised to ``[0, 1)`` (period 1,
``theta = 2 pi x``), like every circle variable of the project; the log-derivative is the same in
either unit.

**S^3** (:func:`double_mobius_s3`, d = 4): the double Möbius
``f_q(p) = normalize(M_q(p) + M_{-q}(p))`` is odd, ``f_q(-p) = -f_q(p)``, so it is a map of
SO(3) = S^3 / ±1. Writing ``s = 1 + |q|^2`` and ``c = <q, p>``,
``M_q(p) + M_{-q}(p) = 2 (1 - |q|^2) / (s^2 - 4c^2) * (s p - 2 c q)``, so

    f_q(p) = A p / |A p|,   A = s I - 2 q q^T,   |A p|^2 = s^2 - 4 c^2   (|p| = 1),

the projective action of a symmetric positive definite matrix (eigenvalues ``s`` thrice and
``1 - |q|^2``). Its log-volume change on S^3 is ``log det A - 4 log |A p|``:

    |det J| = (1 - |q|^2) (1 + |q|^2)^3 / ((1 + |q|^2)^2 - 4 <q, p>^2)^2,

the formula of the paper with d = 4. ``A p`` stays in the plane of ``p`` and ``q`` (the map keeps
each great circle through ``±q/|q|``); the inverse is closed form, ``p = A^{-1} y / |A^{-1} y|``
with ``A^{-1} ∝ (1 - |q|^2) I + 2 q q^T``, so no root finding is needed. ``q = 0`` is the
identity.

**The double Möbius is even in its parameter**: ``A`` depends on ``q`` only through ``q q^T``,
so ``f_q = f_{-q}`` and every derivative of ``f_q`` (and of its log-volume) w.r.t. ``q`` vanishes
at ``q = 0``. A coupling layer whose conditioner starts at the identity parameters (the
zero-initialised output layer of ``MLPConditioner``) therefore has exactly zero gradient for all
its conditioner weights and never leaves the identity. Initialise the conditioner's output bias
with :meth:`QuaternionMobiusTransformer.near_identity_parameters` instead (small random ``q``):
the gradient is then proportional to ``|q|``. The circle map has no such problem (it is linear in
``w`` to first order).

Parameters come from unconstrained conditioner outputs through :func:`squash_to_ball`,
``w = 0.95 raw / (1 + |raw|)``, so ``|w| < 0.95``: the maps stay well conditioned (the densities
change by a factor at most ``((1 + 0.95) / (1 - 0.95))^k``) and all denominators are bounded away
from zero (``|z - w| > 0.05``, ``s^2 - 4c^2 >= (1 - |q|^2)^2 > 0.0095``).

Densities are with respect to the arc length of the circle and the surface measure of S^3
(not the Lebesgue measure of the embedding R^2 / R^4).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from boltzgen.flows.coupling import ElementwiseTransformer

#: Radius of the ball the Möbius parameters are squashed into.
DEFAULT_MAX_RADIUS = 0.95
#: Floor for squared norms in denominators (only reached for inputs off the sphere / |q| ~ 1).
_TINY = 1e-30


def squash_to_ball(raw: torch.Tensor, max_radius: float = DEFAULT_MAX_RADIUS) -> torch.Tensor:
    """``max_radius * raw / (1 + |raw|)``: unconstrained ``[..., d]`` into the open ball of radius
    ``max_radius`` (the norm over the last axis; the map is smooth and its Jacobian at 0 is
    ``max_radius * I``)."""
    norm = torch.linalg.vector_norm(raw, dim=-1, keepdim=True)
    return max_radius * raw / (1.0 + norm)


def _check_pair(points: torch.Tensor, params: torch.Tensor, size: int, names: str) -> None:
    if points.shape[-1:] != (size,) or params.shape[-1:] != (size,):
        raise ValueError(
            f"{names} must have shape [..., {size}], got {list(points.shape)} and "
            f"{list(params.shape)}"
        )


# --------------------------------------------------------------------------------------------
# circle


def mobius_circle(
    x: torch.Tensor, w: torch.Tensor, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Möbius map of the circle, angles normalised to ``[0, 1)`` (``theta = 2 pi x``).

    Args:
        x: angles ``[...]`` in units of full turns; any finite value (taken modulo 1).
        w: parameters ``[..., 2]`` (real, imaginary part) inside the unit disc, ``|w| < 1``
            (use :func:`squash_to_ball`); broadcast against ``x``.
        inverse: apply the inverse map (which is the Möbius map with ``-w``).

    Returns:
        ``(y [...] in [0, 1), log_derivative [...])``, ``log |dy/dx|`` of the map applied:
        ``log(1 - |w|^2) - log |exp(2 pi i x) - w|^2`` forward, and with ``-w`` at the input
        for the inverse (equal to minus the forward log-derivative at the output).
    """
    if w.shape[-1:] != (2,):
        raise ValueError(f"w must have shape [..., 2], got {list(w.shape)}")
    a, b = w[..., 0], w[..., 1]
    if inverse:
        a, b = -a, -b
    angle = 2.0 * math.pi * x
    cos, sin = torch.cos(angle), torch.sin(angle)
    # h = n / d with n = z - w and d = 1 - conj(w) z; arg h = arg(n conj(d))
    n_re, n_im = cos - a, sin - b
    d_re, d_im = 1.0 - (a * cos + b * sin), b * cos - a * sin
    out_re = n_re * d_re + n_im * d_im
    out_im = n_im * d_re - n_re * d_im
    y = torch.remainder(torch.atan2(out_im, out_re) / (2.0 * math.pi), 1.0)
    distance2 = (n_re * n_re + n_im * n_im).clamp_min(_TINY)
    log_derivative = torch.log1p(-(a * a + b * b)) - torch.log(distance2)
    return y, log_derivative


# --------------------------------------------------------------------------------------------
# S^3


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(_TINY)


def double_mobius_s3(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The double Möbius map ``f_q(p) = normalize(M_q(p) + M_{-q}(p))`` of S^3 (module docstring).

    Args:
        p: points ``[..., 4]`` on S^3 (unit quaternions; they are normalised first, so rounding
            drift off the sphere is harmless).
        q: parameters ``[..., 4]`` with ``|q| < 1`` (broadcast against ``p``).

    Returns:
        ``(f_q(p) [..., 4] on S^3, logdet [...])``: the log-volume change w.r.t. the surface
        measure of S^3, ``log(1 - |q|^2) + 3 log(1 + |q|^2) - 2 log((1 + |q|^2)^2 - 4 <q, p>^2)``.
        Odd in ``p``: ``f(-p) = -f(p)`` and ``logdet(-p) = logdet(p)``. Differentiable in ``p``
        and ``q``; all denominators are >= ``(1 - |q|^2)^2`` (floored at 1e-30 for ``|q| -> 1``).
    """
    _check_pair(p, q, 4, "p and q")
    p = _normalize(p)
    q2 = (q * q).sum(-1, keepdim=True)
    s = 1.0 + q2
    c = (q * p).sum(-1, keepdim=True)
    y = _normalize(s * p - 2.0 * c * q)
    one_minus_q2 = (1.0 - q2).clamp_min(_TINY)
    denominator = (s * s - 4.0 * c * c).clamp_min(_TINY)
    logdet = torch.log(one_minus_q2) + 3.0 * torch.log(s) - 2.0 * torch.log(denominator)
    return y, logdet.squeeze(-1)


def double_mobius_s3_inverse(
    y: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`double_mobius_s3`: ``p = A^{-1} y / |A^{-1} y|`` in closed form.

    With ``r = 1 - |q|^2`` and ``e = <q, y>``: ``p = (r y + 2 e q) / sqrt(r^2 + 4 e^2)``, and the
    log-volume change of the inverse map is ``3 log r + log(1 + |q|^2) - 2 log(r^2 + 4 e^2)``
    (= ``-logdet`` of the forward map at ``p``).

    Args:
        y: points ``[..., 4]`` on S^3 (normalised first).
        q: parameters ``[..., 4]`` with ``|q| < 1``.

    Returns:
        ``(p [..., 4] on S^3, logdet [...])`` of the inverse map.
    """
    _check_pair(y, q, 4, "y and q")
    y = _normalize(y)
    q2 = (q * q).sum(-1, keepdim=True)
    r = (1.0 - q2).clamp_min(_TINY)
    e = (q * y).sum(-1, keepdim=True)
    p = _normalize(r * y + 2.0 * e * q)
    denominator = (r * r + 4.0 * e * e).clamp_min(_TINY)
    logdet = 3.0 * torch.log(r) + torch.log1p(q2) - 2.0 * torch.log(denominator)
    return p, logdet.squeeze(-1)


# --------------------------------------------------------------------------------------------
# element-wise transformers for coupling layers


def _check_transformer_inputs(
    module: ElementwiseTransformer, inputs: torch.Tensor, params: torch.Tensor
) -> None:
    if inputs.dim() != 2 or inputs.shape[1] != module.dim:
        raise ValueError(f"expected inputs [batch, {module.dim}], got {list(inputs.shape)}")
    if params.shape != (inputs.shape[0], module.n_params):
        raise ValueError(
            f"expected parameters [{inputs.shape[0]}, {module.n_params}], got {list(params.shape)}"
        )


class MobiusCircleTransformer(ElementwiseTransformer):
    """Element-wise Möbius maps of ``dim`` circle variables in ``[0, 1)`` (:func:`mobius_circle`).

    Parameters: 2 per variable, ``params [B, 2 dim]`` read as ``[B, dim, 2]`` and squashed to
    ``w = max_radius * raw / (1 + |raw|)``; zeros give the identity.

    Shapes: ``forward(x [B, dim], params [B, 2 dim]) -> (y [B, dim] in [0, 1),
    log_derivative [B, dim])``; ``inverse`` likewise.
    """

    def __init__(self, dim: int, max_radius: float = DEFAULT_MAX_RADIUS):
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not 0.0 < max_radius < 1.0:
            raise ValueError(f"max_radius must lie in (0, 1), got {max_radius!r}")
        self.dim = int(dim)
        self.n_params = 2 * self.dim
        self.max_radius = float(max_radius)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_radius={self.max_radius}"

    def identity_parameters(self) -> torch.Tensor:
        """Zeros ``[2 dim]``: ``w = 0``, the identity map."""
        return torch.zeros(self.n_params)

    def _transform(self, inputs: torch.Tensor, params: torch.Tensor, inverse: bool):
        _check_transformer_inputs(self, inputs, params)
        w = squash_to_ball(params.reshape(inputs.shape[0], self.dim, 2), self.max_radius)
        return mobius_circle(inputs, w, inverse=inverse)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, dim]``, ``params [B, 2 dim]`` -> ``(y [B, dim], log f'(x) [B, dim])``."""
        return self._transform(x, params, inverse=False)

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y [B, dim]``, ``params [B, 2 dim]`` -> ``(x [B, dim], -log f'(x) [B, dim])``."""
        return self._transform(y, params, inverse=True)


class QuaternionMobiusTransformer(ElementwiseTransformer):
    """Double Möbius maps (:func:`double_mobius_s3`) of ``K`` unit quaternions, a map of (S^3)^K.

    Inputs are the quaternions flattened, ``[B, 4K]`` (block k = quaternion k, ``(w, x, y, z)``).
    Parameters: 4 per quaternion, ``params [B, 4K]`` squashed to ``q = max_radius raw / (1 +
    |raw|)`` per block; zeros give the identity.

    The map acts on S^3 and its log-volume is w.r.t. the surface measure of S^3: it is **not**
    element-wise in the embedding coordinates. ``log_derivative`` ``[B, 4K]`` holds quaternion
    k's log-volume change in column ``4k`` and zeros in columns ``4k + 1 .. 4k + 3``, so that
    :class:`~boltzgen.flows.coupling.CouplingLayer` (which sums the columns) gets the right
    log-determinant. The map is odd in each quaternion, so with a sign-invariant conditioner
    (:class:`~boltzgen.flows.quaternions.SignInvariantConditioner`) the layer is a map of SO(3)^K.

    Shapes: ``forward(x [B, 4K], params [B, 4K]) -> (y [B, 4K], log_derivative [B, 4K])``;
    ``inverse`` likewise.
    """

    def __init__(self, n_quaternions: int, max_radius: float = DEFAULT_MAX_RADIUS):
        super().__init__()
        if isinstance(n_quaternions, bool) or int(n_quaternions) != n_quaternions or (
            int(n_quaternions) <= 0
        ):
            raise ValueError(f"n_quaternions must be a positive integer, got {n_quaternions!r}")
        if not 0.0 < max_radius < 1.0:
            raise ValueError(f"max_radius must lie in (0, 1), got {max_radius!r}")
        self.n_quaternions = int(n_quaternions)
        self.dim = 4 * self.n_quaternions
        self.n_params = 4 * self.n_quaternions
        self.max_radius = float(max_radius)

    def extra_repr(self) -> str:
        return f"n_quaternions={self.n_quaternions}, max_radius={self.max_radius}"

    def identity_parameters(self) -> torch.Tensor:
        """Zeros ``[4K]``: ``q = 0``, the identity map (a critical point: zero gradient w.r.t.
        ``q``, see the module docstring; to train, start from :meth:`near_identity_parameters`)."""
        return torch.zeros(self.n_params)

    def near_identity_parameters(
        self, radius: float = 0.1, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Raw parameters ``[4K]`` with ``|q| = radius`` per quaternion in random directions.

        The map is within ``O(radius^2)`` of the identity (log-volume at most
        ``3 log((1 + radius^2) / (1 - radius^2))``, 0.06 for 0.1) but has non-zero gradients
        w.r.t. its parameters; use as the ``output_bias`` of the conditioner.
        """
        if not 0.0 < radius < self.max_radius:
            raise ValueError(f"radius must lie in (0, {self.max_radius}), got {radius!r}")
        directions = torch.randn(self.n_quaternions, 4, generator=generator, dtype=torch.float64)
        directions = directions / torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
        raw_norm = radius / (self.max_radius - radius)  # inverts max_radius r / (1 + r)
        return (raw_norm * directions).reshape(self.n_params).to(torch.get_default_dtype())

    def _transform(self, inputs: torch.Tensor, params: torch.Tensor, inverse: bool):
        _check_transformer_inputs(self, inputs, params)
        batch = inputs.shape[0]
        points = inputs.reshape(batch, self.n_quaternions, 4)
        q = squash_to_ball(params.reshape(batch, self.n_quaternions, 4), self.max_radius)
        apply = double_mobius_s3_inverse if inverse else double_mobius_s3
        outputs, logdet = apply(points, q)  # [B, K, 4], [B, K]
        log_derivative = torch.nn.functional.pad(logdet[..., None], (0, 3))  # [B, K, 4]
        return outputs.reshape(batch, self.dim), log_derivative.reshape(batch, self.dim)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, 4K]``, ``params [B, 4K]`` -> ``(y [B, 4K], log_derivative [B, 4K])``."""
        return self._transform(x, params, inverse=False)

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y [B, 4K]``, ``params [B, 4K]`` -> ``(x [B, 4K], log_derivative [B, 4K])``."""
        return self._transform(y, params, inverse=True)
