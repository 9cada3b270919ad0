"""Exact reference values for the toy energies by deterministic quadrature (numpy/scipy, float64).

All results are for the unnormalised density exp(-u) with u in kT: ``log_z = log ∫ exp(-u) dx``
and state free energies ``F_S = -log ∫_S exp(-u) dx`` (so populations are ``exp(log_z - F_S)``).

Double well (:class:`~boltzgen.energy.toy.DoubleWellEnergy`): the x2 factor is a standard Gaussian
(∫ exp(-x2^2/2) = sqrt(2 pi), exact); the x1 factor is integrated by ``scipy.integrate.quad`` over
(-inf, inf) with breakpoints at the stationary points of the quartic, to relative tolerance 1e-12.

Müller-Brown (:class:`~boltzgen.energy.toy.MullerBrownEnergy`): states A, B, C are the Voronoi
cells (nearest-minimum regions, Euclidean distance in (x, y)) of the three minima, which are located
by ``scipy.optimize.minimize`` from the textbook starting points. Each cell, clipped to the
integration box, is a convex polygon; it is integrated by composite Gauss-Legendre quadrature in x
(with breakpoints at the polygon's vertices) and, for each x node, in y between the polygon's lower
and upper edges. The integrand is analytic on each piece, so the rule converges exponentially:
at scale 0.05, halving the panel width and raising the order (0.1/10 -> 0.05/16) changes log Z and
the state free energies by < 1e-14, and a plain 0.004-spaced grid sum over the box agrees to 1e-15.
The default box x in [-4, 3], y in [-3, 5] lies at least 135.7 kT above the deepest minimum on its
whole edge (scale 0.05: exp(-135) ~ 1e-59), and u grows double-exponentially beyond it (the fourth
term's positive-definite quadratic form); enlarging the box by 1 on every side changes nothing at
1e-14. Results at scale 0.05: log Z = 5.366133, F_A = -5.147882, F_B = -3.235643, F_C = -2.806039 kT
(populations 0.80392, 0.11878, 0.07730).
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
from scipy import integrate, optimize, special

from boltzgen.energy.toy import MULLER_BROWN_DEFAULT_SCALE, DoubleWellEnergy, MullerBrownEnergy

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# ----------------------------------------------------------------------------- double well


@functools.lru_cache(maxsize=1)
def _double_well_x1_stationary_points() -> tuple[float, ...]:
    """The three real roots of d/dx1 (x1^4 - 6 x1^2 - 0.5 x1) = 4 x1^3 - 12 x1 - 0.5, sorted."""
    roots = np.roots([4.0, 0.0, -12.0, -0.5])
    return tuple(sorted(float(r.real) for r in roots))


def _double_well_x1_reference_energy() -> float:
    """The global minimum of the x1 part (-9.8712), subtracted inside integrals to avoid overflow."""
    return min(DoubleWellEnergy.x1_energy(s) for s in _double_well_x1_stationary_points())


def _log_x1_integral(lower: float, upper: float) -> float:
    """``log ∫_lower^upper exp(-(x1^4 - 6 x1^2 - 0.5 x1)) dx1``; the limits may be infinite."""
    if not upper > lower:
        return -math.inf
    shift = _double_well_x1_reference_energy()

    def integrand(x1: float) -> float:
        return math.exp(-(DoubleWellEnergy.x1_energy(x1) - shift))

    inner = [s for s in _double_well_x1_stationary_points() if lower < s < upper]
    points = [lower, *inner, upper]
    total = 0.0
    for a, b in zip(points[:-1], points[1:]):
        value, _ = integrate.quad(integrand, a, b, epsabs=0.0, epsrel=1e-12, limit=200)
        total += value
    if total <= 0.0:
        return -math.inf
    return math.log(total) - shift


def double_well_references() -> dict:
    """Exact references for :class:`~boltzgen.energy.toy.DoubleWellEnergy` (states A: x1 < 0, B: x1 > 0).

    Returns a dict with ``log_z`` (10.29348), ``p_x1_positive`` (0.84431), ``f_A_kT``, ``f_B_kT``
    (``-log Z_S``), ``delta_f_kT`` (``F_B - F_A``), ``minima`` (``{"A": [x1, x2], "B": ...}``) and
    ``state_definitions``.
    """
    log_z_a = _log_x1_integral(-math.inf, 0.0) + _LOG_SQRT_2PI
    log_z_b = _log_x1_integral(0.0, math.inf) + _LOG_SQRT_2PI
    log_z = float(np.logaddexp(log_z_a, log_z_b))
    left, _, right = _double_well_x1_stationary_points()
    return {
        "log_z": log_z,
        "p_x1_positive": math.exp(log_z_b - log_z),
        "f_A_kT": -log_z_a,
        "f_B_kT": -log_z_b,
        "delta_f_kT": log_z_a - log_z_b,
        "minima": {"A": [left, 0.0], "B": [right, 0.0]},
        "state_definitions": {"A": "x1 < 0", "B": "x1 > 0"},
    }


def double_well_free_energy_profile(bin_edges) -> np.ndarray:
    """Exact free-energy profile along x1: ``-log P(edges[i] <= x1 < edges[i+1])``, in kT.

    Args:
        bin_edges: strictly increasing 1-D array of ``n_bins + 1`` edges (the outer two may be
            infinite). Probabilities are normalised over the whole plane, so they sum to the mass
            inside ``[edges[0], edges[-1]]`` (1 for edges reaching -inf and inf).

    Returns:
        ``[n_bins]`` float64 array of ``-log p_bin`` (``inf`` where the probability underflows).
    """
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"bin_edges must be a 1-D array of at least 2 edges, got shape {list(edges.shape)}")
    if np.isnan(edges).any() or not np.all(np.diff(edges) > 0):
        raise ValueError("bin_edges must be strictly increasing and free of NaN")
    log_total = _log_x1_integral(-math.inf, math.inf)
    log_bins = np.array([_log_x1_integral(a, b) for a, b in zip(edges[:-1], edges[1:])])
    return log_total - log_bins


# ----------------------------------------------------------------------------- Müller-Brown

#: Textbook locations of the three Müller-Brown minima, used as optimiser starting points.
MULLER_BROWN_START_POINTS = {"A": (-0.558, 1.442), "B": (0.623, 0.028), "C": (-0.050, 0.467)}

#: Integration box ``(x_min, x_max, y_min, y_max)``; see the module docstring for why it suffices.
MULLER_BROWN_BOX = (-4.0, 3.0, -3.0, 5.0)

#: Smallest allowed excess energy (kT above the deepest minimum) anywhere on the box's edge.
MIN_BOX_EDGE_EXCESS_KT = 40.0


def _energy_numpy(energy: MullerBrownEnergy, points: np.ndarray) -> np.ndarray:
    """``u`` in float64 for ``points`` of shape ``[M, 2]``."""
    with torch.no_grad():
        return energy.energy(torch.as_tensor(points, dtype=torch.float64)).numpy()


def muller_brown_minima(energy: MullerBrownEnergy) -> dict[str, np.ndarray]:
    """The minima A, B, C of ``energy`` as ``{name: [2] array}``, by BFGS from the textbook points."""

    def value_and_gradient(p: np.ndarray) -> tuple[float, np.ndarray]:
        u, f = energy.energy_and_force(torch.as_tensor(p[None], dtype=torch.float64))
        return float(u[0]), -f[0].detach().numpy()

    minima = {}
    for name, start in MULLER_BROWN_START_POINTS.items():
        result = optimize.minimize(
            value_and_gradient, np.array(start), jac=True, method="BFGS", options={"gtol": 1e-10}
        )
        _, gradient = value_and_gradient(result.x)
        if np.abs(gradient).max() > 1e-6:
            raise RuntimeError(f"Müller-Brown minimum {name} did not converge: {result.message}")
        minima[name] = result.x
    return minima


def _box_halfplanes(box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Half-planes ``n . p <= d`` of the box (x_min, x_max, y_min, y_max): normals [4, 2], offsets [4]."""
    x_min, x_max, y_min, y_max = box
    if not (x_min < x_max and y_min < y_max):
        raise ValueError(f"box must be (x_min, x_max, y_min, y_max) with min < max, got {box!r}")
    normals = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    return normals, np.array([-x_min, x_max, -y_min, y_max])


def voronoi_cell_halfplanes(sites: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-planes ``n . p <= d`` of the points at least as close to ``sites[index]`` as to any other site.

    Args:
        sites: ``[S, 2]`` array of distinct points.
        index: which site's cell.

    Returns:
        normals ``[S - 1, 2]`` and offsets ``[S - 1]``: ``2 (s_j - s_i) . p <= |s_j|^2 - |s_i|^2``.
    """
    sites = np.asarray(sites, dtype=np.float64)
    own = sites[index]
    others = np.delete(sites, index, axis=0)
    return 2.0 * (others - own), (others**2).sum(axis=1) - (own**2).sum()


def _polygon_vertices(normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Vertices ``[V, 2]`` of the convex polygon ``{p: normals @ p <= offsets}`` (pairwise line intersections)."""
    vertices = []
    tolerance = 1e-10 * (1.0 + np.abs(offsets).max())
    for i in range(len(normals)):
        for j in range(i + 1, len(normals)):
            matrix = np.stack([normals[i], normals[j]])
            if abs(np.linalg.det(matrix)) < 1e-14:
                continue
            point = np.linalg.solve(matrix, np.array([offsets[i], offsets[j]]))
            if np.all(normals @ point <= offsets + tolerance):
                vertices.append(point)
    return np.array(vertices).reshape(-1, 2)


def _composite_gauss_legendre(lower: float, upper: float, n_panels: int, order: int):
    """Nodes and weights ``[n_panels * order]`` of the composite Gauss-Legendre rule on [lower, upper]."""
    nodes, weights = np.polynomial.legendre.leggauss(order)
    panel_edges = np.linspace(lower, upper, n_panels + 1)
    half = 0.5 * np.diff(panel_edges)
    middle = 0.5 * (panel_edges[:-1] + panel_edges[1:])
    return (middle[:, None] + half[:, None] * nodes).ravel(), (half[:, None] * weights).ravel()


def log_integral_over_convex_polygon(
    log_integrand,
    normals: np.ndarray,
    offsets: np.ndarray,
    panel_width: float = 0.1,
    order: int = 10,
) -> float:
    """``log ∫_P exp(log_integrand(p)) dp`` over the bounded convex polygon ``P = {p: normals @ p <= offsets}``.

    Composite Gauss-Legendre in x between consecutive vertex abscissae (where the polygon's lower
    and upper edges are linear), and for each x node composite Gauss-Legendre in y between them.

    Args:
        log_integrand: maps ``[M, 2]`` float64 points to ``[M]`` log-integrand values.
        normals, offsets: ``[K, 2]`` and ``[K]`` half-planes; the polygon must be bounded.
        panel_width: largest panel length in each direction.
        order: Gauss-Legendre nodes per panel.

    Returns:
        The log integral (``-inf`` for an empty or degenerate polygon).
    """
    normals = np.asarray(normals, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    vertices = _polygon_vertices(normals, offsets)
    if len(vertices) < 3:
        return -math.inf
    breaks = np.unique(np.round(vertices[:, 0], 12))
    upper_edges = normals[:, 1] > 1e-14
    lower_edges = normals[:, 1] < -1e-14
    if not (upper_edges.any() and lower_edges.any()):
        raise ValueError("the polygon must be bounded in y (give it both lower and upper edges)")
    log_pieces = []
    for x_lo, x_hi in zip(breaks[:-1], breaks[1:]):
        n_x_panels = max(1, math.ceil((x_hi - x_lo) / panel_width))
        xs, wx = _composite_gauss_legendre(x_lo, x_hi, n_x_panels, order)
        y_bound = (offsets[None, :] - xs[:, None] * normals[None, :, 0]) / np.where(
            normals[:, 1] == 0.0, 1.0, normals[:, 1]
        )
        y_lo = y_bound[:, lower_edges].max(axis=1)
        y_hi = y_bound[:, upper_edges].min(axis=1)
        heights = np.clip(y_hi - y_lo, 0.0, None)
        if heights.max() <= 0.0:
            continue
        n_y_panels = max(1, math.ceil(heights.max() / panel_width))
        s, ws = _composite_gauss_legendre(0.0, 1.0, n_y_panels, order)
        ys = y_lo[:, None] + heights[:, None] * s[None, :]
        points = np.stack([np.broadcast_to(xs[:, None], ys.shape), ys], axis=-1).reshape(-1, 2)
        with np.errstate(divide="ignore"):
            log_weights = np.log(wx[:, None] * heights[:, None] * ws[None, :]).ravel()
        log_pieces.append(special.logsumexp(log_weights + log_integrand(points)))
    if not log_pieces:
        return -math.inf
    return float(special.logsumexp(log_pieces))


def _min_excess_on_box_edge(energy: MullerBrownEnergy, box, u_min: float, n: int = 4001) -> float:
    """Smallest ``u - u_min`` (kT) on the box's edge, sampled at ``n`` points per side."""
    x_min, x_max, y_min, y_max = box
    xs, ys = np.linspace(x_min, x_max, n), np.linspace(y_min, y_max, n)
    edge = np.concatenate(
        [
            np.stack([xs, np.full(n, y_min)], 1),
            np.stack([xs, np.full(n, y_max)], 1),
            np.stack([np.full(n, x_min), ys], 1),
            np.stack([np.full(n, x_max), ys], 1),
        ]
    )
    return float(_energy_numpy(energy, edge).min() - u_min)


def muller_brown_references(
    scale: float = MULLER_BROWN_DEFAULT_SCALE,
    box: tuple[float, float, float, float] = MULLER_BROWN_BOX,
    panel_width: float = 0.1,
    order: int = 10,
) -> dict:
    """Exact references for ``MullerBrownEnergy(scale)``: log Z and the free energies of states A, B, C.

    States are the Voronoi cells of the minima A (deepest, upper left), B (lower right) and C (the
    shallow intermediate). Raises ValueError when the box edge comes within
    :data:`MIN_BOX_EDGE_EXCESS_KT` of the deepest minimum (then the mass outside could matter).

    Returns:
        dict with ``log_z``, ``f_A_kT``, ``f_B_kT``, ``f_C_kT`` (``-log Z_S``), ``populations``
        (``{"A": p_A, ...}``), ``minima`` (``{"A": [x, y], ...}``), ``minimum_energies_kT``,
        ``scale``, ``integration_box``, ``box_edge_min_excess_kT`` and ``state_definitions``.
    """
    return copy.deepcopy(_muller_brown_references(float(scale), tuple(map(float, box)), float(panel_width), int(order)))


@functools.lru_cache(maxsize=8)
def _muller_brown_references(scale: float, box: tuple, panel_width: float, order: int) -> dict:
    energy = MullerBrownEnergy(scale)
    minima = muller_brown_minima(energy)
    names = list(minima)
    sites = np.stack([minima[name] for name in names])
    minimum_energies = _energy_numpy(energy, sites)
    u_min = float(minimum_energies.min())

    box_normals, box_offsets = _box_halfplanes(box)
    edge_excess = _min_excess_on_box_edge(energy, box, u_min)
    if edge_excess < MIN_BOX_EDGE_EXCESS_KT:
        raise ValueError(
            f"integration box {box} is too small for Müller-Brown scale {scale:g}: its edge lies only "
            f"{edge_excess:.1f} kT above the deepest minimum (need >= {MIN_BOX_EDGE_EXCESS_KT:g}); pass a larger box"
        )

    def log_integrand(points: np.ndarray) -> np.ndarray:
        return -(_energy_numpy(energy, points) - u_min)

    log_z_states = {}
    for index, name in enumerate(names):
        cell_normals, cell_offsets = voronoi_cell_halfplanes(sites, index)
        log_z_states[name] = (
            log_integral_over_convex_polygon(
                log_integrand,
                np.concatenate([box_normals, cell_normals]),
                np.concatenate([box_offsets, cell_offsets]),
                panel_width=panel_width,
                order=order,
            )
            - u_min
        )
    log_z = float(special.logsumexp(list(log_z_states.values())))
    references = {
        "log_z": log_z,
        **{f"f_{name}_kT": -value for name, value in log_z_states.items()},
        "populations": {name: math.exp(value - log_z) for name, value in log_z_states.items()},
        "minima": {name: minima[name].tolist() for name in names},
        "minimum_energies_kT": {name: float(u) for name, u in zip(names, minimum_energies)},
        "scale": scale,
        "integration_box": list(box),
        "box_edge_min_excess_kT": edge_excess,
        "state_definitions": {
            name: f"Voronoi cell of minimum {name}: points closer (Euclidean) to it than to the other minima"
            for name in names
        },
    }
    return references
