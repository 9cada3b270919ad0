"""Inverting monotone element-wise maps by bracketed root finding, with implicit gradients.

A *monotone map* here is a callable ``map_fn(x, theta) -> (f, f', f'')``: an increasing,
element-wise function of ``x`` (shape ``[*S]``) with per-element parameters ``theta``
(``[*S_b, P]``, ``S_b`` broadcastable to ``S``), returning the value and its first and second
derivatives in ``x``, each ``[*S]``. All maps of this module are evaluated on a bracket
``[lower, upper]`` (default [0, 1]) that must contain the root: ``f(lower) <= y <= f(upper)``
(a ``y`` outside converges to the nearer end).

Solvers (no gradients; they return the root only):

- :func:`multi_bin_bisection`: evaluate ``f`` on ``n_grid - 1`` interior points of the current
  bracket, keep the bin with the sign change, repeat until the bracket is narrower than ``tol``;
  the root is then interpolated linearly inside the last bin. Fixed work, no device syncs.
- :func:`safeguarded_newton`: Newton steps kept inside a shrinking bracket; a step that would
  leave the bracket is replaced by its midpoint. Quadratic convergence, at most ~50 steps.
- :func:`solve_monotone`: either one of them (``"bisection"``), or one multi-bin pass followed by
  safeguarded Newton (``"newton"``, the default: fewer evaluations at equal accuracy).

Gradients (:class:`ImplicitInverse`, :func:`invert_monotone`): for ``x = f^-1(y; theta)`` and
``l = -log f'(x; theta)``, with incoming gradients ``g_x``, ``g_l`` and ``phi = -f''/f'``, the
inverse function theorem gives

    dL/dy     = (g_x + phi g_l) / f'
    dL/dtheta = -(d_theta f) (g_x + phi g_l) / f'  -  (d_theta f') g_l / f'

(``dx/dy = 1/f'``, ``dx/dtheta = -d_theta f / f'``, ``dl/dx = phi``, ``dl/dtheta = -d_theta f'/f'``
plus the path through ``x``). The backward pass evaluates these with torch operations at a root
that is itself the differentiable output of :class:`ImplicitInverse` (re-applied to the stored
root, without solving again), so the backward is differentiable in ``y`` and ``theta`` through
every path: double (and higher) backward are exact, which force matching through the inverse
needs.

Periodic maps (circle): for a lift with ``f(x + 1) = f(x) + 1`` and ``f(0) = 0``,
``f^-1(y) = f^-1(y - floor y) + floor y`` with the reduced root in [0, 1]
(``invert_monotone(..., periodic=True)``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Union

import torch

#: ``map_fn(x [*S], theta [*S_b, P]) -> (f, f', f'')``, each ``[*S]``; increasing in ``x``.
MonotoneMap = Callable[
    [torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]
#: ``solver(map_fn, y [*S], theta [*S, P]) -> x [*S]`` (no gradients).
Solver = Callable[[MonotoneMap, torch.Tensor, torch.Tensor], torch.Tensor]
Bound = Union[float, torch.Tensor]

DEFAULT_N_GRID = 32
DEFAULT_MAX_NEWTON_STEPS = 100
METHODS = ("newton", "bisection")


def default_tolerance(dtype: torch.dtype) -> float:
    """Root tolerance in ``x``: 1e-12 in float64, 1e-6 otherwise (float32 resolves ~6e-8 at 1)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def _bracket(bound: Bound, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(bound, dtype=like.dtype, device=like.device).expand_as(like).clone()


def _value(map_fn: MonotoneMap, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return map_fn(x, theta)[0]


def _interpolate(
    lo: torch.Tensor, hi: torch.Tensor, f_lo: torch.Tensor, f_hi: torch.Tensor
) -> torch.Tensor:
    """The zero of the chord through ``(lo, f_lo)``, ``(hi, f_hi)`` (``f`` minus target), clamped
    into ``[lo, hi]``; the midpoint where the chord is flat."""
    rise = f_hi - f_lo
    flat = rise <= 0
    fraction = torch.where(flat, torch.full_like(rise, 0.5), -f_lo / torch.where(flat, 1.0, rise))
    return torch.minimum(torch.maximum(lo + fraction.clamp(0.0, 1.0) * (hi - lo), lo), hi)


def multi_bin_bisection(
    map_fn: MonotoneMap,
    y: torch.Tensor,
    theta: torch.Tensor,
    lower: Bound = 0.0,
    upper: Bound = 1.0,
    n_grid: int = DEFAULT_N_GRID,
    tol: Optional[float] = None,
    max_rounds: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shrink the bracket ``[lower, upper]`` around ``f(x) = y`` by a factor ``n_grid`` per round.

    Args:
        map_fn: increasing element-wise map (see the module docstring).
        y: targets ``[*S]``; ``theta``: parameters ``[*S, P]``.
        lower, upper: bracket ends (scalars or ``[*S]``) with ``f(lower) <= y <= f(upper)``.
        n_grid: bins per round (``n_grid - 1`` evaluations per element and round).
        tol: final bracket width (default :func:`default_tolerance`).
        max_rounds: number of rounds (default: enough to reach ``tol``).

    Returns:
        ``(lo, hi, f(lo) - y, f(hi) - y)``, each ``[*S]``: the final bracket and residuals.
    """
    if n_grid < 2:
        raise ValueError(f"n_grid must be at least 2, got {n_grid!r}")
    tol = default_tolerance(y.dtype) if tol is None else float(tol)
    lo, hi = _bracket(lower, y), _bracket(upper, y)
    f_lo = _value(map_fn, lo, theta) - y
    f_hi = _value(map_fn, hi, theta) - y
    if max_rounds is None:
        width = float((hi - lo).max()) if y.numel() else 0.0
        max_rounds = max(0, math.ceil(math.log(max(width, tol) / tol) / math.log(n_grid)))
    fractions = torch.arange(1, n_grid, dtype=y.dtype, device=y.device) / n_grid
    grid_theta = theta.unsqueeze(-2)
    for _ in range(max_rounds):
        points = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * fractions  # [*S, n_grid - 1]
        residual = _value(map_fn, points, grid_theta) - y.unsqueeze(-1)
        # f increases: the points at or below the target form a prefix of length `count`
        count = (residual <= 0).sum(-1, keepdim=True)
        below = (count - 1).clamp_min(0)
        above = count.clamp_max(n_grid - 2)
        has_below, has_above = (count > 0).squeeze(-1), (count < n_grid - 1).squeeze(-1)
        lo, f_lo = (
            torch.where(has_below, points.gather(-1, below).squeeze(-1), lo),
            torch.where(has_below, residual.gather(-1, below).squeeze(-1), f_lo),
        )
        hi, f_hi = (
            torch.where(has_above, points.gather(-1, above).squeeze(-1), hi),
            torch.where(has_above, residual.gather(-1, above).squeeze(-1), f_hi),
        )
    return lo, hi, f_lo, f_hi


def safeguarded_newton(
    map_fn: MonotoneMap,
    y: torch.Tensor,
    theta: torch.Tensor,
    lower: Bound = 0.0,
    upper: Bound = 1.0,
    start: Optional[torch.Tensor] = None,
    tol: Optional[float] = None,
    max_steps: int = DEFAULT_MAX_NEWTON_STEPS,
) -> torch.Tensor:
    """Newton's method for ``f(x) = y`` kept inside a bracket that shrinks with every evaluation.

    A Newton step that would land outside the bracket (flat regions, f' ~ 0, or a root next to
    a bracket end) is replaced by the zero of the chord through the bracket ends (regula falsi)
    on odd-numbered fallbacks of that element and by the bracket's midpoint on even-numbered
    ones, so the iteration cannot diverge, the bracket at least halves every second fallback,
    and a root next to a bracket end is found in one step. Stops when, for every element, the
    step or the bracket is at most ``tol`` or the residual is at rounding level (4 eps |y|), one
    device sync per step, or after ``max_steps``.

    Args:
        map_fn, y, theta, lower, upper: as in :func:`multi_bin_bisection`.
        start: initial guesses ``[*S]`` inside the bracket (default: its midpoint).
        tol: step tolerance (default :func:`default_tolerance`).

    Returns:
        The roots ``[*S]``.
    """
    tol = default_tolerance(y.dtype) if tol is None else float(tol)
    lo, hi = _bracket(lower, y), _bracket(upper, y)
    r_lo = _value(map_fn, lo, theta) - y
    r_hi = _value(map_fn, hi, theta) - y
    x = (lo + hi) / 2 if start is None else start.clone()
    fallbacks = torch.zeros_like(y, dtype=torch.long)
    # residuals this small are rounding noise: f is resolved, further steps would only cycle
    resolution = 4 * torch.finfo(y.dtype).eps * y.abs().clamp_min(1.0)
    for _ in range(max_steps):
        f, derivative, _ = map_fn(x, theta)
        residual = f - y
        below, above = residual <= 0, residual >= 0
        lo, r_lo = torch.where(below, x, lo), torch.where(below, residual, r_lo)
        hi, r_hi = torch.where(above, x, hi), torch.where(above, residual, r_hi)
        newton = x - residual / derivative
        outside = ~((newton >= lo) & (newton <= hi))  # also catches NaN
        fallbacks = fallbacks + outside.long()
        fallback = torch.where(
            fallbacks % 2 == 1, _interpolate(lo, hi, r_lo, r_hi), (lo + hi) / 2
        )
        proposal = torch.where(outside, fallback, newton)
        converged = (
            ((proposal - x).abs() <= tol) | (hi - lo <= tol) | (residual.abs() <= resolution)
        )
        x = proposal
        if x.numel() == 0 or bool(converged.all()):
            break
    return x


def solve_monotone(
    map_fn: MonotoneMap,
    y: torch.Tensor,
    theta: torch.Tensor,
    lower: Bound = 0.0,
    upper: Bound = 1.0,
    method: str = "newton",
    n_grid: int = DEFAULT_N_GRID,
    tol: Optional[float] = None,
    max_steps: int = DEFAULT_MAX_NEWTON_STEPS,
) -> torch.Tensor:
    """The root ``x [*S]`` of ``f(x; theta) = y`` in ``[lower, upper]`` (no gradients).

    ``method="bisection"``: :func:`multi_bin_bisection` to width ``tol``, then the chord's zero in
    the last bin. ``method="newton"``: one multi-bin round (bracket width / ``n_grid``), then
    :func:`safeguarded_newton` from the chord's zero in that bin.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    with torch.no_grad():
        y, theta = y.detach(), theta.detach()
        rounds = 1 if method == "newton" else None
        lo, hi, f_lo, f_hi = multi_bin_bisection(
            map_fn, y, theta, lower, upper, n_grid=n_grid, tol=tol, max_rounds=rounds
        )
        start = _interpolate(lo, hi, f_lo, f_hi)
        if method == "bisection":
            return start
        return safeguarded_newton(map_fn, y, theta, lo, hi, start, tol=tol, max_steps=max_steps)


def _partial_theta(
    outputs: tuple[torch.Tensor, torch.Tensor],
    grad_outputs: tuple[torch.Tensor, torch.Tensor],
    theta: torch.Tensor,
    create_graph: bool,
) -> torch.Tensor:
    """``sum_i grad_outputs_i * d outputs_i / d theta`` at fixed ``x`` (zeros where unused)."""
    (grad,) = torch.autograd.grad(
        outputs, theta, grad_outputs=grad_outputs, create_graph=create_graph, allow_unused=True
    )
    return torch.zeros_like(theta) if grad is None else grad


class ImplicitInverse(torch.autograd.Function):
    """``(y [*S], theta [*S, P]) -> (x, -log f'(x))`` with ``f(x; theta) = y``; see the module
    docstring for the gradients. ``apply(y, theta, map_fn, solver, root)``: ``solver`` finds the
    root unless ``root`` (``[*S]``, detached) is given."""

    @staticmethod
    def forward(ctx, y, theta, map_fn, solver, root):  # noqa: D102 (documented on the class)
        x = solver(map_fn, y, theta) if root is None else root.detach().clone()
        _, derivative, _ = map_fn(x, theta)
        ctx.map_fn, ctx.solver = map_fn, solver
        ctx.save_for_backward(y, theta, x)
        return x, -torch.log(derivative)

    @staticmethod
    def backward(ctx, grad_x, grad_l):  # noqa: D102
        y, theta, x = ctx.saved_tensors
        need_y, need_theta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        create_graph = torch.is_grad_enabled()
        if create_graph:  # the root as a differentiable function of (y, theta), value unchanged
            x, _ = ImplicitInverse.apply(y, theta, ctx.map_fn, ctx.solver, x.detach())
        else:
            x = x.detach()
        with torch.enable_grad():
            # an alias of theta: d/d(alias) is the partial derivative at fixed x
            alias = theta.view_as(theta) if create_graph else theta.detach()
            if need_theta and not alias.requires_grad:
                alias.requires_grad_(True)
            f, derivative, second = ctx.map_fn(x, alias)
            phi = -second / derivative
            total = grad_x + phi * grad_l
            grad_y = total / derivative if need_y else None
            grad_theta = None
            if need_theta:
                grad_theta = _partial_theta(
                    (f, derivative),
                    (-total / derivative, -grad_l / derivative),
                    alias,
                    create_graph,
                )
        if not create_graph:
            grad_y = None if grad_y is None else grad_y.detach()
            grad_theta = None if grad_theta is None else grad_theta.detach()
        return grad_y, grad_theta, None, None, None


def invert_monotone(
    map_fn: MonotoneMap,
    y: torch.Tensor,
    theta: torch.Tensor,
    periodic: bool = False,
    method: str = "newton",
    n_grid: int = DEFAULT_N_GRID,
    tol: Optional[float] = None,
    max_steps: int = DEFAULT_MAX_NEWTON_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable inverse of an increasing map of [0, 1] onto [0, 1] (or of a circle lift).

    Args:
        map_fn: ``(x, theta) -> (f, f', f'')`` with ``f(0) = 0`` and ``f(1) = 1``; for
            ``periodic`` also ``f(x + 1) = f(x) + 1``.
        y: targets ``[*S]``: in [0, 1] (interval) or any finite value (``periodic``).
        theta: parameters ``[*S, P]``.
        periodic: invert the lift: ``x = f^-1(y - floor y) + floor y``.
        method, n_grid, tol, max_steps: solver options (:func:`solve_monotone`).

    Returns:
        ``(x [*S], -log f'(x) [*S])``, differentiable to any order in ``y`` and ``theta``.
    """
    solver = partial(solve_monotone, method=method, n_grid=n_grid, tol=tol, max_steps=max_steps)
    if not periodic:
        return ImplicitInverse.apply(y, theta, map_fn, solver, None)
    turns = torch.floor(y.detach())
    x, log_derivative = ImplicitInverse.apply(y - turns, theta, map_fn, solver, None)
    return x + turns, log_derivative
