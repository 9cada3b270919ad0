"""OpenMM platforms for reference MD: names, single-threaded properties, and picking the fastest.

Replicas run in parallel processes, one OpenMM Context each, so every Context is single-threaded:
the CPU platform gets ``Threads=1``; the Reference platform is single-threaded anyway.
"""

from __future__ import annotations

import time

import numpy as np

from boltzgen.energy.openmm_platforms import available_platform_names, context_properties, get_platform

#: The value of ``--platform`` that picks the fastest platform by a short measurement.
AUTO = "auto"


def platform_properties(name: str) -> dict[str, str]:
    """Context properties for one replica on platform ``name`` (one thread on CPU)."""
    return context_properties(name, None, single_threaded=True)


def measure_steps_per_second(
    openmm_system,
    positions_nm: np.ndarray,
    temperature_K: float,
    platform: str,
    *,
    timestep_fs: float = 1.0,
    budget_s: float = 0.3,
) -> float:
    """Langevin steps per second of ``openmm_system`` on ``platform`` (one thread), measured briefly.

    Runs batches of steps from ``positions_nm`` ([N, 3] nm) for about ``budget_s`` seconds after a
    short warm-up. Returns 0.0 if the platform fails for this system.
    """
    import openmm
    from openmm import unit

    try:
        integrator = openmm.LangevinMiddleIntegrator(
            temperature_K * unit.kelvin, 1.0 / unit.picosecond, timestep_fs * unit.femtosecond
        )
        context = openmm.Context(openmm_system, integrator, get_platform(platform), platform_properties(platform))
        context.setPositions(np.asarray(positions_nm, dtype=np.float64))
        context.setVelocitiesToTemperature(temperature_K * unit.kelvin, 1)
        integrator.step(10)
        steps, start = 0, time.perf_counter()
        batch = 20
        while time.perf_counter() - start < budget_s:
            integrator.step(batch)
            steps += batch
            batch = min(batch * 2, 2000)
        return steps / (time.perf_counter() - start)
    except Exception:  # noqa: BLE001 - a platform that cannot run this system is simply not chosen
        return 0.0


def fastest_platform(openmm_system, positions_nm: np.ndarray, temperature_K: float, *, timestep_fs: float = 1.0) -> str:
    """Name of the installed platform that integrates ``openmm_system`` fastest on one thread.

    For alanine dipeptide (22 atoms, OBC) this is Reference: here the CPU platform with one thread
    ran about 20x slower.
    """
    speeds = {
        name: measure_steps_per_second(openmm_system, positions_nm, temperature_K, name, timestep_fs=timestep_fs)
        for name in available_platform_names()
    }
    best = max(speeds, key=speeds.get)
    if speeds[best] <= 0:
        raise RuntimeError(f"no OpenMM platform could integrate this system (tried {', '.join(speeds)})")
    return best
