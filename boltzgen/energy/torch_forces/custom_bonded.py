"""OpenMM's CustomBondForce, CustomAngleForce, CustomTorsionForce and CustomExternalForce in torch.

Each term compiles the force's energy expression with `compile_expression` and evaluates it for
all of its bonds / angles / torsions / particles at once: the geometric variable (``r``,
``theta``, or ``x, y, z``) has shape ``[B, K]``, per-term parameters ``[K]`` and global
parameters are 0-d; the energy is the sum over the K terms. As OpenMM's Reference platform:

- ``r`` = ``|r_2 - r_1|``; ``theta`` (angle) = angle at particle 2 in ``[0, pi]``; ``theta``
  (torsion) = dihedral 1-2-3-4 in ``[-pi, pi]``, which has the same sign convention as
  `boltzgen.geometry.dihedral_angle` (IUPAC: OpenMM's sign is that of ``(r1 - r2) . ((r3 - r2) x
  (r3 - r4))``, i.e. of ``atan2``'s first argument there, so the two agree up to rounding).
- with ``force.usesPeriodicBoundaryConditions()``, every difference vector (2-1 for bonds;
  1-2 and 3-2 for angles; 1-2, 3-2 and 3-4 for torsions) takes the minimum image
  (`pairs.minimum_image`); CustomExternalForce's ``periodicdistance(x, y, z, x0, y0, z0)`` uses
  the box. When ``forward`` gets ``box=None`` a periodic term uses the System's default box, as an
  OpenMM Context would.
- global parameters start at their default values and live in the ``global_values`` buffer
  (`set_global_parameter` changes one, like ``Context.setParameter``).
- energy-parameter derivatives (``addEnergyParameterDerivative``) are ignored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import (
    ForceTerm,
    UnsupportedForceError,
    as_float_buffer,
    as_index_buffer,
)
from boltzgen.energy.torch_forces.expressions import ExpressionError, compile_expression
from boltzgen.energy.torch_forces.pairs import minimum_image
from boltzgen.energy.torch_forces.tabulated import tabulated_functions_of
from boltzgen.geometry import bond_angle, dihedral_angle

__all__ = ["CustomAngleTerm", "CustomBondTerm", "CustomExternalTerm", "CustomTorsionTerm"]


def _default_box(system: openmm.System) -> torch.Tensor:
    vectors = system.getDefaultPeriodicBoxVectors()
    return torch.as_tensor(
        np.array([[float(v) for v in vec.value_in_unit(openmm.unit.nanometer)] for vec in vectors]),
        dtype=torch.float64,
    )


class _CustomTerm(ForceTerm):
    """Shared machinery: expression, per-term parameters, global parameters, periodicity."""

    #: name of the geometric variables the expression may use, besides parameters
    geometric_variables: tuple[str, ...] = ()
    #: atoms per term
    width: int = 1
    #: names of the force's methods: number of per-term parameters, name of parameter i, number of
    #: terms, (particles..., parameters) of term i -- e.g. ``getNumPerBondParameters``, ...
    openmm_accessors: tuple[str, str, str, str] = ()

    def __init__(
        self,
        expression: str,
        atoms: np.ndarray | Sequence[Sequence[int]],
        parameters: np.ndarray,
        parameter_names: Sequence[str],
        global_names: Sequence[str] = (),
        global_defaults: Sequence[float] = (),
        periodic: bool = False,
        default_box: torch.Tensor | None = None,
        functions=None,
    ):
        super().__init__()
        self.expression_text = expression
        try:
            self.expression = compile_expression(expression, functions)
        except ExpressionError as error:
            raise UnsupportedForceError(f"{self.openmm_name}: {error}") from None
        if "periodicdistance" in self.expression.operations and "x" not in self.geometric_variables:
            raise UnsupportedForceError(
                f"{self.openmm_name}: unknown function periodicdistance in {expression!r} "
                "(OpenMM defines it only for CustomExternalForce)"
            )
        self.parameter_names = list(parameter_names)
        self.global_names = list(global_names)
        allowed = set(self.geometric_variables) | set(self.parameter_names) | set(self.global_names)
        unknown = sorted(self.expression.variables - allowed)
        if unknown:
            raise UnsupportedForceError(
                f"{self.openmm_name}: the energy expression {expression!r} uses unknown variable(s) "
                f"{', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
            )
        self.register_buffer("atoms", as_index_buffer(atoms, self.width))
        # [K, P] (built directly: numpy cannot reshape an empty array to (-1, 0))
        table = np.asarray(parameters, dtype=np.float64).reshape(len(self.atoms), len(self.parameter_names))
        self.register_buffer("term_parameters", torch.as_tensor(table, dtype=torch.float64))
        self.register_buffer("global_values", as_float_buffer(list(global_defaults)))
        self.periodic = bool(periodic)
        box = default_box if default_box is not None else torch.eye(3, dtype=torch.float64) * 2.0
        self.register_buffer("default_box", box.to(torch.float64).clone())

    @property
    def num_terms(self) -> int:
        return int(self.atoms.shape[0])

    def set_global_parameter(self, name: str, value: float) -> None:
        """Change a global parameter (as ``Context.setParameter``)."""
        if name not in self.global_names:
            raise KeyError(f"{self.openmm_name} has no global parameter {name!r} (has: {self.global_names})")
        with torch.no_grad():
            self.global_values[self.global_names.index(name)] = float(value)

    def _box(self, box: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        box = self.default_box if box is None else box
        return box.to(dtype=like.dtype, device=like.device)

    def _delta(self, positions: torch.Tensor, to: int, origin: int, box: torch.Tensor | None) -> torch.Tensor:
        """``positions[atom to] - positions[atom origin]`` per term, minimum image if periodic: [B, K, 3]."""
        delta = positions[:, self.atoms[:, to], :] - positions[:, self.atoms[:, origin], :]
        if self.periodic:
            delta = minimum_image(delta, self._box(box, positions))
        return delta

    def _energy(self, geometry: dict[str, torch.Tensor], positions: torch.Tensor, box=None) -> torch.Tensor:
        values: dict[str, torch.Tensor] = dict(geometry)
        parameters = self.term_parameters.to(positions.dtype)
        for p, name in enumerate(self.parameter_names):
            values[name] = parameters[:, p]
        global_values = self.global_values.to(positions.dtype)
        for g, name in enumerate(self.global_names):
            values.setdefault(name, global_values[g])
        batch = positions.shape[0]
        if self.num_terms == 0:
            return positions.new_zeros(batch)
        energy = self.expression(values, box=box)
        energy = energy.to(positions.dtype)
        return torch.broadcast_to(energy, (batch, self.num_terms)).sum(-1)

    @classmethod
    def from_openmm(cls, force: openmm.Force, system: openmm.System) -> "_CustomTerm":
        """The term of a Custom{Bond,Angle,Torsion,External}Force (read through `openmm_accessors`)."""
        num_parameters, parameter_name, num_terms, term_parameters = (getattr(force, a) for a in cls.openmm_accessors)
        names = [parameter_name(i) for i in range(num_parameters())]
        atoms, parameters = [], []
        for i in range(num_terms()):
            *particles, params = term_parameters(i)
            atoms.append(tuple(particles))
            parameters.append([float(v) for v in params])
        global_names = [force.getGlobalParameterName(i) for i in range(force.getNumGlobalParameters())]
        defaults = [float(force.getGlobalParameterDefaultValue(i)) for i in range(force.getNumGlobalParameters())]
        return cls(
            force.getEnergyFunction(), atoms, np.asarray(parameters, dtype=np.float64).reshape(len(atoms), len(names)),
            names, global_names, defaults, force.usesPeriodicBoundaryConditions(), _default_box(system),
            functions=tabulated_functions_of(force),
        )

    def extra_repr(self) -> str:
        return f"{self.expression_text!r}, terms={self.num_terms}, periodic={self.periodic}"


class CustomBondTerm(_CustomTerm):
    """``CustomBondForce``: energy expression of ``r`` (nm) summed over bonds."""

    openmm_name = "CustomBondForce"
    geometric_variables = ("r",)
    width = 2
    openmm_accessors = ("getNumPerBondParameters", "getPerBondParameterName", "getNumBonds", "getBondParameters")

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        r = torch.linalg.vector_norm(self._delta(positions, 1, 0, box), dim=-1)
        return self._energy({"r": r}, positions)


class CustomAngleTerm(_CustomTerm):
    """``CustomAngleForce``: energy expression of ``theta`` (rad, angle at particle 2) summed over angles."""

    openmm_name = "CustomAngleForce"
    geometric_variables = ("theta",)
    width = 3
    openmm_accessors = ("getNumPerAngleParameters", "getPerAngleParameterName", "getNumAngles", "getAngleParameters")

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        u = self._delta(positions, 0, 1, box)  # r1 - r2
        v = self._delta(positions, 2, 1, box)  # r3 - r2
        theta = bond_angle(u, torch.zeros_like(u), v)
        return self._energy({"theta": theta}, positions)


class CustomTorsionTerm(_CustomTerm):
    """``CustomTorsionForce``: energy expression of ``theta`` (rad, dihedral 1-2-3-4 in [-pi, pi])."""

    openmm_name = "CustomTorsionForce"
    geometric_variables = ("theta",)
    width = 4
    openmm_accessors = ("getNumPerTorsionParameters", "getPerTorsionParameterName", "getNumTorsions", "getTorsionParameters")

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        if self.periodic:
            # OpenMM's three minimum-image differences 1-2, 3-2, 3-4, laid out as points around 2.
            d12 = self._delta(positions, 0, 1, box)
            d32 = self._delta(positions, 2, 1, box)
            d34 = self._delta(positions, 2, 3, box)
            theta = dihedral_angle(d12, torch.zeros_like(d12), d32, d32 - d34)
        else:
            theta = dihedral_angle(*(positions[:, self.atoms[:, k], :] for k in range(4)))
        return self._energy({"theta": theta}, positions)


class CustomExternalTerm(_CustomTerm):
    """``CustomExternalForce``: energy expression of the particle's ``x, y, z`` (nm) summed over particles.

    ``periodicdistance(x, y, z, x0, y0, z0)`` is the minimum-image distance in the box (the
    System's default box when ``forward`` gets ``box=None``).
    """

    openmm_name = "CustomExternalForce"
    geometric_variables = ("x", "y", "z")
    width = 1
    openmm_accessors = ("getNumPerParticleParameters", "getPerParticleParameterName", "getNumParticles", "getParticleParameters")

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        xyz = positions[:, self.atoms[:, 0], :]
        geometry = {"x": xyz[..., 0], "y": xyz[..., 1], "z": xyz[..., 2]}
        return self._energy(geometry, positions, box=self._box(box, positions))
