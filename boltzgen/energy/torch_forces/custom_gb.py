"""OpenMM's ``CustomGBForce`` as batched torch: `CustomGBTerm`.

Every expression is compiled once (`expressions.compile_expression`, tabulated functions from
`tabulated.tabulated_functions_of`) and evaluated batch-last: per-particle quantities ``[N, B]``,
pair quantities ``[K, B]``, per-particle parameters ``[rows, 1]``, global parameters as floats (their
default values). Supported: computed values and energy terms of all three computation types,
per-particle and global parameters, exclusions, tabulated functions, NoCutoff / CutoffNonPeriodic /
CutoffPeriodic. Forces come from autograd.

Semantics, read off OpenMM's Reference platform (``ReferenceCustomGBIxn.cpp``,
``ReferenceCalcCustomGBForceKernel``, ``CustomGBForceImpl``):

- Computed values are evaluated in order. Like every OpenMM platform, the first one must be of type
  ``ParticlePair`` or ``ParticlePairNoExclusions`` and all later ones ``SingleParticle``; anything
  else raises `UnsupportedForceError` (OpenMM refuses it at Context creation).
- A pair computed value is, for particle ``i``, ``sum_{j != i} expr(r_ij, params1 = i, params2 = j)``:
  both orders of every pair, each adding to its particle "1". ``ParticlePair`` skips excluded pairs,
  ``ParticlePairNoExclusions`` does not. A single-particle value may use ``x, y, z`` (the particle's
  unwrapped coordinates), its parameters and the earlier computed values.
- A pair energy term is summed over each unordered pair once (again without excluded pairs unless
  ``ParticlePairNoExclusions``), with ``name1`` / ``name2`` (parameters and computed values) of its
  two particles. Particle "1" is the smaller index without a cutoff; with a cutoff OpenMM walks its
  neighbour list, which reports each pair as (larger index, smaller index), and so does this term
  (it only matters for expressions that are not symmetric in 1 and 2).
- With a cutoff a pair takes part (in values and energy terms) only if ``r < cutoff`` (strictly;
  GBSAOBCForce keeps ``r == cutoff``); CutoffPeriodic uses the minimum image for ``r``. No other
  cutoff treatment is applied: reaction-field-like shifts such as amber's ``1/f - 1/cutoff`` live in
  the expressions themselves.
- Exclusions never affect single-particle values or terms; a particle never pairs with itself.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import ForceTerm, UnsupportedForceError, value_of
from boltzgen.energy.torch_forces.expressions import compile_expression
from boltzgen.energy.torch_forces.pairs import all_pairs, minimum_image
from boltzgen.energy.torch_forces.tabulated import tabulated_functions_of

__all__ = ["CustomGBTerm"]

SINGLE, PAIR, PAIR_NO_EXCLUSIONS = "SingleParticle", "ParticlePair", "ParticlePairNoExclusions"
_TYPES = {
    openmm.CustomGBForce.SingleParticle: SINGLE,
    openmm.CustomGBForce.ParticlePair: PAIR,
    openmm.CustomGBForce.ParticlePairNoExclusions: PAIR_NO_EXCLUSIONS,
}
_METHODS = {
    openmm.CustomGBForce.NoCutoff: "NoCutoff",
    openmm.CustomGBForce.CutoffNonPeriodic: "CutoffNonPeriodic",
    openmm.CustomGBForce.CutoffPeriodic: "CutoffPeriodic",
}


class CustomGBTerm(ForceTerm):
    """``CustomGBForce``: computed values, then the sum of all energy terms; build with `from_openmm`.

    ``values``: ``[(name, CompiledExpression, type)]`` in order; ``energy_terms``:
    ``[(CompiledExpression, type)]``; types are ``"SingleParticle"``, ``"ParticlePair"`` or
    ``"ParticlePairNoExclusions"``.
    """

    openmm_name = "CustomGBForce"

    def __init__(
        self,
        n_particles: int,
        parameters: dict[str, np.ndarray],
        global_parameters: dict[str, float],
        values: list,
        energy_terms: list,
        exclusions=(),
        *,
        method: str = "NoCutoff",
        cutoff: float | None = None,
    ):
        super().__init__()
        if method not in _METHODS.values():
            raise UnsupportedForceError(f"CustomGBForce nonbonded method {method!r} is not supported")
        n = int(n_particles)
        self.n_particles = n
        self.method = method
        self.use_cutoff = method != "NoCutoff"
        self.periodic = method == "CutoffPeriodic"
        self.cutoff = float(cutoff) if self.use_cutoff else None
        self.global_parameters = {name: float(v) for name, v in global_parameters.items()}
        self.parameter_names = tuple(parameters)
        stacked = np.zeros((len(self.parameter_names), n), dtype=np.float64)
        for row, name in enumerate(self.parameter_names):
            stacked[row] = np.asarray(parameters[name], dtype=np.float64).reshape(n)
        self.register_buffer("particle_parameters", torch.as_tensor(stacked))

        for k, (name, _, kind) in enumerate(values):
            if (k == 0) == (kind == SINGLE):
                raise UnsupportedForceError(
                    "CustomGBForce: OpenMM requires the first computed value to be of type ParticlePair or "
                    f"ParticlePairNoExclusions and all later ones SingleParticle (value {name!r} is {kind})"
                )
        self.value_names = tuple(name for name, _, _ in values)
        self.value_types = tuple(kind for _, _, kind in values)
        self.value_expressions = torch.nn.ModuleList([expression for _, expression, _ in values])
        self.energy_types = tuple(kind for _, kind in energy_terms)
        self.energy_expressions = torch.nn.ModuleList([expression for expression, _ in energy_terms])

        # Pair lists: all unique pairs (i < j) carry the distances; the non-excluded ones are a subset.
        excluded = set()
        for a, b in exclusions:
            a, b = int(a), int(b)
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"CustomGBForce: illegal exclusion ({a}, {b})")
            key = (min(a, b), max(a, b))
            if key in excluded:
                raise ValueError(f"CustomGBForce: multiple exclusions for particles {a} and {b}")
            excluded.add(key)
        pairs = all_pairs(n)
        kept = torch.tensor([(int(i), int(j)) not in excluded for i, j in pairs.tolist()], dtype=torch.bool)
        self.register_buffer("pair_i", pairs[:, 0].contiguous())
        self.register_buffer("pair_j", pairs[:, 1].contiguous())
        for label, rows in (("all", torch.arange(len(pairs))), ("kept", kept.nonzero().flatten())):
            i, j = pairs[rows, 0], pairs[rows, 1]
            # Pair values: both orders, particle "1" receives.
            self.register_buffer(f"value_rows_{label}", torch.cat([rows, rows]))
            self.register_buffer(f"value_first_{label}", torch.cat([i, j]))
            self.register_buffer(f"value_second_{label}", torch.cat([j, i]))
            # Pair energies: once; particle "1" is the larger index with a cutoff (neighbour list order).
            first, second = (j, i) if self.use_cutoff else (i, j)
            self.register_buffer(f"energy_rows_{label}", rows)
            self.register_buffer(f"energy_first_{label}", first.contiguous())
            self.register_buffer(f"energy_second_{label}", second.contiguous())
        self.needs_pairs = any(kind != SINGLE for kind in self.value_types + self.energy_types)

        # Check every expression's variables against what its computation type provides.
        for k, (name, expression, kind) in enumerate(values):
            self._check_variables(expression, kind, self.value_names[:k], f"computed value {name!r}")
        for expression, kind in energy_terms:
            self._check_variables(expression, kind, self.value_names, "energy term")

    def _check_variables(self, expression, kind: str, value_names, what: str) -> None:
        if kind == SINGLE:
            allowed = set(self.parameter_names) | set(value_names) | {"x", "y", "z"}
        else:
            names = list(self.parameter_names) + list(value_names)
            allowed = {"r"} | {f"{name}{k}" for name in names for k in (1, 2)}
        allowed |= set(self.global_parameters)
        unknown = sorted(set(expression.variables) - allowed)
        if unknown:
            raise UnsupportedForceError(
                f"CustomGBForce {what} ({kind}) {expression.text!r} uses unknown variable(s) {', '.join(unknown)}"
            )

    @classmethod
    def from_openmm(cls, force: openmm.CustomGBForce, system: openmm.System | None = None) -> "CustomGBTerm":
        method = _METHODS.get(force.getNonbondedMethod())
        if method is None:  # pragma: no cover - OpenMM has no other methods
            raise UnsupportedForceError(f"CustomGBForce nonbonded method {force.getNonbondedMethod()} is not supported")
        n = force.getNumParticles()
        if system is not None and system.getNumParticles() != n:
            raise UnsupportedForceError(
                f"CustomGBForce has {n} particles but the System has {system.getNumParticles()}"
            )
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        table = np.zeros((n, len(names)))
        for i in range(n):
            row = force.getParticleParameters(i)
            if len(row) != len(names):
                raise UnsupportedForceError(f"CustomGBForce: wrong number of parameters for particle {i}")
            table[i] = [value_of(v) for v in row]
        global_parameters = {
            force.getGlobalParameterName(k): value_of(force.getGlobalParameterDefaultValue(k))
            for k in range(force.getNumGlobalParameters())
        }
        functions = tabulated_functions_of(force)
        values = []
        for k in range(force.getNumComputedValues()):
            name, text, kind = force.getComputedValueParameters(k)
            values.append((name, compile_expression(text, functions), _TYPES[kind]))
        energy_terms = []
        for k in range(force.getNumEnergyTerms()):
            text, kind = force.getEnergyTermParameters(k)
            energy_terms.append((compile_expression(text, functions), _TYPES[kind]))
        exclusions = [force.getExclusionParticles(k) for k in range(force.getNumExclusions())]
        return cls(
            n,
            {name: table[:, k] for k, name in enumerate(names)},
            global_parameters,
            values,
            energy_terms,
            exclusions,
            method=method,
            cutoff=value_of(force.getCutoffDistance(), openmm.unit.nanometer),
        )

    # -- evaluation ---------------------------------------------------------------------------

    def _pair_inputs(self, expression, r, first, second, parameters, computed, rows):
        """Variables of a pair expression: ``r`` ``[D, B]``, ``name1``/``name2`` of the two particles."""
        inputs: dict[str, torch.Tensor | float] = {}
        for variable in expression.variables:
            if variable == "r":
                inputs[variable] = r if rows is None else r.index_select(0, rows)
                continue
            if variable in self.global_parameters:
                inputs[variable] = self.global_parameters[variable]
                continue
            base, which = variable[:-1], first if variable[-1] == "1" else second
            if base in computed:
                inputs[variable] = computed[base].index_select(0, which)
            else:
                inputs[variable] = parameters[base].index_select(0, which)
        return inputs

    def _single_inputs(self, expression, points, parameters, computed):
        inputs: dict[str, torch.Tensor | float] = {}
        for variable in expression.variables:
            if variable in ("x", "y", "z"):
                inputs[variable] = points[:, "xyz".index(variable)]
            elif variable in computed:
                inputs[variable] = computed[variable]
            elif variable in self.global_parameters:
                inputs[variable] = self.global_parameters[variable]
            else:
                inputs[variable] = parameters[variable]
        return inputs

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        if self.periodic and box is None:
            raise ValueError("CustomGBForce with CutoffPeriodic needs the periodic box vectors")
        dtype, batch, n = positions.dtype, positions.shape[0], self.n_particles
        points = positions.permute(1, 2, 0)  # [N, 3, B]
        table = self.particle_parameters.to(dtype)
        parameters = {name: table[k].unsqueeze(1) for k, name in enumerate(self.parameter_names)}  # [N, 1]

        r = within = None
        if self.needs_pairs:
            delta = points.index_select(0, self.pair_j) - points.index_select(0, self.pair_i)  # [K, 3, B]
            if self.periodic:
                delta = minimum_image(delta.transpose(1, 2), box.to(positions)).transpose(1, 2)
            r = torch.linalg.vector_norm(delta, dim=1)  # [K, B]
            if self.use_cutoff:
                within = r < self.cutoff

        def run(expression, inputs):
            return torch.as_tensor(expression(inputs, box), dtype=dtype, device=positions.device)

        def masked(contribution, rows, count):
            contribution = torch.broadcast_to(contribution, (count, batch))
            if within is None:
                return contribution
            keep = within.index_select(0, rows)
            return torch.where(keep, contribution, contribution.new_zeros(()))

        computed: dict[str, torch.Tensor] = {}

        def evaluate(expression, kind, role):
            """One computed value (``role="value"``) or energy term (``"energy"``), given the values
            computed so far: ``([N, B], None)`` for a single-particle expression, else the per-pair
            contributions ``[K, B]`` (zero beyond the cutoff) and each pair's first particle ``[K]``."""
            if kind == SINGLE:
                inputs = self._single_inputs(expression, points, parameters, computed)
                return torch.broadcast_to(run(expression, inputs), (n, batch)), None
            label = "all" if kind == PAIR_NO_EXCLUSIONS else "kept"
            rows = getattr(self, f"{role}_rows_{label}")
            first = getattr(self, f"{role}_first_{label}")
            second = getattr(self, f"{role}_second_{label}")
            inputs = self._pair_inputs(expression, r, first, second, parameters, computed, rows)
            return masked(run(expression, inputs), rows, len(rows)), first

        for name, expression, kind in zip(self.value_names, self.value_expressions, self.value_types):
            value, first = evaluate(expression, kind, "value")
            if first is not None:  # a pair value belongs to the pair's first particle
                value = value.new_zeros((n, batch)).index_add(0, first, value)
            computed[name] = value

        energy = torch.zeros(batch, dtype=dtype, device=positions.device)
        for expression, kind in zip(self.energy_expressions, self.energy_types):
            terms, _ = evaluate(expression, kind, "energy")
            energy = energy + terms.sum(0)
        return energy
