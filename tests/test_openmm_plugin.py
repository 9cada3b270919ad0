"""The OpenMM plugin: a flow's potential as an OpenMM TorchForce (needs openmmtorch).

These tests run in CI's second environment (torch 2.9.1 + openmmtorch 1.5, see README); where
openmmtorch cannot be imported they are skipped.
"""

import copy

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmtorch")
from openmm import unit  # noqa: E402

from boltzgen import systems  # noqa: E402
from boltzgen.job.model import build_molecular_generator  # noqa: E402
from boltzgen.job.profiles import get_profile  # noqa: E402
from boltzgen.openmm import add_flow_force, flow_force, flow_potential_system  # noqa: E402
from boltzgen.units import kt_kj_per_mol  # noqa: E402

pytestmark = pytest.mark.openmm_torch
TEMPERATURE = 300.0


@pytest.fixture(scope="module")
def ad2_and_flow():
    """Alanine dipeptide and a small molecular flow with perturbed (non-identity) parameters."""
    ad2 = systems.load("alanine_dipeptide_implicit")
    data = systems.reference_data("alanine_dipeptide_implicit")
    x = torch.as_tensor(np.asarray(data.positions_flat()[::50]), dtype=torch.float32)
    torch.manual_seed(0)
    generator = build_molecular_generator(ad2.mdtraj_topology, x, get_profile("smoke"))
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return ad2, generator.double(), x.double()


def _energy_and_forces(system, positions):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def test_flow_force_gives_the_flows_energy_and_forces(ad2_and_flow):
    ad2, generator, x = ad2_and_flow
    system = flow_potential_system(ad2.openmm_system, generator, TEMPERATURE, x[0])
    assert system.getNumForces() == 1 and system.getNumParticles() == ad2.n_atoms
    kt = kt_kj_per_mol(TEMPERATURE)
    for frame in x[1:4]:
        energy, forces = _energy_and_forces(system, frame.reshape(-1, 3).numpy())
        xg = frame.reshape(1, -1).clone().requires_grad_(True)
        log_q = generator.log_prob(xg)
        (grad,) = torch.autograd.grad(log_q.sum(), xg)
        assert energy == pytest.approx(-kt * float(log_q), rel=1e-9, abs=1e-9)
        expected = (kt * grad).reshape(-1, 3).numpy()
        np.testing.assert_allclose(forces, expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())


def test_flow_force_added_to_the_force_field_with_a_weight(ad2_and_flow):
    ad2, generator, x = ad2_and_flow
    frame = x[5].reshape(-1, 3).numpy()
    base_energy, base_forces = _energy_and_forces(ad2.openmm_system, frame)
    mixed = copy.deepcopy(ad2.openmm_system)
    add_flow_force(mixed, generator, TEMPERATURE, x[0], weight=0.25, force_group=3)
    energy, forces = _energy_and_forces(mixed, frame)
    flow_only = flow_potential_system(ad2.openmm_system, generator, TEMPERATURE, x[0])
    flow_energy, flow_forces = _energy_and_forces(flow_only, frame)
    assert energy == pytest.approx(base_energy + 0.25 * flow_energy, rel=1e-9)
    np.testing.assert_allclose(forces, base_forces + 0.25 * flow_forces, rtol=1e-7, atol=1e-6)
    assert mixed.getForce(mixed.getNumForces() - 1).getForceGroup() == 3


def test_a_simulation_runs_on_the_flow_potential(ad2_and_flow):
    ad2, generator, x = ad2_and_flow
    system = flow_potential_system(ad2.openmm_system, generator, TEMPERATURE, x[0])
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE, 1.0, 0.0005)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x[0].reshape(-1, 3).numpy())
    integrator.step(20)
    state = context.getState(getPositions=True, getEnergy=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert 0 < np.abs(positions - x[0].reshape(-1, 3).numpy()).max() < 0.1


def test_example_outside_the_support_is_a_clear_error(ad2_and_flow):
    ad2, generator, x = ad2_and_flow
    stretched = x[0].clone().reshape(-1, 3)
    stretched[1] += 0.5  # a bond far outside the fitted interval
    with pytest.raises(ValueError, match="outside the flow's support"):
        flow_force(generator, TEMPERATURE, stretched)
