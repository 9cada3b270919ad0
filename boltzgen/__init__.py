"""boltzgen: Boltzmann generators for molecular equilibrium sampling and free energies."""

__version__ = "0.1.0"
