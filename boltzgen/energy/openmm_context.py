"""One OpenMM Context that evaluates a batch of configurations, row by row, robust to bad rows.

Torch-free on purpose: worker processes import it (see `boltzgen.energy.openmm_worker`).
Units are OpenMM's: positions in nm, energies in kJ/mol, forces in kJ/mol/nm.
"""

from __future__ import annotations

import math

import numpy as np
import openmm

from boltzgen.energy.openmm_platforms import create_context

_KJ_PER_MOL = openmm.unit.kilojoule_per_mole
_KJ_PER_MOL_NM = _KJ_PER_MOL / openmm.unit.nanometer

# OpenMM's public State.getForces(asNumpy=True) builds a unit-carrying copy (~15 us for 22 atoms,
# as long as the energy evaluation itself); State._getVectorAsNumpy fills a given float64 array
# in place (~0.5 us). Use it where this OpenMM version has it; tests compare against the public API.
_HAS_FAST_READOUT = hasattr(openmm.State, "_getVectorAsNumpy")


def read_potential_energy(state: openmm.State) -> float:
    """Potential energy (kJ/mol) of a State that holds energies."""
    if _HAS_FAST_READOUT:
        return float(state.getPotentialEnergy()._value)  # the wrapper always returns kJ/mol
    return float(state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL))


def read_forces_into(state: openmm.State, out: np.ndarray) -> None:
    """Copy the forces (kJ/mol/nm) of a State that holds forces into ``out``, ``[N, 3]`` float64, C-contiguous."""
    if _HAS_FAST_READOUT:
        state._getVectorAsNumpy(openmm.State.Forces, out)
    else:
        out[...] = state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM)


class ContextEvaluator:
    """Evaluates configurations of ``system`` on one Context of the named platform.

    Rows with non-finite coordinates are skipped; rows whose evaluation raises an OpenMM error or
    returns a non-finite energy or force get energy ``+inf`` and force 0, and the Context is
    reinitialised (recreated if that fails too) so that the next row is evaluated from a clean state.
    Not thread-safe: use one evaluator per thread.
    """

    def __init__(self, system: openmm.System, platform_name: str, properties: dict[str, str]):
        self._system = system
        self._platform_name = platform_name
        self._properties = dict(properties)
        self._context = create_context(system, platform_name, self._properties)
        self.n_particles: int = system.getNumParticles()
        #: Virtual sites are placed from their parents before each evaluation (their input
        #: coordinates are ignored) and get force 0.
        self._virtual_sites = [i for i in range(self.n_particles) if system.isVirtualSite(i)]
        self._has_virtual_sites = bool(self._virtual_sites)
        #: How many times the Context was reinitialised or recreated after a failed row.
        self.n_recoveries: int = 0

    def evaluate_into(self, positions: np.ndarray, energies: np.ndarray, forces: np.ndarray | None) -> int:
        """Evaluate a batch; return how many rows failed (non-finite input or result).

        Args:
            positions: ``[b, N, 3]`` float64, nm.
            energies: output ``[b]`` float64, kJ/mol; ``+inf`` for failed rows.
            forces: output ``[b, N, 3]`` float64, C-contiguous, kJ/mol/nm (0 for failed rows), or
                ``None`` to compute energies only.
        """
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        if positions.ndim != 3 or positions.shape[1:] != (self.n_particles, 3):
            raise ValueError(f"expected positions of shape [b, {self.n_particles}, 3], got {list(positions.shape)}")
        n_rows = len(positions)
        energies.fill(np.inf)
        if forces is not None:
            forces.fill(0.0)
        want_forces = forces is not None
        if np.isfinite(positions).all():
            rows = range(n_rows)
        else:
            rows = np.flatnonzero(np.isfinite(positions.reshape(n_rows, -1)).all(axis=1)).tolist()
        n_failed = n_rows - len(rows)
        for row in rows:
            try:
                self._context.setPositions(positions[row])
                if self._has_virtual_sites:
                    self._context.computeVirtualSites()
                state = self._context.getState(energy=True, forces=want_forces)
                energy = read_potential_energy(state)
                if want_forces:
                    read_forces_into(state, forces[row])
                    if self._has_virtual_sites:
                        # OpenMM hands a site's force on to its parents but still reports it on the
                        # site; the energy does not depend on the site's own coordinates: -du/dx = 0.
                        forces[row, self._virtual_sites] = 0.0
            except openmm.OpenMMException:  # e.g. "Particle coordinate is NaN" on the CPU platform
                energy = math.nan
            if not math.isfinite(energy):
                n_failed += 1
                if want_forces:
                    forces[row] = 0.0
                self._recover()
                continue
            energies[row] = energy
        if want_forces and not np.isfinite(forces).all():  # finite energy but NaN/inf forces
            bad_forces = ~np.isfinite(forces.reshape(n_rows, -1)).all(axis=1)
            energies[bad_forces] = np.inf
            forces[bad_forces] = 0.0
            n_failed += int(np.count_nonzero(bad_forces))
            self._recover()
        return n_failed

    def _recover(self) -> None:
        """Bring the Context back to a clean state after a failed evaluation."""
        self.n_recoveries += 1
        try:
            self._context.reinitialize(preserveState=False)
        except openmm.OpenMMException:
            self._context = create_context(self._system, self._platform_name, self._properties)
