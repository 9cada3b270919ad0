"""The systems registry: alanine dipeptide (implicit, vacuum) and the toys."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.energy import DoubleWellEnergy, MullerBrownEnergy
from boltzgen.systems.toys import double_well_free_energy_profile

AD2_NAMES = ["alanine_dipeptide_implicit", "alanine_dipeptide_vacuum"]
TOY_NAMES = ["double_well", "muller_brown"]


def test_available_lists_the_four_systems():
    names = systems.available()
    assert set(AD2_NAMES + TOY_NAMES) <= set(names)
    assert names == sorted(names)


def test_unknown_name_raises_value_error_listing_available_systems():
    with pytest.raises(ValueError) as error:
        systems.load("alanine_tripeptide")
    message = str(error.value)
    assert "alanine_tripeptide" in message
    for name in AD2_NAMES + TOY_NAMES:
        assert name in message


@pytest.fixture(scope="module", params=AD2_NAMES)
def ad2(request):
    return systems.load(request.param)


def test_ad2_shape_units_and_temperature(ad2):
    assert ad2.n_atoms == 22 and ad2.dim == 66
    assert ad2.positions.shape == (22, 3) and ad2.positions.dtype == np.float64
    # nm, not Angstrom: the molecule spans well under 1 nm, and the shortest distance is a C-H bond
    assert np.ptp(ad2.positions, axis=0).max() < 1.0
    distances = np.linalg.norm(ad2.positions[:, None] - ad2.positions[None], axis=-1)
    assert 0.09 < distances[np.triu_indices(22, 1)].min() < 0.12
    assert ad2.temperature == 300.0
    assert "amber99sbildn" in ad2.description


def test_ad2_forces_nocutoff_and_no_constraints(ad2):
    forces = {type(force).__name__: force for force in ad2.openmm_system.getForces()}
    terms = set(forces) - {"CMMotionRemover"}
    expected = {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce"}
    implicit = ad2.name == "alanine_dipeptide_implicit"
    assert terms == (expected | {"GBSAOBCForce"} if implicit else expected)
    assert forces["NonbondedForce"].getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    if implicit:
        assert forces["GBSAOBCForce"].getNonbondedMethod() == openmm.GBSAOBCForce.NoCutoff
    assert ad2.openmm_system.getNumConstraints() == 0


def test_ad2_energy_at_shipped_positions_is_finite(ad2):
    context = openmm.Context(
        ad2.openmm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(ad2.positions * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert math.isfinite(energy) and np.all(np.isfinite(forces))


def test_ad2_mdtraj_topology_gives_phi_and_psi(ad2):
    topology = ad2.mdtraj_topology
    assert isinstance(topology, mdtraj.Topology) and topology.n_atoms == 22
    trajectory = mdtraj.Trajectory(ad2.positions[None], topology)
    _, phi = mdtraj.compute_phi(trajectory)
    _, psi = mdtraj.compute_psi(trajectory)
    assert phi.shape == psi.shape == (1, 1)
    # the shipped structure is the minimised C5/PII-like conformer built at phi -80, psi 150 degrees
    assert -100 < np.degrees(phi[0, 0]) < -60 and 130 < np.degrees(psi[0, 0]) < 175


def test_double_well_system():
    system = systems.load("double_well")
    energy = system.energy()
    assert isinstance(energy, DoubleWellEnergy) and system.dim == 2 and system.temperature is None
    for key in ("log_z", "p_x1_positive", "f_A_kT", "f_B_kT", "delta_f_kT"):
        assert math.isfinite(system.references[key])
    assert round(system.references["log_z"], 4) == 10.2935
    assert system.positions.shape == (2,)
    force = energy.force(torch.tensor(system.positions[None]))
    assert torch.abs(force).max() < 1e-9, "the start is a minimum"
    assert double_well_free_energy_profile([-np.inf, 0.0, np.inf]).shape == (2,)
    with pytest.raises(TypeError):
        system.energy(platform="CPU")


def test_muller_brown_system_and_scale_option():
    system = systems.load("muller_brown")
    energy = system.energy()
    assert isinstance(energy, MullerBrownEnergy) and energy.scale == 0.05 and system.dim == 2
    for key in ("log_z", "f_A_kT", "f_B_kT", "f_C_kT"):
        assert math.isfinite(system.references[key])
    np.testing.assert_allclose(system.positions, system.references["minima"]["A"])
    assert torch.abs(energy.force(torch.tensor(system.positions[None]))).max() < 1e-6
    colder = systems.load("muller_brown", scale=0.1)
    assert colder.energy().scale == 0.1 and colder.references["scale"] == 0.1
    assert colder.references["populations"]["A"] > system.references["populations"]["A"]
    with pytest.raises(ValueError, match="scale"):
        systems.load("muller_brown", scale=-1.0)
