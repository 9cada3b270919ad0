"""Builders of the toy systems ``double_well`` and ``muller_brown`` with their exact references.

>>> from boltzgen import systems
>>> dw = systems.load("double_well")
>>> round(dw.references["log_z"], 4), round(dw.references["p_x1_positive"], 4)
(10.2935, 0.8443)

The double well's free-energy profile along x1 on any bin grid is
:func:`boltzgen.energy.quadrature.double_well_free_energy_profile` (re-exported here).
"""

from __future__ import annotations

import numpy as np

from boltzgen.energy.quadrature import (
    double_well_free_energy_profile,
    double_well_references,
    muller_brown_references,
)
from boltzgen.energy.toy import MULLER_BROWN_DEFAULT_SCALE, DoubleWellEnergy, MullerBrownEnergy
from boltzgen.systems.molecular_system import ToySystem

__all__ = ["double_well", "muller_brown", "double_well_free_energy_profile"]


def double_well() -> ToySystem:
    """The 2-D double well u = x1^4 - 6 x1^2 - 0.5 x1 + x2^2/2, starting at its deepest minimum.

    ``references``: see :func:`boltzgen.energy.quadrature.double_well_references`.
    """
    references = double_well_references()
    return ToySystem(
        name="double_well",
        description=(
            "Double well u = x1^4 - 6 x1^2 - 0.5 x1 + x2^2/2 (Wu, Köhler, Noé 2020), dimensionless; "
            "states A: x1 < 0, B: x1 > 0; exact references by quadrature"
        ),
        toy_energy=DoubleWellEnergy(),
        positions=np.array(references["minima"]["B"], dtype=np.float64),
        references=references,
    )


def muller_brown(scale: float = MULLER_BROWN_DEFAULT_SCALE) -> ToySystem:
    """The Müller-Brown potential times ``scale`` (kT per V unit), starting at its deepest minimum A.

    ``references``: see :func:`boltzgen.energy.quadrature.muller_brown_references` (states A, B, C
    are the Voronoi cells of the three minima).
    """
    energy = MullerBrownEnergy(scale)
    references = muller_brown_references(energy.scale)
    return ToySystem(
        name="muller_brown",
        description=(
            f"Müller-Brown potential scaled by {energy.scale:g} (u = scale * V, dimensionless); states A, B, C: "
            "Voronoi cells of its three minima; exact references by quadrature"
        ),
        toy_energy=energy,
        positions=np.array(references["minima"]["A"], dtype=np.float64),
        references=references,
    )
