"""Smooth mixture transformers on [0, 1] and on the circle (Köhler, Krämer, Noé 2021).

Element-wise C-infinity diffeomorphisms f of [0, 1] (interval variables: bonds, angles) or of the
circle [0, 1) (torsions), usable wherever the rational-quadratic splines of
:mod:`boltzgen.flows.splines` are (same :class:`~boltzgen.flows.coupling.ElementwiseTransformer`
contract). Unlike splines (C^1, piecewise), the maps and hence the flow's log density are smooth,
so forces (derivatives of the log density) are continuous.

Building blocks (``alpha > 0`` sets how sharp the ramp is):

- ramp ``rho(s) = exp(-alpha / s)`` for ``s > 0``, else 0 (:func:`smooth_ramp`);
- smooth sigmoid ``sigma(z) = rho(z) / (rho(z) + rho(1 - z))`` (:func:`smooth_sigmoid`): exactly 0
  for ``z <= 0`` and 1 for ``z >= 1`` with all derivatives 0 at both ends. Evaluated as
  ``logistic(alpha (1/(1-z) - 1/z))``; ``sigma'`` has a single maximum (at 1/2) iff
  ``alpha >= sqrt(3)/2`` (the z^2 coefficient of ``sigma'`` around 1/2 is ``2 alpha (12 - 16
  alpha^2)``), hence ``alpha = sqrt(3)/2 + alpha_scale * logistic(raw)``.
- component k with centre ``mu`` and slope ``s`` >= 1, shifted centre ``m = mu - 1/(2 s)`` (so that
  ``sigma(s (x - m))`` is 1/2 at ``x = mu`` and ramps over ``[m, m + 1/s]``):

  interval  ``f_k(x) = [sigma(s (x - m)) - sigma(-s m)] / [sigma(s (1 - m)) - sigma(-s m)]``;
  circle    ``f_k(x) = sigma(s frac(x - m)) - sigma(s frac(-m)) + floor(x - m) - floor(-m)``
            (``frac(t) = t mod 1``; ``s >= 1``: the ramp is at most one period wide).

  Correction to the circle formula as first written (``... + floor(x - m) + [m != 0]``): that is
  ``- floor(-m)`` only for ``m`` in [0, 1); the shifted centre ``m = mu - 1/(2s)`` is negative
  whenever ``mu < 1/(2s)``, and there it gave ``f(0) = 1``. With ``- floor(-m)``, ``f(0) = 0``,
  ``f(1) = 1`` and ``f(x + 1) = f(x) + 1`` for every real ``m``.
- mixture ``f(x) = (1 - c) sum_k w_k f_k(x) + c x`` with weights ``w = softmax``, centres
  ``mu = cumsum(softmax)`` (of K + 1 logits, first K sums: all in (0, 1)) and a learned
  minimum density ``c`` in ``[min_density, 1)`` (``f' >= c``). Evaluated as
  ``x + (1 - c)(sum_k w_k f_k - x)`` with ``1 - c = (1 - min_density) logistic(-raw)``, so the
  map near the identity (``c -> 1``) keeps full relative precision.

Unnormalised parameters per variable (``4K + 2``, the same for both kinds), along the last axis:
K weight logits, K + 1 centre logits, K slope parameters (``log s = softplus(raw) >= 0``: learned
for the periodic components too), K sharpness parameters (``alpha``), 1 density parameter (``c``).
:func:`identity_smooth_parameters` gives ``1 - c = identity_gap`` (default 1e-6), evenly spaced
centres ``(k + 1/2)/K``, ``s = 2``, ``alpha = 1``: a map within ``identity_gap`` of the identity
(|f(x) - x| and |log f'(x)| below 1e-6 for K = 8), not exactly the identity, so that gradients
reach every parameter from the first step.

Inverse: bracketed root finding (:mod:`boltzgen.flows.root_finding`) with implicit gradients
(double backward supported). :class:`SmoothMixtureTransformer` chooses which direction is closed
form (``analytic="forward"``: forward = f, inverse by root finding; ``"inverse"``: the opposite).
:func:`smooth_coupling_layer` / :func:`smooth_coupling_stack` mirror
:func:`~boltzgen.flows.spline_stack.spline_coupling_layer` /
:func:`~boltzgen.flows.spline_stack.coupling_stack`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from boltzgen.flows.base import SequentialFlow
from boltzgen.flows.coupling import CouplingLayer, DimensionSet, ElementwiseTransformer, check_elementwise_inputs
from boltzgen.flows.root_finding import DEFAULT_N_GRID, METHODS, invert_monotone
from boltzgen.flows.splines import circular_flags
from boltzgen.flows.spline_stack import GOLDEN_SHIFT, coupling_stack, masked_coupling_layer

DEFAULT_N_COMPONENTS = 8
#: Smallest ramp sharpness for which every component density sigma' is unimodal.
MIN_ALPHA = math.sqrt(3.0) / 2.0
DEFAULT_ALPHA_SCALE = 10.0
#: Smallest minimum density c (f' >= c).
DEFAULT_MIN_DENSITY = 1e-6
#: 1 - c of :func:`identity_smooth_parameters`: the map is within this of the identity.
DEFAULT_IDENTITY_GAP = 1e-6
#: How far outside [0, 1] an interval input may lie (rounding) before it is an error.
DEFAULT_INTERVAL_TOLERANCE = 1e-4
#: rho(s) is exactly 0 for s <= alpha / RAMP_CUTOFF: exp(-800) underflows to 0 even in float64.
RAMP_CUTOFF = 800.0
#: The ramp's argument is clamped to s >= 1e-8 in any case.
MIN_RAMP_ARGUMENT = 1e-8
#: Packed constrained parameters per component: w, m, s, alpha, scale, lower, turns.
_PACKED_PER_COMPONENT = 7
ANALYTIC_DIRECTIONS = ("forward", "inverse")

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# --- ramp and smooth sigmoid ------------------------------------------------------------------


def _ramp_cut(alpha: torch.Tensor) -> torch.Tensor:
    return (alpha / RAMP_CUTOFF).clamp_min(MIN_RAMP_ARGUMENT)


def smooth_ramp(s: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """``rho(s) = exp(-alpha / s)`` for ``s > 0``, else 0 (element-wise, broadcasting).

    Values below ``alpha / 800`` (or 1e-8) are returned as exactly 0 (they underflow anyway).
    """
    alpha = torch.as_tensor(alpha, dtype=s.dtype, device=s.device)
    inside = s > _ramp_cut(alpha)
    safe = torch.where(inside, s, torch.ones_like(s))
    return torch.where(inside, torch.exp(-alpha / safe), torch.zeros_like(safe))


def smooth_sigmoid_derivatives(z: torch.Tensor, alpha: Union[float, torch.Tensor]) -> Triple:
    """``(sigma(z), sigma'(z), sigma''(z))`` of the smooth sigmoid, element-wise, broadcasting.

    ``sigma = logistic(h)`` with ``h = alpha (1/(1-z) - 1/z)`` on (0, 1); so ``sigma' = q h'`` and
    ``sigma'' = q ((1 - 2 sigma) h'^2 + h'')`` with ``q = sigma (1 - sigma)``. Outside the open
    ramp (to within ``alpha / 800``, where the exact values underflow) sigma is 0 or 1 and the
    derivatives are 0; the formulas are evaluated at a safe point there, so autograd through
    them stays finite.
    """
    alpha = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    cut = _ramp_cut(alpha)
    inside = (z > cut) & (1.0 - z > cut)
    u = torch.where(inside, z, 0.5)
    inv_u, inv_v = 1.0 / u, 1.0 / (1.0 - u)
    h = alpha * (inv_v - inv_u)
    sigma_inside = torch.sigmoid(h)
    q = sigma_inside * torch.sigmoid(-h)
    dh = alpha * (inv_u * inv_u + inv_v * inv_v)
    d2h = 2.0 * alpha * (inv_v * inv_v * inv_v - inv_u * inv_u * inv_u)
    first = q * dh
    second = q * (-torch.tanh(h / 2) * dh * dh + d2h)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    sigma = torch.where(inside, sigma_inside, (z >= 0.5).to(z.dtype))
    return sigma, torch.where(inside, first, zero), torch.where(inside, second, zero)


def smooth_sigmoid(z: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    """``sigma(z) = rho(z) / (rho(z) + rho(1 - z))``: 0 for z <= 0, 1 for z >= 1, C-infinity."""
    return smooth_sigmoid_derivatives(z, alpha)[0]


# --- components -------------------------------------------------------------------------------


def _component_constants(
    mu: torch.Tensor, slope: torch.Tensor, alpha: torch.Tensor, circular: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m, scale, lower, turns)`` of components (all ``[..., K]``): shifted centre
    ``m = mu - 1/(2s)``; ``f_k = scale (sigma(z) - lower) + [circle] (floor(x - m) - turns)``."""
    shifted = mu - 0.5 / slope
    if circular:
        lower = smooth_sigmoid(torch.remainder(-shifted, 1.0) * slope, alpha)
        return shifted, torch.ones_like(lower), lower, torch.floor(-shifted).detach()
    lower = smooth_sigmoid(-slope * shifted, alpha)
    upper = smooth_sigmoid(slope * (1.0 - shifted), alpha)
    return shifted, 1.0 / (upper - lower), lower, torch.zeros_like(lower)


def _component_values(
    x: torch.Tensor,
    shifted: torch.Tensor,
    slope: torch.Tensor,
    alpha: torch.Tensor,
    scale: torch.Tensor,
    lower: torch.Tensor,
    turns: torch.Tensor,
    circular: bool,
) -> Triple:
    """``(f_k, f_k', f_k'')`` ``[..., K]`` at ``x [..., 1]`` (constants ``[..., K]``)."""
    offset = x - shifted
    z = (torch.remainder(offset, 1.0) if circular else offset) * slope
    sigma, first, second = smooth_sigmoid_derivatives(z, alpha)
    value = scale * (sigma - lower)
    if circular:
        value = value + (torch.floor(offset.detach()) - turns)
    rate = scale * slope
    return value, rate * first, rate * slope * second


def smooth_component(
    x: torch.Tensor,
    mu: Union[float, torch.Tensor],
    slope: Union[float, torch.Tensor],
    alpha: Union[float, torch.Tensor],
    circular: bool,
) -> Triple:
    """One component ``(f_k(x), f_k'(x), f_k''(x))`` with centre ``mu`` and slope ``s``.

    Args:
        x: inputs ``[...]`` (interval: in [0, 1]; circle: the lift, any real value).
        mu: centre in (0, 1) (``f_k`` is steepest there); ``slope``: s > 0 (>= 1 for the circle);
            ``alpha``: ramp sharpness (all broadcastable to ``x``).
        circular: the circle version (``f(x + 1) = f(x) + 1``) instead of the interval one.
    """
    def tensor(value):
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)

    mu, slope, alpha = tensor(mu), tensor(slope), tensor(alpha)
    constants = _component_constants(mu, slope, alpha, circular)
    return _component_values(x, constants[0], slope, alpha, *constants[1:], circular=circular)


# --- the mixture --------------------------------------------------------------------------------


def n_smooth_parameters(n_components: int) -> int:
    """Unnormalised parameters per variable: ``4K + 2`` (interval and circle alike)."""
    return 4 * n_components + 2


def n_packed_parameters(n_components: int) -> int:
    """Constrained (packed) parameters per variable: ``7K + 1`` (see :func:`pack_parameters`)."""
    return _PACKED_PER_COMPONENT * n_components + 1


def _components_from_parameter_count(n_params: int) -> int:
    n_components, remainder = divmod(int(n_params) - 2, 4)  # int(): shapes are tensors under tracing
    if remainder != 0 or n_components < 1:
        raise ValueError(
            f"a smooth mixture needs 4K + 2 parameters per variable for K >= 1, got {n_params}"
        )
    return n_components


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def identity_smooth_parameters(
    n_components: int = DEFAULT_N_COMPONENTS,
    identity_gap: float = DEFAULT_IDENTITY_GAP,
    min_density: float = DEFAULT_MIN_DENSITY,
    alpha_scale: float = DEFAULT_ALPHA_SCALE,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Parameters ``[4K + 2]`` of a map within ``identity_gap`` of the identity.

    ``1 - c = identity_gap`` (so ``|f(x) - x| <= identity_gap max|sum_k w_k f_k - x|``), uniform
    weights, centres ``(k + 1/2) / K``, slopes ``s = 2`` (``softplus(0) = log 2``), ``alpha = 1``.
    """
    if not 0.0 < identity_gap < 1.0 - min_density:
        raise ValueError(f"identity_gap must lie in (0, 1 - min_density), got {identity_gap!r}")
    k = n_components
    params = torch.zeros(n_smooth_parameters(k), dtype=dtype)
    params[k] = params[2 * k] = -math.log(2.0)  # centre increments 1/(2K), 1/K, ..., 1/(2K)
    params[3 * k + 1 : 4 * k + 1] = _logit((1.0 - MIN_ALPHA) / alpha_scale)
    params[4 * k + 1] = -_logit(identity_gap / (1.0 - min_density))
    return params


def pack_parameters(
    params: torch.Tensor,
    circular: bool,
    min_density: float = DEFAULT_MIN_DENSITY,
    alpha_scale: float = DEFAULT_ALPHA_SCALE,
) -> torch.Tensor:
    """Unnormalised ``[..., 4K + 2]`` -> constrained, packed ``[..., 7K + 1]``.

    Packed layout (K entries each): weights w, shifted centres m, slopes s, sharpness alpha, and
    the component constants scale, lower, turns (:func:`smooth_component`), then ``1 - c``.
    Differentiable in ``params`` (``turns`` is piecewise constant).
    """
    k = _components_from_parameter_count(params.shape[-1])
    weights = torch.softmax(params[..., :k], dim=-1)
    mu = torch.cumsum(torch.softmax(params[..., k : 2 * k + 1], dim=-1), dim=-1)[..., :k]
    slope = torch.exp(F.softplus(params[..., 2 * k + 1 : 3 * k + 1]))
    alpha = MIN_ALPHA + alpha_scale * torch.sigmoid(params[..., 3 * k + 1 : 4 * k + 1])
    gap = (1.0 - min_density) * torch.sigmoid(-params[..., 4 * k + 1 :])
    constants = _component_constants(mu, slope, alpha, circular)
    return torch.cat([weights, constants[0], slope, alpha, *constants[1:], gap], dim=-1)


def mixture_map(x: torch.Tensor, theta: torch.Tensor, circular: bool) -> Triple:
    """The mixture ``(f(x), f'(x), f''(x))``, each ``[*S]``: a ``MonotoneMap``.

    Args:
        x: inputs ``[*S]`` (interval: [0, 1]; circle: the lift, any real value).
        theta: packed parameters ``[*S_b, 7K + 1]`` (:func:`pack_parameters`), ``S_b``
            broadcastable to ``S``.
        circular: circle components (``f(x + 1) = f(x) + 1``) or interval ones.
    """
    k = (theta.shape[-1] - 1) // _PACKED_PER_COMPONENT
    weights, shifted, slope, alpha, scale, lower, turns = theta[..., :-1].split(k, dim=-1)
    gap = theta[..., -1]
    values = _component_values(
        x.unsqueeze(-1), shifted, slope, alpha, scale, lower, turns, circular
    )
    mixture, mixture_first, mixture_second = ((weights * v).sum(-1) for v in values)
    value = x + gap * (mixture - x)
    first = 1.0 + gap * (mixture_first - 1.0)
    return value, first, gap * mixture_second


# --- element-wise transforms like interval_spline / circular_spline ------------------------------


def _check_inputs(
    x: torch.Tensor, params: torch.Tensor, circular: bool, tolerance: float
) -> None:
    """Shape checks, the parameter count, and one combined value check (a single device sync)."""
    check_elementwise_inputs(x, params, circular, tolerance, name="smooth mixture")
    _components_from_parameter_count(params.shape[-1])


def smooth_mixture(
    x: torch.Tensor,
    params: torch.Tensor,
    circular: bool,
    inverse: bool = False,
    min_density: float = DEFAULT_MIN_DENSITY,
    alpha_scale: float = DEFAULT_ALPHA_SCALE,
    method: str = "newton",
    n_grid: int = DEFAULT_N_GRID,
    tol: Optional[float] = None,
    tolerance: float = DEFAULT_INTERVAL_TOLERANCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smooth mixture f (closed form) or f^-1 (root finding), element-wise.

    Args:
        x: inputs ``[B, D]``: interval in [0, 1] (within ``tolerance``; clamped), circle any
            finite value (taken modulo 1).
        params: unnormalised parameters ``[B, D, 4K + 2]`` (module docstring).
        circular: circle maps (outputs in [0, 1)) or interval maps (outputs in [0, 1]).
        inverse: apply f^-1 (root finding, implicit gradients) instead of f.
        min_density, alpha_scale: parameter constraints (module docstring).
        method, n_grid, tol: root finding (:func:`boltzgen.flows.root_finding.solve_monotone`).

    Returns:
        ``(y [B, D], log_derivative [B, D])``: ``log f'(x)``, or ``-log f'(f^-1(x))`` inverse.
    """
    _check_inputs(x, params, circular, tolerance)
    theta = pack_parameters(params, circular, min_density, alpha_scale)
    map_fn = partial(mixture_map, circular=circular)
    if not circular:
        x = x.clamp(0.0, 1.0)
    if inverse:
        y, log_derivative = invert_monotone(
            map_fn, x, theta, periodic=circular, method=method, n_grid=n_grid, tol=tol
        )
    else:
        y, first, _ = map_fn(torch.remainder(x, 1.0) if circular else x, theta)
        log_derivative = torch.log(first)
    y = torch.remainder(y, 1.0) if circular else y.clamp(0.0, 1.0)
    return y, log_derivative


def interval_smooth_mixture(
    x: torch.Tensor, params: torch.Tensor, inverse: bool = False, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smooth_mixture` on [0, 1] (``x [B, D]``, ``params [B, D, 4K + 2]``)."""
    return smooth_mixture(x, params, circular=False, inverse=inverse, **options)


def circular_smooth_mixture(
    x: torch.Tensor, params: torch.Tensor, inverse: bool = False, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smooth_mixture` on the circle [0, 1) (``x [B, D]``, ``params [B, D, 4K + 2]``)."""
    return smooth_mixture(x, params, circular=True, inverse=inverse, **options)


# --- the transformer ----------------------------------------------------------------------------


class SmoothMixtureTransformer(ElementwiseTransformer):
    """Element-wise smooth mixtures on [0, 1], circular or interval per variable.

    Args:
        circular: ``[dim]`` flags, True for circle variables (represented in [0, 1)).
        n_components: mixture components K.
        analytic: ``"forward"``: :meth:`forward` is the closed-form f and :meth:`inverse` finds
            roots; ``"inverse"``: :meth:`forward` is f^-1 (root finding), :meth:`inverse` is f.
        min_density: smallest c (the map's derivative is at least c).
        alpha_scale: ``alpha = sqrt(3)/2 + alpha_scale * logistic(raw)``.
        identity_gap: ``1 - c`` of :meth:`identity_parameters`.
        method, n_grid, tol: root finding (``"newton"`` or ``"bisection"``, bins per multi-bin
            round, tolerance in x; see :mod:`boltzgen.flows.root_finding`).
        tolerance: how far outside [0, 1] interval inputs may lie before it is an error.

    Parameters per sample (``n_params``): the interval variables' ``[n_interval, 4K + 2]`` block,
    flattened, followed by the circle variables' ``[n_circular, 4K + 2]`` block; each block in
    increasing variable index (the layout of
    :class:`~boltzgen.flows.splines.RationalQuadraticSpline`).
    """

    def __init__(
        self,
        circular: Union[Sequence[bool], torch.Tensor],
        n_components: int = DEFAULT_N_COMPONENTS,
        analytic: str = "forward",
        min_density: float = DEFAULT_MIN_DENSITY,
        alpha_scale: float = DEFAULT_ALPHA_SCALE,
        identity_gap: float = DEFAULT_IDENTITY_GAP,
        method: str = "newton",
        n_grid: int = DEFAULT_N_GRID,
        tol: Optional[float] = None,
        tolerance: float = DEFAULT_INTERVAL_TOLERANCE,
    ):
        super().__init__()
        flags = circular_flags(circular)
        if isinstance(n_components, bool) or int(n_components) != n_components or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        if analytic not in ANALYTIC_DIRECTIONS:
            raise ValueError(f"analytic must be one of {ANALYTIC_DIRECTIONS}, got {analytic!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not 0.0 < min_density < 1.0:
            raise ValueError(f"min_density must lie in (0, 1), got {min_density!r}")
        if not alpha_scale > 0:
            raise ValueError(f"alpha_scale must be positive, got {alpha_scale!r}")
        self.dim = int(flags.numel())
        self.n_components = int(n_components)
        self.analytic = analytic
        self.identity_gap = float(identity_gap)
        self.options = dict(
            min_density=float(min_density),
            alpha_scale=float(alpha_scale),
            method=method,
            n_grid=int(n_grid),
            tol=tol,
        )
        self.tolerance = float(tolerance)
        identity_smooth_parameters(self.n_components, identity_gap, min_density, alpha_scale)
        self.register_buffer("circular_dims", torch.nonzero(flags).flatten())
        self.register_buffer("interval_dims", torch.nonzero(~flags).flatten())
        per_variable = n_smooth_parameters(self.n_components)
        self.n_interval_params = self.interval_dims.numel() * per_variable
        self.n_params = self.dim * per_variable

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, circular={self.circular_dims.numel()}, "
            f"n_components={self.n_components}, analytic={self.analytic}, "
            f"n_params={self.n_params}"
        )

    def identity_parameters(self) -> torch.Tensor:
        """Parameters ``[n_params]`` of a map within ``identity_gap`` of the identity."""
        single = identity_smooth_parameters(
            self.n_components,
            self.identity_gap,
            self.options["min_density"],
            self.options["alpha_scale"],
        )
        return single.repeat(self.dim)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, dim]``, ``params [B, n_params]`` -> ``(y [B, dim], log |dy/dx| [B, dim])``."""
        return self._transform(x, params, root_finding=self.analytic == "inverse")

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y [B, dim]``, ``params [B, n_params]`` -> ``(x [B, dim], log |dx/dy| [B, dim])``."""
        return self._transform(y, params, root_finding=self.analytic == "forward")

    def _transform(self, inputs: torch.Tensor, params: torch.Tensor, root_finding: bool):
        self.check_shapes(inputs, params)
        batch, per_variable = inputs.shape[0], n_smooth_parameters(self.n_components)
        outputs = torch.zeros_like(inputs)
        log_derivative = torch.zeros_like(inputs)
        blocks = [
            (self.interval_dims, params[:, : self.n_interval_params], False),
            (self.circular_dims, params[:, self.n_interval_params :], True),
        ]
        for dims, block, circular in blocks:
            if dims.numel() == 0:
                continue
            out, ld = smooth_mixture(
                inputs[:, dims],
                block.reshape(batch, dims.numel(), per_variable),
                circular=circular,
                inverse=root_finding,
                tolerance=self.tolerance,
                **self.options,
            )
            outputs = outputs.index_copy(1, dims, out)
            log_derivative = log_derivative.index_copy(1, dims, ld)
        return outputs, log_derivative


# --- coupling layers and stacks -----------------------------------------------------------------


class Sine(torch.nn.Module):
    """``sin(x)`` activation (a smooth, periodic alternative to SiLU for conditioners)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def smooth_coupling_layer(
    dim: int,
    transformed: DimensionSet,
    circular_mask: Union[Sequence[bool], torch.Tensor],
    hidden: Sequence[int] = (64, 64),
    n_components: int = DEFAULT_N_COMPONENTS,
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    conditioning: Optional[DimensionSet] = None,
    **transformer_options,
) -> CouplingLayer:
    """A coupling layer with smooth mixtures (circular where ``circular_mask``) and an MLP.

    Mirrors :func:`~boltzgen.flows.spline_stack.spline_coupling_layer` (``n_components`` in place
    of ``n_bins``); ``transformer_options`` go to :class:`SmoothMixtureTransformer` (``analytic``,
    ``min_density``, ``alpha_scale``, ``identity_gap``, ``method``, ``n_grid``, ``tol``).

    Returns:
        A :class:`CouplingLayer` within ``identity_gap`` (1e-6) of the identity at initialisation.
    """
    def make_transformer(circular_flags: torch.Tensor) -> SmoothMixtureTransformer:
        return SmoothMixtureTransformer(circular_flags, n_components=n_components, **transformer_options)

    return masked_coupling_layer(dim, transformed, circular_mask, make_transformer, hidden, context_dim,
                                 activation, conditioning)


def smooth_coupling_stack(
    dim: int,
    circular_mask: Union[Sequence[bool], torch.Tensor],
    n_layers: int,
    hidden: Sequence[int] = (64, 64),
    n_components: int = DEFAULT_N_COMPONENTS,
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    shift: float = GOLDEN_SHIFT,
    seed: int = 0,
    **transformer_options,
) -> SequentialFlow:
    """``n_layers`` smooth coupling layers on [0, 1]^D with circular shifts between them.

    Same masks, shifts and arguments as :func:`~boltzgen.flows.spline_stack.coupling_stack`
    (``n_components`` in place of ``n_bins``; ``transformer_options`` as in
    :func:`smooth_coupling_layer`). Within ``n_layers * identity_gap`` of the identity at
    initialisation.

    Returns:
        ``SequentialFlow``: ``forward(x [B, D], context) -> (y [B, D], logdet [B])``.
    """
    return coupling_stack(
        dim, circular_mask, n_layers, hidden=hidden, context_dim=context_dim, activation=activation,
        shift=shift, seed=seed, layer_factory=smooth_coupling_layer, n_components=n_components,
        **transformer_options,
    )
