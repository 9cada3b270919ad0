"""Target energies: the `Energy` contract, the OpenMM adapter, its batched torch twin and toy energies."""

from boltzgen.energy.base import Energy
from boltzgen.energy.openmm import NonFiniteEnergyWarning, OpenMMEnergy
from boltzgen.energy.toy import DoubleWellEnergy, MullerBrownEnergy
from boltzgen.energy.torch_energy import TorchEnergy
from boltzgen.energy.backends import ENERGY_BACKENDS, system_energy
from boltzgen.energy.interpolated import InterpolatedEnergy

__all__ = ["Energy"]
__all__ += ["DoubleWellEnergy", "MullerBrownEnergy"]
__all__ += ["NonFiniteEnergyWarning", "OpenMMEnergy"]
__all__ += ["ENERGY_BACKENDS", "TorchEnergy", "system_energy"]
__all__ += ["InterpolatedEnergy"]
