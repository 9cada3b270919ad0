"""Target energies: the `Energy` contract, the OpenMM adapter and toy energies with exact references."""

from boltzgen.energy.base import Energy
from boltzgen.energy.openmm import NonFiniteEnergyWarning, OpenMMEnergy
from boltzgen.energy.toy import DoubleWellEnergy, MullerBrownEnergy

__all__ = ["Energy"]
__all__ += ["DoubleWellEnergy", "MullerBrownEnergy"]
__all__ += ["NonFiniteEnergyWarning", "OpenMMEnergy"]
