"""Containers for ready-made systems: `MolecularSystem` (an OpenMM system) and `ToySystem`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MolecularSystem:
    """A molecule ready to simulate or to sample.

    Attributes:
        name: registry name, e.g. ``"alanine_dipeptide_implicit"``.
        description: one line for humans (force field, solvent, temperature).
        openmm_system: the ``openmm.System``.
        topology: the ``openmm.app.Topology``.
        positions: starting (minimised) positions, ``[N, 3]`` float64 array in nm.
        temperature: temperature in K that defines kT for this system.
        forcefield: the OpenMM force-field files the system was built from.
        friction_per_ps: Langevin friction of the reference MD protocol (1/ps).
        options: builder options (recorded in MD and training metadata).
    """

    name: str
    description: str
    openmm_system: Any
    topology: Any
    positions: np.ndarray
    temperature: float
    forcefield: tuple[str, ...] = ()
    friction_per_ps: float = 1.0
    options: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return int(self.openmm_system.getNumParticles())

    @property
    def dim(self) -> int:
        """Number of Cartesian degrees of freedom, 3N."""
        return 3 * self.n_atoms

    @property
    def mdtraj_topology(self):
        """The topology as an ``mdtraj.Topology`` (built on first use)."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.topology)

    def energy(self, backend: str = "auto", **options):
        """The system's reduced energy (kT): `boltzgen.energy.TorchEnergy` or `OpenMMEnergy`.

        ``backend``: ``"torch"``, ``"openmm"`` or ``"auto"`` (torch when every force compiles); other
        options go to `boltzgen.energy.backends.system_energy` (``platform``, ``device``, ...).
        """
        from boltzgen.energy.backends import system_energy

        return system_energy(self.openmm_system, self.temperature, backend=backend, **options)


@dataclass
class ToySystem:
    """A low-dimensional test energy with exact reference values.

    Attributes:
        name, description: as for `MolecularSystem`.
        toy_energy: the `boltzgen.energy.Energy` (dimensionless: ``temperature`` is None).
        positions: a starting point, ``[D]`` float64 array.
        references: exact values computed by quadrature (e.g. ``log_z``, state free energies).
    """

    name: str
    description: str
    toy_energy: Any
    positions: np.ndarray
    references: dict = field(default_factory=dict)
    temperature: float | None = None
    openmm_system: Any = None

    @property
    def dim(self) -> int:
        return int(self.toy_energy.dim)

    def energy(self, **options):
        """The toy energy (an `Energy`); accepts no options."""
        if options:
            raise TypeError(f"toy system {self.name!r} takes no energy options, got {sorted(options)}")
        return self.toy_energy
