"""Ready-made systems: ``load(name)`` returns a `MolecularSystem` (or a `ToySystem` for toys).

>>> from boltzgen import systems
>>> systems.available()          # doctest: +SKIP
>>> ad2 = systems.load("alanine_dipeptide_implicit")
>>> data = systems.reference_data("alanine_dipeptide_implicit")  # shipped MD frames  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable

from boltzgen.systems.molecular_system import MolecularSystem, ToySystem
from boltzgen.systems.reference_data import ReferenceData, reference_data, systems_with_reference_data


def _alanine_dipeptide_implicit(**options):
    from boltzgen.systems.alanine_dipeptide import alanine_dipeptide

    return alanine_dipeptide(implicit=True, **options)


def _alanine_dipeptide_vacuum(**options):
    from boltzgen.systems.alanine_dipeptide import alanine_dipeptide

    return alanine_dipeptide(implicit=False, **options)


def _double_well(**options):
    from boltzgen.systems.toys import double_well

    return double_well(**options)


def _muller_brown(**options):
    from boltzgen.systems.toys import muller_brown

    return muller_brown(**options)


def _tetrahedron_in_field(**options):
    from boltzgen.systems.rigid import tetrahedron_in_field

    return tetrahedron_in_field(**options)


def _ice_xi_tip4pew_16(**options):
    from boltzgen.systems.rigid import ice_xi_tip4pew_16

    return ice_xi_tip4pew_16(**options)


_REGISTRY: dict[str, Callable[..., MolecularSystem | ToySystem]] = {
    "alanine_dipeptide_implicit": _alanine_dipeptide_implicit,
    "alanine_dipeptide_vacuum": _alanine_dipeptide_vacuum,
    "double_well": _double_well,
    "muller_brown": _muller_brown,
    "tetrahedron_in_field": _tetrahedron_in_field,
    "ice_xi_tip4pew_16": _ice_xi_tip4pew_16,
}


def available() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return sorted(_REGISTRY)


def load(name: str, **options) -> MolecularSystem | ToySystem:
    """Build the ready-made system ``name`` (see :func:`available`); options go to its builder."""
    try:
        builder = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown system {name!r}; available systems: {', '.join(available())}"
        ) from None
    return builder(**options)


__all__ = [
    "MolecularSystem",
    "ReferenceData",
    "ToySystem",
    "available",
    "load",
    "reference_data",
    "systems_with_reference_data",
]
