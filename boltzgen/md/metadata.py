"""Metadata recorded with MD data: how the system, integrator and seeds were set up, and versions."""

from __future__ import annotations

import datetime
import platform as python_platform
from importlib import metadata as package_metadata
from typing import Any

from boltzgen.md.config import MDConfig
from boltzgen.md.platforms import platform_properties
from boltzgen.md.replica import MINIMISATION_TOLERANCE_KJ_PER_MOL_NM
from boltzgen.md.start import SYSTEM_START_METADATA, StartStructure
from boltzgen.md.storage import FORMAT_NAME, FORMAT_VERSION


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (e.g. ``2025-01-31T12:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version(distribution: str) -> str | None:
    try:
        return package_metadata.version(distribution)
    except package_metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions of boltzgen, OpenMM, torch, numpy, mdtraj and Python (without importing torch)."""
    import openmm

    import boltzgen

    return {
        "boltzgen": boltzgen.__version__,
        "openmm": openmm.__version__,
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "mdtraj": _version("mdtraj"),
        "python": python_platform.python_version(),
    }


def run_metadata(config: MDConfig, system, start: StartStructure | None = None) -> dict[str, Any]:
    """Metadata of a run of ``config`` on ``system`` (a `MolecularSystem`), as stored in metadata.json.

    ``start`` is the starting-structure file (``--start``), None for the system's own positions.
    """
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "system": config.system,
        "description": system.description,
        "forcefield_files": list(system.forcefield),
        "system_options": dict(config.system_options),
        "system_builder_options": dict(getattr(system, "options", {}) or {}),
        "n_atoms": int(system.n_atoms),
        "start_structure": start.to_metadata() if start is not None else dict(SYSTEM_START_METADATA),
        "temperature_K": config.temperature_K,
        "integrator": config.integrator,
        "timestep_fs": config.timestep_fs,
        "friction_per_ps": config.friction_per_ps,
        "frame_interval_ps": config.frame_interval_ps,
        "steps_per_frame": config.steps_per_frame,
        "warmup_steps": config.warmup_steps,
        "minimisation": {"method": "openmm.LocalEnergyMinimizer", "tolerance_kJ_per_mol_nm": MINIMISATION_TOLERANCE_KJ_PER_MOL_NM},
        "ns_per_replica": config.ns,
        "n_replicas": config.n_replicas,
        "n_frames_per_replica": config.n_frames,
        "seed": config.seed,
        "replica_seeds": [
            {"replica": i, "integrator_seed": s.integrator_seed, "velocity_seed": s.velocity_seed}
            for i, s in enumerate(config.seeds())
        ],
        "platform": config.platform,
        "platform_properties": platform_properties(config.platform),
        "versions": software_versions(),
        "host": python_platform.node(),
        "date_started_utc": utc_now(),
        "units": {
            "positions": "nm",
            "forces": "kJ/mol/nm",
            "potential_energy": "kJ/mol",
            "reduced_energy": "kT",
            "time_ps": "ps",
        },
    }
