"""OpenMM's tabulated functions as torch modules (for `expressions.compile_expression`).

`tabulated_function(f)` turns one ``openmm.TabulatedFunction`` into a ``torch.nn.Module`` whose
``forward(*args)`` evaluates it elementwise with broadcasting, with OpenMM's Reference-platform
semantics (``ReferenceTabulatedFunction.cpp``, ``SplineFitter.cpp``):

- ``Continuous1DFunction``: a cubic spline through ``n`` equally spaced points on
  ``[min, max]`` (``x_i = min + i (max - min) / (n - 1)``), natural (zero second derivative at
  the ends) or, when ``periodic``, periodic (then ``values[0]`` must equal ``values[-1]``). Outside
  ``[min, max]`` a non-periodic function is 0 with zero derivative (it jumps there unless the
  table ends at 0); a periodic one first wraps its argument into ``[min, max)``.
- ``Continuous2DFunction`` / ``Continuous3DFunction``: bicubic / tricubic Hermite patches whose
  corner derivatives (``df/dx``, ``df/dy``, ``d2f/dxdy``, ... ) come from 1D splines along each
  axis, as OpenMM's ``create2DSpline`` / ``create3DSpline``; 0 outside the box unless periodic.
- ``Discrete1DFunction`` / ``2D`` / ``3D``: ``values[round(x)]`` with C ``round`` (halves away
  from zero) and the index clamped into the table; derivative 0. 2D index ``i + j*xsize``,
  3D index ``i + (j + k*ysize)*xsize``.

Spline coefficients are computed once at build time in float64 with numpy; evaluation is a
gather plus a polynomial, vectorised over any argument shape. The coefficient tables are
buffers, so ``.to(device, dtype)`` moves them.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import UnsupportedForceError

__all__ = [
    "Continuous1D",
    "Continuous2D",
    "Continuous3D",
    "Discrete",
    "TabulatedFunction",
    "tabulated_function",
    "tabulated_functions_of",
]

#: Cubic Hermite basis in monomials: row alpha = (value at 0, slope at 0, value at 1, slope at 1),
#: column p = coefficient of t**p.
_HERMITE = np.array(
    [
        [1.0, 0.0, -3.0, 2.0],
        [0.0, 1.0, -2.0, 1.0],
        [0.0, 0.0, 3.0, -2.0],
        [0.0, 0.0, -1.0, 1.0],
    ]
)


# ----------------------------------------------------------------------------------------------
# Build time (numpy, float64)
# ----------------------------------------------------------------------------------------------


def _grid(lo: float, hi: float, n: int) -> np.ndarray:
    """The knots as OpenMM computes them: ``min + i*(max - min)/(n - 1)``."""
    return np.array([lo + i * (hi - lo) / (n - 1) for i in range(n)], dtype=np.float64)


def _second_derivative_operator(x: np.ndarray, periodic: bool) -> np.ndarray:
    """Matrix ``S`` [n, n] with ``S @ y`` the spline's second derivatives at the knots (SplineFitter)."""
    n = len(x)
    h = np.diff(x)
    if not periodic:
        if n < 2:
            raise UnsupportedForceError("a natural spline needs at least 2 points")
        a = np.zeros((n, n))
        r = np.zeros((n, n))
        a[0, 0] = a[n - 1, n - 1] = 1.0
        for i in range(1, n - 1):
            a[i, i - 1] = h[i - 1]
            a[i, i] = 2.0 * (x[i + 1] - x[i - 1])
            a[i, i + 1] = h[i]
            r[i, i + 1] += 6.0 / h[i]
            r[i, i] -= 6.0 / h[i] + 6.0 / h[i - 1]
            r[i, i - 1] += 6.0 / h[i - 1]
        return np.linalg.solve(a, r)
    if n < 3:
        raise UnsupportedForceError("a periodic spline needs at least 3 points")
    # Unknowns m_0 .. m_{n-2} (m_{n-1} = m_0); row i couples m_{i-1}, m_i, m_{i+1} cyclically.
    m = n - 1
    a = np.zeros((m, m))
    r = np.zeros((m, n))
    for i in range(m):
        h_prev = h[i - 1] if i > 0 else h[n - 2]
        h_next = h[i]
        a[i, (i - 1) % m] += h_prev
        a[i, i] += 2.0 * (h_prev + h_next)
        a[i, (i + 1) % m] += h_next
        prev = i - 1 if i > 0 else n - 2  # y[n-1] == y[0]: OpenMM uses y[n-1] - y[n-2] for i = 0
        here = i if i > 0 else n - 1
        r[i, i + 1] += 6.0 / h_next
        r[i, i] -= 6.0 / h_next
        r[i, here] -= 6.0 / h_prev
        r[i, prev] += 6.0 / h_prev
    unique = np.linalg.solve(a, r)
    return np.concatenate([unique, unique[:1]], axis=0)


def _knot_derivative_operator(x: np.ndarray, periodic: bool) -> np.ndarray:
    """Matrix ``D`` [n, n] with ``D @ y`` the spline's first derivatives at the knots.

    As ``SplineFitter::evaluateSplineDerivative`` at ``t = x_j``: the interval starting at ``x_j``,
    the last interval for the last knot.
    """
    n = len(x)
    s = _second_derivative_operator(x, periodic)
    d = np.zeros((n, n))
    for j in range(n):
        lower = min(j, n - 2)
        upper = lower + 1
        dx = x[upper] - x[lower]
        slope = np.zeros(n)
        slope[upper] += 1.0 / dx
        slope[lower] -= 1.0 / dx
        if j < n - 1:  # a = 1, b = 0
            d[j] = slope + (-2.0 * s[lower] - s[upper]) * dx / 6.0
        else:  # a = 0, b = 1
            d[j] = slope + (s[lower] + 2.0 * s[upper]) * dx / 6.0
    return d


def _check_periodic_ends(values: np.ndarray, axis: int) -> None:
    first = np.take(values, 0, axis=axis)
    last = np.take(values, -1, axis=axis)
    if np.any(np.abs(first - last) > 1e-15 + 1e-15 * np.abs(last)):
        raise UnsupportedForceError(
            "a periodic tabulated function must have equal first and last values along each axis "
            "(OpenMM refuses it too)"
        )


def _derivative_along(values: np.ndarray, x: np.ndarray, axis: int, periodic: bool) -> np.ndarray:
    """Spline derivatives at the knots along ``axis`` of a grid of values."""
    if periodic:
        _check_periodic_ends(values, axis)
    d = _knot_derivative_operator(x, periodic)
    return np.moveaxis(np.tensordot(d, np.moveaxis(values, axis, 0), axes=(1, 0)), 0, axis)


def _bicubic_coefficients(values: np.ndarray, x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """``C[i, j, p, q]`` for the patch ``[x_i, x_i+1] x [y_j, y_j+1]``; ``values[i, j] = f(x_i, y_j)``."""
    fx = _derivative_along(values, x, 0, periodic)
    fy = _derivative_along(values, y, 1, periodic)
    fxy = _derivative_along(fy, x, 0, periodic)
    hx = np.diff(x)[:, None]
    hy = np.diff(y)[None, :]
    nx, ny = len(x) - 1, len(y) - 1
    g = np.zeros((nx, ny, 4, 4))
    for alpha, (ox, dx_order) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        for beta, (oy, dy_order) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            table = (values, fy, fx, fxy)[2 * dx_order + dy_order]
            block = table[ox : ox + nx, oy : oy + ny]
            g[:, :, alpha, beta] = block * hx**dx_order * hy**dy_order
    return np.einsum("...ab,ap,bq->...pq", g, _HERMITE, _HERMITE)


def _tricubic_coefficients(
    values: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, periodic: bool
) -> np.ndarray:
    """``C[i, j, k, p, q, r]``; ``values[i, j, k] = f(x_i, y_j, z_k)``."""
    d1 = _derivative_along(values, x, 0, periodic)
    d2 = _derivative_along(values, y, 1, periodic)
    d3 = _derivative_along(values, z, 2, periodic)
    d12 = _derivative_along(d2, x, 0, periodic)
    d23 = _derivative_along(d3, y, 1, periodic)
    d13 = _derivative_along(d1, z, 2, periodic)
    d123 = _derivative_along(d23, x, 0, periodic)
    tables = {
        (0, 0, 0): values, (1, 0, 0): d1, (0, 1, 0): d2, (0, 0, 1): d3,
        (1, 1, 0): d12, (0, 1, 1): d23, (1, 0, 1): d13, (1, 1, 1): d123,
    }  # fmt: skip
    hx = np.diff(x)[:, None, None]
    hy = np.diff(y)[None, :, None]
    hz = np.diff(z)[None, None, :]
    nx, ny, nz = len(x) - 1, len(y) - 1, len(z) - 1
    g = np.zeros((nx, ny, nz, 4, 4, 4))
    slots = ((0, 0), (0, 1), (1, 0), (1, 1))  # (upper knot?, derivative order) per Hermite index
    for alpha, (ox, px) in enumerate(slots):
        for beta, (oy, py) in enumerate(slots):
            for gamma, (oz, pz) in enumerate(slots):
                table = tables[(px, py, pz)]
                block = table[ox : ox + nx, oy : oy + ny, oz : oz + nz]
                g[:, :, :, alpha, beta, gamma] = block * hx**px * hy**py * hz**pz
    return np.einsum("...abc,ap,bq,cr->...pqr", g, _HERMITE, _HERMITE, _HERMITE)


# ----------------------------------------------------------------------------------------------
# Evaluation (torch)
# ----------------------------------------------------------------------------------------------


def _wrap(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """OpenMM's ``wrap``: ``min + L*(s - floor(s))`` with ``s = (t - min)/L`` (derivative 1)."""
    length = hi - lo
    s = (t - lo) / length
    return lo + length * (s - torch.floor(s))


def _cell(knots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Index of the interval holding ``t`` as SplineFitter's binary search (last one for t = max)."""
    index = torch.searchsorted(knots, t.detach().contiguous(), right=True) - 1
    return index.clamp(0, knots.shape[0] - 2)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C ``round``: halves away from zero (``torch.round`` rounds halves to even)."""
    truncated = torch.trunc(x)
    return torch.where((x - truncated).abs() == 0.5, truncated + torch.sign(x), torch.round(x))


def _as_float(arg, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(arg, torch.Tensor) and arg.is_floating_point():
        return arg
    if like is not None:
        return torch.as_tensor(arg, dtype=like.dtype, device=like.device)
    return torch.as_tensor(arg, dtype=torch.get_default_dtype())


class TabulatedFunction(torch.nn.Module):
    """Base of the tabulated-function modules: ``forward(*args)`` -> values, broadcast together."""

    #: Number of arguments (checked by the expression parser).
    num_arguments: int = 1
    #: The OpenMM class this module reproduces.
    openmm_name: str = ""

    def _args(self, args) -> list[torch.Tensor]:
        if len(args) != self.num_arguments:
            raise TypeError(f"{self.openmm_name} takes {self.num_arguments} arguments, got {len(args)}")
        like = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
        tensors = [_as_float(a, like) for a in args]
        return list(torch.broadcast_tensors(*tensors))


class Continuous1D(TabulatedFunction):
    """``Continuous1DFunction``: natural or periodic cubic spline, 0 outside ``[min, max]`` unless periodic."""

    num_arguments = 1
    openmm_name = "Continuous1DFunction"

    def __init__(self, values, lo: float, hi: float, periodic: bool = False):
        super().__init__()
        y = np.asarray(values, dtype=np.float64)
        if not hi > lo:
            raise UnsupportedForceError(f"Continuous1DFunction needs max > min, got [{lo}, {hi}]")
        x = _grid(lo, hi, len(y))
        if periodic:
            _check_periodic_ends(y, 0)
        m = _second_derivative_operator(x, periodic) @ y
        self.lo, self.hi, self.periodic = float(lo), float(hi), bool(periodic)
        self.register_buffer("knots", torch.as_tensor(x))
        self.register_buffer("values", torch.as_tensor(y))
        self.register_buffer("second_derivatives", torch.as_tensor(m))

    def forward(self, *args) -> torch.Tensor:
        (t,) = self._args(args)
        if self.periodic:
            t = _wrap(t, self.lo, self.hi)
        knots = self.knots.to(t.dtype)
        inside = (t >= self.lo) & (t <= self.hi)
        t_safe = torch.where(inside, t, torch.full_like(t, self.lo))
        lower = _cell(knots, t_safe)
        upper = lower + 1
        x_lower, x_upper = knots[lower], knots[upper]
        dx = x_upper - x_lower
        a = (x_upper - t_safe) / dx
        b = 1.0 - a
        y, m = self.values.to(t.dtype), self.second_derivatives.to(t.dtype)
        curvature = ((a * a * a - a) * m[lower] + (b * b * b - b) * m[upper]) * (dx * dx / 6.0)
        value = a * y[lower] + b * y[upper] + curvature
        return torch.where(inside, value, torch.zeros_like(value))


class _ContinuousND(TabulatedFunction):
    """Shared evaluation of the bicubic / tricubic patches."""

    def _setup(self, axes: list[tuple[float, float, int]], coefficients: np.ndarray, periodic: bool) -> None:
        self.bounds = [(float(lo), float(hi)) for lo, hi, _ in axes]
        self.periodic = bool(periodic)
        for k, (lo, hi, n) in enumerate(axes):
            self.register_buffer(f"knots{k}", torch.as_tensor(_grid(lo, hi, n)))
        self.cells = [n - 1 for _, _, n in axes]
        d = len(axes)
        self.register_buffer("coefficients", torch.as_tensor(coefficients.reshape(-1, 4**d)))

    def forward(self, *args) -> torch.Tensor:
        args = self._args(args)
        inside = None
        local, flat = [], None
        for k, t in enumerate(args):
            lo, hi = self.bounds[k]
            if self.periodic:
                t = _wrap(t, lo, hi)
            ok = (t >= lo) & (t <= hi)
            inside = ok if inside is None else inside & ok
            t = torch.where(ok, t, torch.full_like(t, lo))
            knots = getattr(self, f"knots{k}").to(t.dtype)
            lower = _cell(knots, t)
            local.append((t - knots[lower]) / (knots[lower + 1] - knots[lower]))
            flat = lower if flat is None else flat * self.cells[k] + lower
        coefficients = self.coefficients.to(args[0].dtype)[flat]  # [..., 4**d]
        powers = []
        for u in local:
            powers.append(torch.stack([torch.ones_like(u), u, u * u, u * u * u], dim=-1))
        if len(local) == 2:
            basis = (powers[0].unsqueeze(-1) * powers[1].unsqueeze(-2)).flatten(-2)
        else:
            basis = (
                powers[0][..., :, None, None] * powers[1][..., None, :, None] * powers[2][..., None, None, :]
            ).flatten(-3)
        value = (coefficients * basis).sum(-1)
        return torch.where(inside, value, torch.zeros_like(value))


class Continuous2D(_ContinuousND):
    """``Continuous2DFunction``: bicubic spline; ``values`` in OpenMM order (``values[i + xsize*j]``)."""

    num_arguments = 2
    openmm_name = "Continuous2DFunction"

    def __init__(self, xsize: int, ysize: int, values, xmin, xmax, ymin, ymax, periodic: bool = False):
        super().__init__()
        minimum = 3 if periodic else 2
        if xsize < minimum or ysize < minimum:
            raise UnsupportedForceError(f"Continuous2DFunction needs at least {minimum} points along each axis")
        grid = np.asarray(values, dtype=np.float64).reshape(ysize, xsize).T  # grid[i, j] = f(x_i, y_j)
        x, y = _grid(xmin, xmax, xsize), _grid(ymin, ymax, ysize)
        self._setup([(xmin, xmax, xsize), (ymin, ymax, ysize)], _bicubic_coefficients(grid, x, y, periodic), periodic)


class Continuous3D(_ContinuousND):
    """``Continuous3DFunction``: tricubic spline; ``values[i + xsize*(j + ysize*k)]``."""

    num_arguments = 3
    openmm_name = "Continuous3DFunction"

    def __init__(self, xsize, ysize, zsize, values, xmin, xmax, ymin, ymax, zmin, zmax, periodic: bool = False):
        super().__init__()
        minimum = 3 if periodic else 2
        if min(xsize, ysize, zsize) < minimum:
            raise UnsupportedForceError(f"Continuous3DFunction needs at least {minimum} points along each axis")
        grid = np.asarray(values, dtype=np.float64).reshape(zsize, ysize, xsize).transpose(2, 1, 0)
        x, y, z = _grid(xmin, xmax, xsize), _grid(ymin, ymax, ysize), _grid(zmin, zmax, zsize)
        coefficients = _tricubic_coefficients(grid, x, y, z, periodic)
        self._setup([(xmin, xmax, xsize), (ymin, ymax, ysize), (zmin, zmax, zsize)], coefficients, periodic)


class Discrete(TabulatedFunction):
    """``Discrete1D/2D/3DFunction``: ``values[round(args)]``, indices clamped into the table."""

    def __init__(self, sizes: tuple[int, ...], values):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.num_arguments = len(self.sizes)
        self.openmm_name = f"Discrete{len(self.sizes)}DFunction"
        values = np.asarray(values, dtype=np.float64)
        if values.size != int(np.prod(self.sizes)) or values.size == 0:
            raise UnsupportedForceError(f"{self.openmm_name}: {values.size} values for a table of shape {self.sizes}")
        self.register_buffer("values", torch.as_tensor(values))

    def forward(self, *args) -> torch.Tensor:
        args = self._args(args)
        flat, stride = None, 1
        for t, size in zip(args, self.sizes):
            index = _round_half_away(torch.nan_to_num(t.detach())).clamp(0, size - 1).long()
            flat = index * stride if flat is None else flat + index * stride
            stride *= size
        return self.values.to(args[0].dtype)[flat]


def tabulated_function(function: openmm.TabulatedFunction) -> TabulatedFunction:
    """The torch module of one OpenMM tabulated function (any of the six kinds)."""
    if isinstance(function, openmm.Continuous1DFunction):
        values, lo, hi = function.getFunctionParameters()
        return Continuous1D(values, lo, hi, function.getPeriodic())
    if isinstance(function, openmm.Continuous2DFunction):
        xsize, ysize, values, xmin, xmax, ymin, ymax = function.getFunctionParameters()
        return Continuous2D(xsize, ysize, values, xmin, xmax, ymin, ymax, function.getPeriodic())
    if isinstance(function, openmm.Continuous3DFunction):
        xsize, ysize, zsize, values, xmin, xmax, ymin, ymax, zmin, zmax = function.getFunctionParameters()
        return Continuous3D(xsize, ysize, zsize, values, xmin, xmax, ymin, ymax, zmin, zmax, function.getPeriodic())
    if isinstance(function, openmm.Discrete1DFunction):
        values = function.getFunctionParameters()
        return Discrete((len(values),), values)
    if isinstance(function, openmm.Discrete2DFunction):
        xsize, ysize, values = function.getFunctionParameters()
        return Discrete((xsize, ysize), values)
    if isinstance(function, openmm.Discrete3DFunction):
        xsize, ysize, zsize, values = function.getFunctionParameters()
        return Discrete((xsize, ysize, zsize), values)
    raise UnsupportedForceError(f"unsupported tabulated function type {type(function).__name__}")


def tabulated_functions_of(force) -> dict[str, torch.nn.Module]:
    """Name -> module for every tabulated function of a custom OpenMM force (empty if it has none)."""
    if not hasattr(force, "getNumTabulatedFunctions"):
        return {}
    return {
        force.getTabulatedFunctionName(i): tabulated_function(force.getTabulatedFunction(i))
        for i in range(force.getNumTabulatedFunctions())
    }

