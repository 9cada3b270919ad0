"""Which OpenMM force compiles into which `ForceTerm`, and the clear error for the others.

`compile_forces(system)` returns one term per energy-carrying force of an ``openmm.System``.
"""

from __future__ import annotations

import importlib

import openmm

from boltzgen.energy.torch_forces.base import ForceTerm, UnsupportedForceError

#: OpenMM force class name -> (module in this package, ForceTerm class).
SUPPORTED_FORCES: dict[str, tuple[str, str]] = {
    "HarmonicBondForce": ("bonded", "HarmonicBondTerm"),
    "HarmonicAngleForce": ("bonded", "HarmonicAngleTerm"),
    "PeriodicTorsionForce": ("bonded", "PeriodicTorsionTerm"),
    "RBTorsionForce": ("bonded", "RBTorsionTerm"),
    "NonbondedForce": ("nonbonded", "NonbondedTerm"),
    "GBSAOBCForce": ("gbsa", "GBSAOBCTerm"),
    "CustomBondForce": ("custom_bonded", "CustomBondTerm"),
    "CustomAngleForce": ("custom_bonded", "CustomAngleTerm"),
    "CustomTorsionForce": ("custom_bonded", "CustomTorsionTerm"),
    "CustomExternalForce": ("custom_bonded", "CustomExternalTerm"),
    "CustomNonbondedForce": ("custom_nonbonded", "CustomNonbondedTerm"),
    "CustomGBForce": ("custom_gb", "CustomGBTerm"),
}

#: Forces that add no potential energy (they act on velocities only): skipped.
ENERGY_FREE_FORCES = ("CMMotionRemover", "AndersenThermostat")


def term_class(force_name: str) -> type[ForceTerm]:
    """The `ForceTerm` class that compiles the OpenMM force class ``force_name``."""
    module_name, class_name = SUPPORTED_FORCES[force_name]
    module = importlib.import_module(f"boltzgen.energy.torch_forces.{module_name}")
    return getattr(module, class_name)


def unsupported_force_message(force_name: str) -> str:
    return (
        f"TorchEnergy does not support OpenMM's {force_name}; supported forces: "
        f"{', '.join(SUPPORTED_FORCES)} (and {', '.join(ENERGY_FREE_FORCES)}, which add no energy). "
        "Use the OpenMM energy (--energy openmm) for this system."
    )


def check_supported(system: openmm.System) -> None:
    """Raise `UnsupportedForceError` naming the first force of ``system`` that cannot be compiled by class."""
    for force in system.getForces():
        name = type(force).__name__
        if name not in SUPPORTED_FORCES and name not in ENERGY_FREE_FORCES:
            raise UnsupportedForceError(unsupported_force_message(name))


def compile_forces(system: openmm.System) -> list[ForceTerm]:
    """One `ForceTerm` per energy-carrying force of ``system``, in the System's order.

    Raises `UnsupportedForceError` for a force class outside :data:`SUPPORTED_FORCES` (naming it
    and the supported list) or an option of a supported force that is not handled.
    """
    check_supported(system)
    terms = []
    for force in system.getForces():
        name = type(force).__name__
        if name in ENERGY_FREE_FORCES:
            continue
        term = term_class(name).from_openmm(force, system)
        term.openmm_name = name
        terms.append(term)
    return terms
