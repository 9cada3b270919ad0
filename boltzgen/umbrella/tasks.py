"""The two kinds of work an umbrella run hands to worker processes, each writing its own result file.

- `ChainTask`: build a repeat's starting structure and walk the seeding chain through all windows
  (``boltzgen.umbrella.starts``) -> ``seeds/repeat_RR.npz``;
- `WindowTask`: one window of one repeat: restraint at the window centre (phi, and psi in 2-D runs),
  new velocities, equilibration, then a frame every ``frame_interval_ps`` (phi, psi, unbiased
  reduced potential, positions) -> ``windows/rRR_wKKK.npz``, written atomically once the window is
  complete (window ``w = j * M + m`` for phi centre j and psi centre m; ``w = j`` in 1-D runs).

A task polls ``should_stop`` between slices of dynamics and returns early (writing nothing) when
asked; it reports progress through ``report(units)`` (windows seeded, frames produced).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from boltzgen.umbrella.config import UmbrellaConfig
from boltzgen.umbrella.restraint import dihedrals, window_bias_kj_mol
from boltzgen.umbrella.starts import RestrainedSimulation, seed_windows, seed_windows_2d, starting_structure
from boltzgen.umbrella.storage import read_seeds, write_seeds, write_window
from boltzgen.units import kt_kj_per_mol

#: Frames between progress reports (and ``should_stop`` polls) inside a window.
_FRAMES_PER_REPORT = 10


@dataclass(frozen=True)
class ChainTask:
    repeat: int
    config: dict
    system_xml: str
    torsions: dict
    seeds_path: str


@dataclass(frozen=True)
class WindowTask:
    repeat: int
    window: int
    config: dict
    system_xml: str
    torsions: dict
    seeds_path: str
    window_path: str


def _simulation(
    task, config: UmbrellaConfig, center_rad: float, integrator_seed: int, psi_center_rad: float = 0.0
) -> RestrainedSimulation:
    """The restrained simulation of a task: phi restraint, plus the psi one in 2-D runs."""
    psi = {}
    if config.two_dimensional:
        psi = dict(
            psi_atoms=task.torsions["psi"],
            psi_center_rad=float(psi_center_rad),
            psi_force_constant=config.psi_force_constant,
        )
    return RestrainedSimulation(
        task.system_xml,
        task.torsions["phi"],
        config.force_constant,
        center_rad,
        temperature_K=config.temperature_K,
        friction_per_ps=config.friction_per_ps,
        timestep_fs=config.timestep_fs,
        platform=config.platform,
        integrator_seed=integrator_seed,
        **psi,
    )


def run_chain(task: ChainTask, report: Callable[[int], None], should_stop: Callable[[], bool]) -> bool:
    """Build the starting structure of ``task.repeat`` and seed every window; False if stopped."""
    from boltzgen import systems

    config = UmbrellaConfig.from_dict(task.config)
    system = systems.load(config.system, **config.system_options)
    seeds = config.chain_seeds(task.repeat)
    torsions = {name: np.asarray(atoms) for name, atoms in task.torsions.items()}
    start_name = config.start_of_repeat(task.repeat)
    positions, info = starting_structure(system, task.system_xml, start_name, torsions, config, seeds, should_stop)
    if positions is None:
        return False
    simulation = _simulation(task, config, 0.0, seeds.integrator_seed)
    started = time.perf_counter()
    if config.two_dimensional:
        window_positions = seed_windows_2d(
            simulation,
            positions,
            config.centers_rad,
            config.psi_centers_rad,
            torsions["phi"],
            torsions["psi"],
            config.seeding_steps,
            seeds.velocity_seed,
            should_stop=should_stop,
            report=lambda window: report(1),
        )
    else:
        window_positions = seed_windows(
            simulation,
            positions,
            config.centers_rad,
            torsions["phi"],
            config.seeding_steps,
            seeds.velocity_seed,
            should_stop=should_stop,
            report=lambda window: report(1),
        )
    if window_positions is None:
        return False
    start = dict(asdict(info), repeat=task.repeat, chain_wall_s=time.perf_counter() - started)
    start["seed_phi_deg"] = np.rad2deg(dihedrals(window_positions, torsions["phi"])).tolist()
    if "psi" in torsions:
        start["seed_psi_deg"] = np.rad2deg(dihedrals(window_positions, torsions["psi"])).tolist()
    write_seeds(Path(task.seeds_path), window_positions, start)
    return True


def run_window(task: WindowTask, report: Callable[[int], None], should_stop: Callable[[], bool]) -> bool:
    """Simulate window ``task.window`` of repeat ``task.repeat`` and write its file; False if stopped."""
    config = UmbrellaConfig.from_dict(task.config)
    center = float(config.window_phi_centers_rad[task.window])
    psi_center = float(config.window_psi_centers_rad[task.window])
    seeds = config.window_seeds(task.repeat, task.window)
    seed_positions, _ = read_seeds(Path(task.seeds_path))
    simulation = _simulation(task, config, center, seeds.integrator_seed, psi_center)
    simulation.set_positions(seed_positions[task.window])
    simulation.set_velocities(seeds.velocity_seed)
    started = time.perf_counter()
    remaining = config.equilibration_steps
    slice_steps = _FRAMES_PER_REPORT * config.steps_per_frame
    while remaining > 0:
        if should_stop():
            return False
        simulation.step(min(remaining, slice_steps))
        remaining -= slice_steps
    n_frames, n_atoms = config.n_frames, len(seed_positions[task.window])
    positions = np.empty((n_frames, n_atoms, 3), dtype=np.float64)
    energies = np.empty(n_frames, dtype=np.float64)
    unreported = 0
    for frame in range(n_frames):
        if frame % _FRAMES_PER_REPORT == 0 and should_stop():
            return False
        simulation.step(config.steps_per_frame)
        positions[frame], energies[frame] = simulation.frame()
        unreported += 1
        if unreported == _FRAMES_PER_REPORT:
            report(unreported)
            unreported = 0
    if unreported:
        report(unreported)
    kt = kt_kj_per_mol(config.temperature_K)
    phi = dihedrals(positions, task.torsions["phi"])
    psi = dihedrals(positions, task.torsions["psi"]) if "psi" in task.torsions else None
    arrays = {
        "phi": phi,
        "reduced_potential": energies / kt,
        "bias_kT": window_bias_kj_mol(phi, psi, center, psi_center, config.force_constant, config.psi_force_constant)
        / kt,
        "positions": positions.astype(np.float32),
        "time_ps": config.frame_interval_ps * np.arange(1, n_frames + 1, dtype=np.float64),
    }
    if psi is not None:
        arrays["psi"] = psi
    info = {
        "repeat": task.repeat,
        "window": task.window,
        "center_rad": center,
        **({"psi_center_rad": psi_center} if config.two_dimensional else {}),
        "integrator_seed": seeds.integrator_seed,
        "velocity_seed": seeds.velocity_seed,
        "wall_s": time.perf_counter() - started,
        "simulated_ps": config.equilibration_ps + config.ps_per_window,
    }
    write_window(Path(task.window_path), arrays, info)
    return True
