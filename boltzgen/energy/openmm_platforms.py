"""OpenMM platforms: look them up by name, set their properties, and pick the fastest by measurement.

Torch-free on purpose: worker processes import it (see `boltzgen.energy.openmm_worker`).
"""

from __future__ import annotations

import time

import numpy as np
import openmm

#: The CPU platform's property that sets its number of threads per Context.
CPU_THREADS_PROPERTY = "Threads"


def available_platform_names() -> list[str]:
    """Names of the OpenMM platforms registered in this process, e.g. ``["Reference", "CPU"]``."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def canonical_platform_name(name: str) -> str:
    """The registered spelling of platform ``name`` (case-insensitive); ValueError listing the
    available platforms if there is none."""
    available = available_platform_names()
    for candidate in available:
        if candidate.lower() == str(name).lower():
            return candidate
    raise ValueError(
        f"unknown OpenMM platform {name!r}; available platforms: {', '.join(available)} "
        f"(or 'auto' to pick the fastest by measurement)"
    )


def get_platform(name: str) -> openmm.Platform:
    """The OpenMM platform called ``name`` (case-insensitive); ValueError if there is none."""
    return openmm.Platform.getPlatformByName(canonical_platform_name(name))


def context_properties(
    platform_name: str, user_properties: dict[str, str] | None, single_threaded: bool
) -> dict[str, str]:
    """Platform properties for one Context.

    With ``single_threaded`` (several Contexts run in parallel) the CPU platform gets ``Threads=1``
    so the Contexts do not fight over the cores. ``user_properties`` win over this default.
    """
    properties: dict[str, str] = {}
    if single_threaded and platform_name == "CPU":
        properties[CPU_THREADS_PROPERTY] = "1"
    properties.update({str(key): str(value) for key, value in (user_properties or {}).items()})
    return properties


def known_properties(platform_name: str, properties: dict[str, str] | None) -> dict[str, str]:
    """The entries of ``properties`` whose names the named platform knows (others are dropped)."""
    known = set(get_platform(platform_name).getPropertyNames())
    return {key: value for key, value in (properties or {}).items() if key in known}


def create_context(system: openmm.System, platform_name: str, properties: dict[str, str]) -> openmm.Context:
    """A Context of ``system`` on the named platform (the integrator is a placeholder: nothing moves)."""
    integrator = openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, get_platform(platform_name), dict(properties))


def probe_positions(system: openmm.System, spacing_nm: float = 0.3) -> np.ndarray:
    """Positions ``[N, 3]`` (nm) on a cubic lattice: no two particles closer than the spacing.

    Good enough to time an energy evaluation (its cost barely depends on the configuration); for
    periodic systems the lattice is shrunk to fit into the box.
    """
    n_particles = system.getNumParticles()
    side = max(1, int(np.ceil(n_particles ** (1.0 / 3.0))))
    if system.usesPeriodicBoundaryConditions():
        box = system.getDefaultPeriodicBoxVectors()
        shortest_edge = min(vector.value_in_unit(openmm.unit.nanometer)[axis] for axis, vector in enumerate(box))
        spacing_nm = min(spacing_nm, 0.9 * shortest_edge / side)
    grid = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    return spacing_nm * grid[:n_particles].astype(np.float64)


def seconds_per_evaluation(
    system: openmm.System,
    platform_name: str,
    properties: dict[str, str],
    n_evaluations: int = 32,
    time_budget_s: float = 0.05,
) -> float:
    """Median wall time (s) of one setPositions + getState(energy, forces) on a fresh Context.

    Runs ``n_evaluations`` timed evaluations after two warm-up ones, or fewer (at least three) when
    they take longer than ``time_budget_s`` together. Context creation is not timed.
    """
    context = create_context(system, platform_name, properties)
    positions = probe_positions(system)
    for _ in range(2):
        context.setPositions(positions)
        context.getState(energy=True, forces=True)
    durations = []
    started = time.perf_counter()
    while len(durations) < n_evaluations and (len(durations) < 3 or time.perf_counter() - started < time_budget_s):
        tick = time.perf_counter()
        context.setPositions(positions)
        context.getState(energy=True, forces=True)
        durations.append(time.perf_counter() - tick)
    return float(np.median(durations))


def fastest_platform(
    system: openmm.System, user_properties: dict[str, str] | None, single_threaded: bool
) -> tuple[str, dict[str, float]]:
    """The platform with the shortest measured evaluation time for ``system``, and all timings (s).

    Platforms that fail to create a Context or to evaluate (e.g. CUDA without a GPU) are skipped.
    ``user_properties`` are passed only to the platform that knows their names.
    """
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in available_platform_names():
        try:
            properties = context_properties(name, known_properties(name, user_properties), single_threaded)
            timings[name] = seconds_per_evaluation(system, name, properties)
        except openmm.OpenMMException as error:
            failures[name] = str(error).strip()
    if not timings:
        raise RuntimeError(f"no OpenMM platform could evaluate this system: {failures}")
    return min(timings, key=timings.get), timings
