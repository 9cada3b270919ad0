"""Stochastic dynamics on reduced energies: Langevin and Metropolis kernels shared by the
stochastic flow blocks (`boltzgen.flows.stochastic`) and the samplers (`boltzgen.sampling`)."""

from boltzgen.dynamics.kernels import (
    EnergyLike,
    energy_and_force,
    mala_step,
    metropolis_gaussian_step,
    overdamped_langevin_step,
    overdamped_log_transition,
)

__all__ = [
    "EnergyLike",
    "energy_and_force",
    "mala_step",
    "metropolis_gaussian_step",
    "overdamped_langevin_step",
    "overdamped_log_transition",
]
