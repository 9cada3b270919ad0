"""OpenMM's ``CustomNonbondedForce`` as batched torch: `CustomNonbondedTerm`.

The energy expression is compiled once (`expressions.compile_expression`, tabulated functions
from `tabulated.tabulated_functions_of`) and evaluated on a dense pair list: distances
``[K, B]`` (batch-last) with per-pair parameters ``[K, 1]``. Supported: ``NoCutoff``,
``CutoffNonPeriodic``, ``CutoffPeriodic`` (cubic or triclinic), exclusions, the switching
function, interaction groups, the long-range correction and computed values (OpenMM >= 8.1);
global parameters take their default values.

Semantics, read off OpenMM's reference platform (``ReferenceCustomNonbondedIxn``,
``ReferenceCalcCustomNonbondedForceKernel``, ``CustomNonbondedForceImpl``):

- The pair energy is the expression itself: no shift. With a cutoff only pairs with
  ``r < r_c`` (strictly) interact; the switching function ``S(t) = 1 - 10 t^3 + 15 t^4 - 6 t^5``,
  ``t = (r - r_sw)/(r_c - r_sw)``, multiplies the energy for ``r > r_sw``. Without a cutoff the
  switch is ignored.
- Which particle is "1" in ``name1`` / ``name2``: without a cutoff (and without interaction
  groups) pairs are ``(i, j)`` with ``i < j``; with a cutoff OpenMM's neighbour list reports each
  pair as ``(larger index, smaller index)``; with interaction groups ``(a1 from set1, a2 from set2)``
  (sets in increasing order; a pair whose two atoms are both in both sets is taken once, as
  ``a1 < a2``; a pair listed in two groups interacts twice). This only matters for expressions that
  are not symmetric in 1 and 2, which OpenMM documents as unsupported; it is reproduced anyway.
- Exclusions remove pairs (also from interaction groups); a particle never interacts with itself.
- Long-range correction (``CutoffPeriodic`` with ``getUseLongRangeCorrection()``): energy
  ``coefficient / V`` with ``V`` the product of the box diagonal. The coefficient is computed at
  build time exactly as ``CustomNonbondedForceImpl::calcLongRangeCorrection``: particle classes
  by their parameter vectors, pair counts per class pair (from interaction groups if any), the
  integral by OpenMM's iterated midpoint rule in single precision (OpenMM evaluates the expression
  with a float ``CompiledVectorExpression``; reproducing that gives the same coefficient to
  ~1e-7 relative, where a double-precision quadrature would differ by up to OpenMM's 1e-5
  convergence tolerance).
- Computed values are per-particle expressions of the per-particle and global parameters; they
  are evaluated once at build time (float64) and then act as extra per-particle parameters.
"""

from __future__ import annotations

import math

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import ForceTerm, UnsupportedForceError, as_index_buffer, value_of
from boltzgen.energy.torch_forces.expressions import compile_expression
from boltzgen.energy.torch_forces.layout import batch_last, displacement_components
from boltzgen.energy.torch_forces.tabulated import tabulated_functions_of

__all__ = ["CustomNonbondedTerm", "long_range_correction_coefficient"]

_METHODS = {
    openmm.CustomNonbondedForce.NoCutoff: "NoCutoff",
    openmm.CustomNonbondedForce.CutoffNonPeriodic: "CutoffNonPeriodic",
    openmm.CustomNonbondedForce.CutoffPeriodic: "CutoffPeriodic",
}


class CustomNonbondedTerm(ForceTerm):
    """``CustomNonbondedForce``: ``E = sum over pairs of S(r) * expression(r, params1, params2, globals)``.

    Build it with `from_openmm`. The per-pair parameters the expression uses are gathered once at
    build time into ``pair_parameters`` ``[V, K]`` (V = number of ``name1``/``name2`` variables).
    """

    openmm_name = "CustomNonbondedForce"

    def __init__(
        self,
        energy,
        pairs,
        pair_parameters: dict[str, np.ndarray],
        global_parameters: dict[str, float],
        *,
        method: str = "NoCutoff",
        cutoff: float | None = None,
        switching_distance: float | None = None,
        long_range_coefficient: float = 0.0,
    ):
        super().__init__()
        self.energy = energy
        self.method = method
        self.register_buffer("pairs", as_index_buffer(pairs, 2))
        self.parameter_names = tuple(pair_parameters)
        n_pairs = self.pairs.shape[0]
        stacked = np.zeros((len(self.parameter_names), n_pairs), dtype=np.float64)
        for row, name in enumerate(self.parameter_names):
            stacked[row] = np.asarray(pair_parameters[name], dtype=np.float64).reshape(n_pairs)
        self.register_buffer("pair_parameters", torch.as_tensor(stacked))
        self.global_parameters = {name: float(value) for name, value in global_parameters.items()}
        self.periodic = method == "CutoffPeriodic"
        self.use_cutoff = method != "NoCutoff"
        self.cutoff = float(cutoff) if self.use_cutoff else None
        if switching_distance is not None and self.use_cutoff:
            self.switching_distance = float(switching_distance)
            self.inverse_switch_width = 1.0 / (self.cutoff - self.switching_distance)
        else:
            self.switching_distance = None
            self.inverse_switch_width = 0.0
        self.long_range_coefficient = float(long_range_coefficient) if self.periodic else 0.0

    @classmethod
    def from_openmm(cls, force: openmm.CustomNonbondedForce, system: openmm.System | None = None) -> "CustomNonbondedTerm":
        method = _METHODS.get(force.getNonbondedMethod())
        if method is None:
            raise UnsupportedForceError(
                f"CustomNonbondedForce method {force.getNonbondedMethod()} is not supported; "
                "use NoCutoff, CutoffNonPeriodic or CutoffPeriodic"
            )
        n = force.getNumParticles()
        if system is not None and system.getNumParticles() != n:
            raise ValueError(f"CustomNonbondedForce has {n} particles but the System has {system.getNumParticles()}")
        cutoff = value_of(force.getCutoffDistance(), openmm.unit.nanometer)
        switching = None
        if method != "NoCutoff" and force.getUseSwitchingFunction():
            switching = value_of(force.getSwitchingDistance(), openmm.unit.nanometer)
            if not 0 <= switching < cutoff:
                raise ValueError("CustomNonbondedForce: switching distance must satisfy 0 <= r_switch < r_cutoff")

        functions = tabulated_functions_of(force)
        energy = compile_expression(force.getEnergyFunction(), functions)
        globals_ = {
            force.getGlobalParameterName(k): float(force.getGlobalParameterDefaultValue(k))
            for k in range(force.getNumGlobalParameters())
        }
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        parameters = np.array(
            [list(force.getParticleParameters(i)) for i in range(n)], dtype=np.float64
        ).reshape(n, len(names))
        particle_values = {name: parameters[:, k] for k, name in enumerate(names)}
        computed = _computed_values(force, particle_values, globals_, functions)
        per_particle = {**particle_values, **computed}

        allowed = {"r", *globals_} | {name + suffix for name in per_particle for suffix in ("1", "2")}
        unknown = sorted(energy.variables - allowed)
        if unknown:
            raise UnsupportedForceError(
                f"CustomNonbondedForce energy {force.getEnergyFunction()!r} uses unknown variable(s) "
                f"{', '.join(unknown)} (known: r, per-particle parameters with suffix 1/2, global parameters)"
            )

        pairs = _pair_list(force, n, method)
        pair_parameters = {}
        for name, values in per_particle.items():
            for suffix, column in (("1", 0), ("2", 1)):
                if energy.uses(name + suffix):
                    pair_parameters[name + suffix] = values[pairs[:, column]]

        coefficient = 0.0
        if method == "CutoffPeriodic" and force.getUseLongRangeCorrection():
            n_system = system.getNumParticles() if system is not None else n
            coefficient = long_range_correction_coefficient(force, per_particle, globals_, n_system)
        return cls(
            energy, pairs, pair_parameters, globals_,
            method=method, cutoff=cutoff, switching_distance=switching, long_range_coefficient=coefficient,
        )

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        if self.periodic and box is None:
            raise ValueError("CustomNonbondedForce with CutoffPeriodic needs the periodic box")
        points = batch_last(positions)
        if self.periodic:
            dx, dy, dz = displacement_components(points, self.pairs[:, 0], self.pairs[:, 1], box)
            r = (dx * dx + dy * dy + dz * dz).sqrt()  # [K, B]
        else:
            delta = points.index_select(1, self.pairs[:, 1]) - points.index_select(1, self.pairs[:, 0])
            r = (delta * delta).sum(0).sqrt()  # [K, B]
        if self.use_cutoff:
            inside = r < self.cutoff
            # Double where: pairs beyond the cutoff enter with a detached r, so whatever the
            # expression does there (inf, NaN) never reaches the gradient.
            r = torch.where(inside, r, r.detach())
        values = dict(self.global_parameters)
        values["r"] = r
        for name, row in zip(self.parameter_names, self.pair_parameters.unsqueeze(2)):
            values[name] = row  # [K, 1]
        pair_energy = self.energy(values)
        if pair_energy.shape != r.shape:
            pair_energy = pair_energy.to(r.dtype).expand(r.shape)
        if self.switching_distance is not None:
            t = ((r - self.switching_distance) * self.inverse_switch_width).clamp_min(0.0)
            pair_energy = pair_energy * (1.0 + t * t * t * (-10.0 + t * (15.0 - 6.0 * t)))
        if self.use_cutoff:
            pair_energy = torch.where(inside, pair_energy, 0.0)
        energy = pair_energy.sum(0)
        if self.long_range_coefficient != 0.0:
            energy = energy + self.long_range_coefficient / (box[0, 0] * box[1, 1] * box[2, 2])
        return energy

    def extra_repr(self) -> str:
        text = f"method={self.method}, pairs={self.pairs.shape[0]}"
        if self.use_cutoff:
            text += f", cutoff={self.cutoff}"
        if self.switching_distance is not None:
            text += f", switching_distance={self.switching_distance}"
        return text


def _computed_values(force, particle_values: dict[str, np.ndarray], globals_: dict[str, float], functions) -> dict[str, np.ndarray]:
    """Per-particle computed values (OpenMM >= 8.1), evaluated once in float64."""
    count = force.getNumComputedValues() if hasattr(force, "getNumComputedValues") else 0
    out = {}
    for k in range(count):
        name, text = force.getComputedValueParameters(k)
        expression = compile_expression(text, functions)
        unknown = sorted(expression.variables - set(particle_values) - set(globals_))
        if unknown:
            raise UnsupportedForceError(
                f"CustomNonbondedForce computed value {name!r} = {text!r} uses {', '.join(unknown)}; "
                "only per-particle and global parameters are supported in computed values"
            )
        values = {key: torch.as_tensor(value, dtype=torch.float64) for key, value in particle_values.items()}
        values.update(globals_)
        with torch.no_grad():
            result = expression(values).to(torch.float64)
        out[name] = np.broadcast_to(result.numpy(), (force.getNumParticles(),)).copy()
    return out


def _exclusion_set(force) -> set[tuple[int, int]]:
    excluded = set()
    for k in range(force.getNumExclusions()):
        i, j = force.getExclusionParticles(k)
        excluded.add((min(i, j), max(i, j)))
    return excluded


def _interaction_groups(force) -> list[tuple[list[int], list[int]]]:
    groups = []
    for k in range(force.getNumInteractionGroups()):
        set1, set2 = force.getInteractionGroupParameters(k)
        groups.append((sorted({int(a) for a in set1}), sorted({int(a) for a in set2})))
    return groups


def _pair_list(force, n: int, method: str) -> np.ndarray:
    """Pairs ``[K, 2]`` (particle "1", particle "2") in OpenMM's orientation (see the module doc)."""
    excluded = _exclusion_set(force)
    groups = _interaction_groups(force)
    if groups:
        pairs = []
        for set1, set2 in groups:
            in1, in2 = set(set1), set(set2)
            for a1 in set1:
                for a2 in set2:
                    if a1 == a2 or (min(a1, a2), max(a1, a2)) in excluded:
                        continue
                    if a1 > a2 and a2 in in1 and a1 in in2:
                        continue
                    pairs.append((a1, a2))
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)
    i, j = np.triu_indices(n, 1)
    if excluded:
        codes = np.array([a * n + b for a, b in excluded], dtype=np.int64)
        keep = ~np.isin(i * n + j, codes)
        i, j = i[keep], j[keep]
    if method == "NoCutoff":
        return np.stack([i, j], axis=1).astype(np.int64)
    return np.stack([j, i], axis=1).astype(np.int64)  # the neighbour list reports (larger, smaller)


def long_range_correction_coefficient(force, per_particle: dict[str, np.ndarray], globals_: dict[str, float], n_particles: int) -> float:
    """``CustomNonbondedForceImpl::calcLongRangeCorrection``: the coefficient ``C`` (energy ``C / V``), kJ nm^3/mol.

    ``per_particle``: per-particle parameters and computed values by name (``[N]`` each).
    """
    names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
    n = force.getNumParticles()
    # Classes: distinct parameter vectors, numbered in order of first appearance.
    class_of_vector: dict[tuple, int] = {}
    atom_class = np.empty(n, dtype=np.int64)
    representatives = []
    for i in range(n):
        key = tuple(float(per_particle[name][i]) for name in names)
        if key not in class_of_vector:
            class_of_vector[key] = len(representatives)
            representatives.append(i)
        atom_class[i] = class_of_vector[key]
    n_classes = len(representatives)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    groups = _interaction_groups(force)
    if not groups:
        per_class = np.bincount(atom_class, minlength=n_classes)
        for a in range(n_classes):
            counts[a, a] = (per_class[a] * (per_class[a] + 1)) // 2
            for b in range(a + 1, n_classes):
                counts[a, b] = per_class[a] * per_class[b]
    else:
        for set1, set2 in groups:
            in1, in2 = set(set1), set(set2)
            for a1 in set1:
                for a2 in set2:
                    if a1 >= a2 and a2 in in1 and a1 in in2:
                        continue
                    c1, c2 = atom_class[a1], atom_class[a2]
                    counts[min(c1, c2), max(c1, c2)] += 1

    expression = compile_expression(force.getEnergyFunction(), tabulated_functions_of(force)).to(torch.float32)
    if not expression.uses("r"):
        raise UnsupportedForceError("CustomNonbondedForce: Cannot use long range correction with a force that does not depend on r.")
    cutoff = value_of(force.getCutoffDistance(), openmm.unit.nanometer)
    switching = value_of(force.getSwitchingDistance(), openmm.unit.nanometer) if force.getUseSwitchingFunction() else None
    # Every class pair (a <= b) that occurs, integrated together (each with its own convergence).
    class_a, class_b = np.nonzero(np.triu(counts) > 0)
    values = {}
    for name, column in per_particle.items():
        values[name + "1"] = np.asarray(column, dtype=np.float64)[np.asarray(representatives)[class_a]]
        values[name + "2"] = np.asarray(column, dtype=np.float64)[np.asarray(representatives)[class_b]]
    values.update({key: np.full(len(class_a), value) for key, value in globals_.items()})
    integrals = _integrate_interactions(expression, values, len(class_a), cutoff, switching)
    total = float(np.sum(counts[class_a, class_b].astype(np.float64) * integrals))
    n_total = float(n_particles)
    total /= (n_total * (n_total + 1)) / 2
    return 2 * math.pi * n_total * n_total * total


def _relative_change(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``fabs((new - old)/new)`` with C semantics (inf or NaN where ``new == 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs((new - old) / new)


def _iterated_midpoint(evaluate, active_count: int, message: str) -> np.ndarray:
    """OpenMM's integration loop, run for ``active_count`` integrals at once.

    ``evaluate(x, rows)``: the new midpoint contributions ``sum_x f_rows(x)`` for the integrals
    ``rows`` (index array) at the abscissae ``x`` ``[M]`` in (0, 1); returns ``[len(rows)]``.
    Each integral stops at its own iteration, exactly as the scalar loop would.
    """
    total = np.zeros(active_count)
    rows = np.arange(active_count)
    points, iteration = 1, 0
    while len(rows):
        previous = total[rows]
        i = np.arange(points)
        i = i[i % 3 != 1]
        x = (i + 0.5) / points
        current = evaluate(x, rows) / points + previous / 3
        total[rows] = current
        change = _relative_change(current, previous)
        if iteration > 2:
            done = (change < 1e-5) | (current == 0)
        else:
            done = np.zeros(len(rows), dtype=bool)
        failed = ~done & ((iteration == 10) | ((iteration > 7) & (change > 1e-3)))
        if failed.any():
            raise UnsupportedForceError(message)
        rows = rows[~done]
        points *= 3
        iteration += 1
    return total


def _integrate_interactions(expression, values: dict[str, np.ndarray], count: int, cutoff: float, switching: float | None) -> np.ndarray:
    """``CustomNonbondedForceImpl::integrateInteraction`` for ``count`` class pairs: iterated midpoint rule,
    the expression evaluated in single precision as OpenMM's float ``CompiledVectorExpression`` does.

    ``values``: name -> ``[count]`` (parameters with suffixes, computed values, globals).
    """
    inputs32 = {name: torch.from_numpy(np.asarray(value, dtype=np.float32)) for name, value in values.items() if expression.uses(name)}

    def evaluate32(r32: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        inputs = {name: value[torch.from_numpy(rows)].unsqueeze(-1) for name, value in inputs32.items()}
        inputs["r"] = r32
        with torch.no_grad():
            return torch.broadcast_to(expression(inputs).to(torch.float32), (len(rows), r32.shape[0]))

    def tail(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        r32 = torch.from_numpy((cutoff / x).astype(np.float32))
        r2 = r32 * r32
        return (evaluate32(r32, rows) * r2 * r2).to(torch.float64).sum(-1).numpy()

    total = _iterated_midpoint(
        tail, count,
        "CustomNonbondedForce: Long range correction did not converge.  Does the energy go to 0 faster than 1/r^2?",
    )
    result = total / cutoff
    if switching is not None:

        def switched(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
            weight = torch.from_numpy(x * x * x * (10 + x * (-15 + x * 6)))
            r32 = torch.from_numpy((switching + x * (cutoff - switching)).astype(np.float32))
            r64 = r32.to(torch.float64)
            return (weight * evaluate32(r32, rows).to(torch.float64) * r64 * r64).sum(-1).numpy()

        inner = _iterated_midpoint(
            switched, count,
            "CustomNonbondedForce: Long range correction did not converge.  Is the energy finite everywhere in the switching interval?",
        )
        result = result + inner * (cutoff - switching)
    return result
