"""Target energies: the `Energy` contract, the OpenMM adapter and toy energies with exact references."""

from boltzgen.energy.base import Energy

__all__ = ["Energy"]
