"""Dynamics on any `Energy`: Langevin and Metropolis kernels on reduced energies (shared by the
stochastic flow blocks and the samplers) and batched MD integrators (velocity Verlet, Langevin)."""

from boltzgen.dynamics.integrators import (
    LangevinBAOAB,
    MDRecord,
    MDState,
    VelocityVerlet,
    maxwell_boltzmann_velocities,
    per_coordinate_masses,
    simulate,
)
from boltzgen.dynamics.stability import highest_frequency
from boltzgen.dynamics.kernels import (
    EnergyLike,
    energy_and_force,
    mala_step,
    metropolis_gaussian_step,
    overdamped_langevin_step,
    overdamped_log_transition,
)

__all__ = [
    "LangevinBAOAB",
    "MDRecord",
    "MDState",
    "VelocityVerlet",
    "maxwell_boltzmann_velocities",
    "per_coordinate_masses",
    "simulate",
    "highest_frequency",
    "EnergyLike",
    "energy_and_force",
    "mala_step",
    "metropolis_gaussian_step",
    "overdamped_langevin_step",
    "overdamped_log_transition",
]
