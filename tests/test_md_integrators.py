"""Batched MD integrators: exact agreement with OpenMM's Verlet, energy conservation, equipartition."""

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.dynamics.integrators import (
    LangevinBAOAB,
    VelocityVerlet,
    maxwell_boltzmann_velocities,
    per_coordinate_masses,
    simulate,
)
from boltzgen.energy import Energy, TorchEnergy


class Harmonic(Energy):
    """u = k |x|^2 / 2 in kT (reduced, no temperature)."""

    def __init__(self, dim, k=4.0, wall=None):
        super().__init__(dim)
        self.k, self.wall = k, wall

    def energy(self, x):
        u = 0.5 * self.k * (x**2).sum(-1)
        if self.wall is not None:
            u = torch.where(x[:, 0] > self.wall, torch.full_like(u, math.inf), u)
        return u


def test_velocity_verlet_follows_openmm_verlet_on_alanine_dipeptide():
    system = systems.load("alanine_dipeptide_implicit")
    n = system.n_atoms
    masses = np.array([system.openmm_system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)])
    energy = TorchEnergy.from_openmm(system.openmm_system, 300.0, dtype=torch.float64)
    x0 = torch.as_tensor(np.asarray(system.positions), dtype=torch.float64).reshape(1, -1)
    generator = torch.Generator().manual_seed(0)
    m = per_coordinate_masses(masses, 3 * n, torch.float64)
    v0 = maxwell_boltzmann_velocities(m, 2.494, 1, generator).reshape(n, 3)
    # the system has a CMMotionRemover: start without centre-of-mass motion so that it does nothing
    atom_masses = m.reshape(n, 3)[:, :1]
    v0 = (v0 - (atom_masses * v0).sum(0) / atom_masses.sum()).reshape(1, -1)
    dt = 0.001
    integrator = VelocityVerlet(energy, dt, masses)
    state = integrator.initial_state(x0, v0)
    final, record = simulate(integrator, state, 50, report_interval=50)

    # OpenMM's VerletIntegrator is a leapfrog: its velocities lag the positions by dt/2
    context = openmm.Context(system.openmm_system, openmm.VerletIntegrator(dt),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x0.reshape(n, 3).numpy())
    v_half = v0 - 0.5 * dt * state.force / m
    context.setVelocities(v_half.reshape(n, 3).numpy())
    context.getIntegrator().step(50)
    expected = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    error = np.abs(final.x.reshape(n, 3).numpy() - expected).max()
    assert error < 1e-9, error
    moved = np.abs(expected - x0.reshape(n, 3).numpy()).max()
    assert moved > 1e-3, "the test must move the atoms"
    assert not bool(final.failed.any())
    assert record.positions.shape == (2, 1, 3 * n)


def test_nve_conserves_energy_of_a_harmonic_oscillator_to_second_order():
    energy = Harmonic(3, k=4.0)
    x0 = torch.tensor([[1.0, 0.0, -0.5], [0.2, 0.3, 0.1]], dtype=torch.float64)
    v0 = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    fluctuations = []
    for dt in (0.02, 0.01):
        integrator = VelocityVerlet(energy, dt)
        _, record = simulate(integrator, integrator.initial_state(x0, v0), int(20 / dt))
        total = record.total
        fluctuations.append(float((total.max(0).values - total.min(0).values).max()))
        assert abs(float((total[-100:].mean(0) - total[:100].mean(0)).abs().max())) < 1e-3, "no drift"
    # error of Verlet's shadow energy scales as dt^2: halving dt quarters the fluctuation
    assert fluctuations[0] / fluctuations[1] == pytest.approx(4.0, rel=0.05)


def test_langevin_samples_the_canonical_distribution_of_a_harmonic_oscillator():
    k, dim, n = 4.0, 2, 2000
    energy = Harmonic(dim, k=k)
    integrator = LangevinBAOAB(energy, 0.05, friction_per_ps=2.0, generator=torch.Generator().manual_seed(1))
    x0 = torch.zeros(n, dim, dtype=torch.float64)
    v0 = torch.zeros(n, dim, dtype=torch.float64)
    _, record = simulate(integrator, integrator.initial_state(x0, v0), 600, report_interval=50)
    x = record.positions[4:]  # after 10 time units of equilibration
    # BAOAB samples positions exactly for harmonic forces: <x^2> = kT / k per coordinate
    assert float((x**2).mean()) == pytest.approx(1.0 / k, rel=0.03)
    assert float(record.kinetic[4:].mean()) / dim == pytest.approx(0.5, rel=0.03)


def test_replicas_that_hit_infinite_energy_are_frozen_not_nan():
    energy = Harmonic(1, k=1.0, wall=0.5)
    integrator = VelocityVerlet(energy, 0.1)
    x0 = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    v0 = torch.tensor([[2.0], [0.1]], dtype=torch.float64)
    final, record = simulate(integrator, integrator.initial_state(x0, v0), 30)
    assert final.failed.tolist() == [True, False]
    assert torch.isfinite(record.total).all() and torch.isfinite(final.x).all()
    assert float(final.x[0, 0]) <= 0.5


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="timestep"):
        VelocityVerlet(Harmonic(1), 0.0)
    with pytest.raises(ValueError, match="masses"):
        per_coordinate_masses([1.0, 2.0], 9)
    with pytest.raises(ValueError, match="friction"):
        LangevinBAOAB(Harmonic(1), 0.01, friction_per_ps=-1.0)
