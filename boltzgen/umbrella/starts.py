"""Starting structures of the repeats, and the steered chain that seeds every window from one of them.

Independent repeats must differ in their seeds *and* in where they start (METHODS.md §0), so that
a window that remembers its start (a slow psi, a phi window split between two basins) shows up as
a disagreement between repeats instead of hiding behind a small MBAR error. The starts, cycled
over the repeats:

- ``c7eq``: the system's shipped structure (alanine dipeptide: phi -80, psi 150 degrees);
- ``alpha_l``: ``systems/data/alanine_dipeptide_alpha_l.pdb`` when that file exists (same atoms),
  otherwise steered there from the shipped structure: phi 60, psi 40 degrees;
- ``alpha_r``: steered from the shipped structure to phi -70, psi -40 degrees.

Steering: both backbone torsions restrained (500 kJ/mol/rad^2), the centres moved linearly from
the present angles to the target in 20 ps, 20 ps more at the target, then minimised restrained.

Seeding chain of a repeat (one process, sequential): from its start, minimised with the phi
restraint at the nearest window centre, walk window by window in both directions around the
circle (the halves meet on the far side); at each window the restraint centre jumps 1 spacing
(0.5 k spacing^2 = 7.6 kJ/mol at the defaults) and ``seeding_ps`` of restrained dynamics follow; the
last configuration is that window's starting point. psi is not restrained along the way, so each
chain carries its own psi history into the windows.

2-D runs (psi windows, :func:`seed_windows_2d`): the chain walks phi in the same way with psi
restrained at the psi centre nearest the start's psi; at every phi centre it then walks psi
window by window in both directions round the circle (phi held at that centre), ``seeding_ps`` at
each psi centre, and comes back to the phi walk where it left it. Every (phi, psi) window is
reached by a path of restrained runs from the repeat's own start.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import numpy as np

from boltzgen.errors import BoltzgenError
from boltzgen.md.config import ReplicaSeeds
from boltzgen.md.platforms import get_platform, platform_properties
from boltzgen.umbrella.restraint import (
    CENTER_PARAMETER,
    PSI_CENTER_PARAMETER,
    dihedrals,
    free_force_group,
    torsion_restraint,
    wrap_angle,
)

#: Names of the starting structures, and the (phi, psi) targets in degrees of the steered ones.
START_NAMES = ("c7eq", "alpha_l", "alpha_r")
STEERED_TARGETS_DEG = {"alpha_l": (60.0, 40.0), "alpha_r": (-70.0, -40.0)}
#: Shipped alpha_L structure of alanine dipeptide (used when present).
ALPHA_L_PDB = "alanine_dipeptide_alpha_l.pdb"
#: Steering protocol (see the module docstring).
STEER_FORCE_CONSTANT = 500.0
STEER_MOVE_PS = 20.0
STEER_HOLD_PS = 20.0
#: Minimisation tolerance, kJ/mol/nm (as boltzgen.md).
MINIMISATION_TOLERANCE = 10.0


@dataclass(frozen=True)
class StartInfo:
    """Where a starting structure came from, and its backbone angles (degrees)."""

    name: str
    source: str
    phi_deg: float
    psi_deg: float | None


class RestrainedSimulation:
    """A Langevin Context of a system plus the phi umbrella restraint (and optionally a psi one).

    The restraints live in a force group of their own (``restraint_group``), so the unbiased
    potential energy is the energy of all other groups (:meth:`frame`). The psi restraint (when
    ``psi_atoms`` is given) has force constant ``psi_force_constant`` and its centre is the global
    parameter ``PSI_CENTER_PARAMETER``.
    """

    def __init__(
        self,
        system_xml: str,
        phi_atoms,
        force_constant: float,
        center_rad: float,
        *,
        temperature_K: float,
        friction_per_ps: float,
        timestep_fs: float,
        platform: str,
        integrator_seed: int,
        psi_atoms=None,
        psi_center_rad: float | None = None,
        psi_force_constant: float = STEER_FORCE_CONSTANT,
    ):
        import openmm
        from openmm import unit

        system = openmm.XmlSerializer.deserialize(system_xml)
        self.restraint_group = free_force_group(system)
        system.addForce(torsion_restraint(phi_atoms, center_rad, force_constant, self.restraint_group))
        if psi_atoms is not None:
            system.addForce(
                torsion_restraint(psi_atoms, psi_center_rad, psi_force_constant, self.restraint_group, psi=True)
            )
        self.integrator = openmm.LangevinMiddleIntegrator(
            temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
        )
        self.integrator.setRandomNumberSeed(int(integrator_seed))
        self.context = openmm.Context(system, self.integrator, get_platform(platform), platform_properties(platform))
        self.temperature_K = temperature_K
        self.timestep_fs = timestep_fs
        self.unbiased_groups = {g for g in range(32) if g != self.restraint_group}

    def set_positions(self, positions_nm) -> None:
        self.context.setPositions(np.asarray(positions_nm, dtype=np.float64))

    def set_center(self, center_rad: float, parameter: str = CENTER_PARAMETER) -> None:
        self.context.setParameter(parameter, float(center_rad))

    def set_velocities(self, velocity_seed: int) -> None:
        from openmm import unit

        self.context.setVelocitiesToTemperature(self.temperature_K * unit.kelvin, int(velocity_seed))

    def minimise(self) -> None:
        import openmm

        openmm.LocalEnergyMinimizer.minimize(self.context, MINIMISATION_TOLERANCE, 0)

    def step(self, steps: int) -> None:
        """Integrate; OpenMM failures become BoltzgenError."""
        if steps <= 0:
            return
        try:
            self.integrator.step(int(steps))
        except Exception as error:  # noqa: BLE001 - OpenMM raises a bare Exception
            raise BoltzgenError(f"the dynamics failed ({error}); try a smaller time step") from None

    def positions(self) -> np.ndarray:
        from openmm import unit

        state = self.context.getState(getPositions=True)
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)

    def frame(self) -> tuple[np.ndarray, float]:
        """Present positions ``[N, 3]`` nm and unbiased potential energy (kJ/mol, restraint excluded)."""
        from openmm import unit

        state = self.context.getState(getPositions=True, getEnergy=True, groups=self.unbiased_groups)
        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        energy = float(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        if not np.isfinite(energy) or not np.all(np.isfinite(positions)):
            raise BoltzgenError("the dynamics blew up (non-finite positions or energy); try a smaller time step")
        return positions, energy


def _shipped_alpha_l(system, n_atoms: int) -> tuple[np.ndarray, str] | None:
    """Positions from ``systems/data/alanine_dipeptide_alpha_l.pdb`` for alanine dipeptide, if shipped."""
    if not str(getattr(system, "name", "")).startswith("alanine_dipeptide"):
        return None
    try:
        resource = resources.files("boltzgen.systems") / "data" / ALPHA_L_PDB
        if not resource.is_file():
            return None
        from openmm import app, unit

        with resources.as_file(resource) as path:
            pdb = app.PDBFile(str(path))
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    ours = [(a.residue.name, a.name) for a in system.topology.atoms()]
    theirs = [(a.residue.name, a.name) for a in pdb.topology.atoms()]
    if len(theirs) != n_atoms or ours != theirs:
        raise BoltzgenError(
            f"{ALPHA_L_PDB} does not hold the same atoms in the same order as {system.name} "
            f"({len(theirs)} vs {n_atoms} atoms); cannot use it as a starting structure"
        )
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    return positions, f"systems/data/{ALPHA_L_PDB}"


def _steer(
    system_xml: str,
    positions_nm: np.ndarray,
    torsions: dict[str, np.ndarray],
    target_deg: tuple[float, float],
    config,
    seeds: ReplicaSeeds,
    should_stop: Callable[[], bool],
) -> np.ndarray | None:
    """Drag (phi, psi) to ``target_deg`` with two moving restraints; None if stopped."""
    phi0 = float(dihedrals(positions_nm, torsions["phi"]))
    psi0 = float(dihedrals(positions_nm, torsions["psi"]))
    phi_target, psi_target = np.deg2rad(target_deg)
    simulation = RestrainedSimulation(
        system_xml,
        torsions["phi"],
        STEER_FORCE_CONSTANT,
        phi0,
        temperature_K=config.temperature_K,
        friction_per_ps=config.friction_per_ps,
        timestep_fs=config.timestep_fs,
        platform=config.platform,
        integrator_seed=seeds.integrator_seed,
        psi_atoms=torsions["psi"],
        psi_center_rad=psi0,
    )
    simulation.set_positions(positions_nm)
    simulation.set_velocities(seeds.velocity_seed)
    # the shorter way round the circle for each angle
    d_phi = float(wrap_angle(phi_target - phi0))
    d_psi = float(wrap_angle(psi_target - psi0))
    n_moves = 20
    steps_per_move = int(round(STEER_MOVE_PS * 1000.0 / config.timestep_fs / n_moves))
    for i in range(1, n_moves + 1):
        if should_stop():
            return None
        simulation.set_center(phi0 + d_phi * i / n_moves)
        simulation.set_center(psi0 + d_psi * i / n_moves, PSI_CENTER_PARAMETER)
        simulation.step(steps_per_move)
    simulation.step(int(round(STEER_HOLD_PS * 1000.0 / config.timestep_fs)))
    simulation.minimise()
    return simulation.positions()


def starting_structure(
    system,
    system_xml: str,
    name: str,
    torsions: dict[str, np.ndarray],
    config,
    seeds: ReplicaSeeds,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[np.ndarray | None, StartInfo | None]:
    """Positions ``[N, 3]`` nm of the starting structure ``name`` and where they came from.

    Returns ``(None, None)`` if stopped while steering.
    """
    if name not in START_NAMES:
        raise ValueError(f"unknown starting structure {name!r}; choose from {', '.join(START_NAMES)}")
    positions = np.asarray(system.positions, dtype=np.float64)
    source = "the system's shipped structure"
    if name != "c7eq":
        shipped = _shipped_alpha_l(system, len(positions)) if name == "alpha_l" else None
        if shipped is not None:
            positions, source = shipped
        else:
            if "psi" not in torsions:
                raise BoltzgenError(f"starting structure {name!r} needs a backbone psi, which this molecule lacks")
            positions = _steer(system_xml, positions, torsions, STEERED_TARGETS_DEG[name], config, seeds, should_stop)
            if positions is None:
                return None, None
            phi_t, psi_t = STEERED_TARGETS_DEG[name]
            source = f"steered from the shipped structure to phi {phi_t:g}, psi {psi_t:g} degrees"
    psi = float(np.rad2deg(dihedrals(positions, torsions["psi"]))) if "psi" in torsions else None
    info = StartInfo(name, source, float(np.rad2deg(dihedrals(positions, torsions["phi"]))), psi)
    return positions, info


def seed_windows(
    simulation: RestrainedSimulation,
    start_positions_nm: np.ndarray,
    centers_rad: np.ndarray,
    phi_atoms,
    seeding_steps: int,
    velocity_seed: int,
    should_stop: Callable[[], bool] = lambda: False,
    report: Callable[[int], None] = lambda window: None,
) -> np.ndarray | None:
    """Starting positions ``[K, N, 3]`` of every window, by the steered chain (module docstring).

    ``simulation`` must carry the phi restraint at the run's force constant. Returns None if stopped.
    """
    n_windows = len(centers_rad)
    phi_start = float(dihedrals(start_positions_nm, phi_atoms))
    first = int(np.argmin(np.abs(wrap_angle(np.asarray(centers_rad) - phi_start))))
    simulation.set_positions(start_positions_nm)
    simulation.set_center(centers_rad[first])
    simulation.minimise()
    simulation.set_velocities(velocity_seed)
    simulation.step(seeding_steps)
    seeds = np.full((n_windows,) + np.shape(start_positions_nm), np.nan)
    seeds[first] = simulation.positions()
    report(first)
    at_first = simulation.context.getState(getPositions=True, getVelocities=True)
    up = n_windows // 2  # windows first+1 .. first+up; the rest downwards
    for direction, count in ((+1, up), (-1, n_windows - 1 - up)):
        simulation.context.setState(at_first)
        for step in range(1, count + 1):
            if should_stop():
                return None
            window = (first + direction * step) % n_windows
            simulation.set_center(centers_rad[window])
            simulation.step(seeding_steps)
            seeds[window] = simulation.positions()
            report(window)
    return seeds


def seed_windows_2d(
    simulation: RestrainedSimulation,
    start_positions_nm: np.ndarray,
    phi_centers_rad: np.ndarray,
    psi_centers_rad: np.ndarray,
    phi_atoms,
    psi_atoms,
    seeding_steps: int,
    velocity_seed: int,
    should_stop: Callable[[], bool] = lambda: False,
    report: Callable[[int], None] = lambda window: None,
) -> np.ndarray | None:
    """Starting positions ``[K * M, N, 3]`` of every (phi, psi) window (window ``j * M + m``).

    The steered chain of the module docstring: phi walked as in :func:`seed_windows` with psi held
    at the psi centre nearest the start, and from every phi centre a psi walk both ways round the
    circle. ``simulation`` must carry both restraints at the run's force constants. Returns None
    if stopped.
    """
    n_phi, n_psi = len(phi_centers_rad), len(psi_centers_rad)
    phi_start = float(dihedrals(start_positions_nm, phi_atoms))
    psi_start = float(dihedrals(start_positions_nm, psi_atoms))
    first_phi = int(np.argmin(np.abs(wrap_angle(np.asarray(phi_centers_rad) - phi_start))))
    first_psi = int(np.argmin(np.abs(wrap_angle(np.asarray(psi_centers_rad) - psi_start))))
    simulation.set_positions(start_positions_nm)
    simulation.set_center(phi_centers_rad[first_phi])
    simulation.set_center(psi_centers_rad[first_psi], PSI_CENTER_PARAMETER)
    simulation.minimise()
    simulation.set_velocities(velocity_seed)
    simulation.step(seeding_steps)
    seeds = np.full((n_phi * n_psi,) + np.shape(start_positions_nm), np.nan)

    def walk_psi(j: int) -> bool:
        """Seed the psi windows of phi window j from the present state; restore that state after."""
        seeds[j * n_psi + first_psi] = simulation.positions()
        report(j * n_psi + first_psi)
        here = simulation.context.getState(getPositions=True, getVelocities=True)
        up = n_psi // 2
        for direction, count in ((+1, up), (-1, n_psi - 1 - up)):
            simulation.context.setState(here)
            for step in range(1, count + 1):
                if should_stop():
                    return False
                m = (first_psi + direction * step) % n_psi
                simulation.set_center(psi_centers_rad[m], PSI_CENTER_PARAMETER)
                simulation.step(seeding_steps)
                seeds[j * n_psi + m] = simulation.positions()
                report(j * n_psi + m)
        simulation.context.setState(here)
        simulation.set_center(psi_centers_rad[first_psi], PSI_CENTER_PARAMETER)
        return True

    if not walk_psi(first_phi):
        return None
    at_first = simulation.context.getState(getPositions=True, getVelocities=True)
    up = n_phi // 2
    for direction, count in ((+1, up), (-1, n_phi - 1 - up)):
        simulation.context.setState(at_first)
        for step in range(1, count + 1):
            if should_stop():
                return None
            j = (first_phi + direction * step) % n_phi
            simulation.set_center(phi_centers_rad[j])
            simulation.step(seeding_steps)
            if not walk_psi(j):
                return None
    return seeds
