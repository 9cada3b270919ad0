"""`GBSAOBCTerm` against OpenMM's Reference platform (float64, energies and forces to 1e-6).

Timing note (measured while writing the term, not run here): alanine dipeptide, batch 1024,
float32, CPU, energy + forces, on the shared (loaded) 2-core dev machine: the batch-last
unique-pair / directed-pair layout with the analytic gradient ~6-7 ms (best of runs; ~5 ms under
torch.compile); the same energy differentiated by autograd ~25-30 ms; a dense ``[B, N, N]`` layout
(analytic gradient) about twice the pair layout.
"""

from __future__ import annotations

import copy

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.gbsa import GBSAOBCTerm
from force_term_checks import openmm_reference, perturbed_two_scales, single_force_system, torch_evaluate

RTOL = 1e-6


@pytest.fixture(scope="module")
def ad2():
    return systems.load("alanine_dipeptide_implicit")


@pytest.fixture(scope="module")
def obc(ad2):
    (force,) = [f for f in ad2.openmm_system.getForces() if isinstance(f, openmm.GBSAOBCForce)]
    return force


def ad2_system(ad2, force):
    masses = [ad2.openmm_system.getParticleMass(i) for i in range(ad2.openmm_system.getNumParticles())]
    return single_force_system(force, masses)


def assert_matches(term, system, positions, box=None, rtol=RTOL, both_paths=True):
    e_ref, f_ref = openmm_reference(system, positions)
    modes = (True, False) if both_paths else (True,)
    for analytic in modes:
        term.analytic_gradient = analytic
        energy, forces = torch_evaluate(term, positions, box)
        np.testing.assert_allclose(energy, e_ref, rtol=rtol, atol=rtol * np.abs(e_ref).max())
        scale = np.abs(f_ref).max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(forces, f_ref, rtol=rtol, atol=rtol * scale.max())
        assert np.all(np.abs(forces - f_ref) <= rtol * scale + rtol * np.abs(f_ref))
    term.analytic_gradient = True
    return e_ref


def test_alanine_dipeptide_no_cutoff(ad2, obc):
    assert obc.getNonbondedMethod() == openmm.GBSAOBCForce.NoCutoff
    system = ad2_system(ad2, obc)
    term = GBSAOBCTerm.from_openmm(obc, system)
    assert_matches(term, system, perturbed_two_scales(ad2.positions, seed=1))


@pytest.mark.parametrize(
    "solute, solvent, surface_area",
    [(1.0, 78.5, 0.0), (2.0, 40.0, 5.0), (1.5, 1.5, 2.25936), (0.0, 78.5, 2.25936)],
    ids=["no-ace", "dielectrics", "no-polar", "zero-dielectric"],
)
def test_dielectrics_and_surface_area(ad2, obc, solute, solvent, surface_area):
    force = copy.deepcopy(obc)
    force.setSoluteDielectric(solute)
    force.setSolventDielectric(solvent)
    force.setSurfaceAreaEnergy(surface_area)
    system = ad2_system(ad2, force)
    term = GBSAOBCTerm.from_openmm(force, system)
    assert term.use_ace == (surface_area != 0)
    assert_matches(term, system, perturbed_two_scales(ad2.positions, seed=2, small=2, large=2))


@pytest.mark.parametrize("cutoff", [0.45, 0.7])
def test_cutoff_nonperiodic(ad2, obc, cutoff):
    force = copy.deepcopy(obc)
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffNonPeriodic)
    force.setCutoffDistance(cutoff)
    system = ad2_system(ad2, force)
    term = GBSAOBCTerm.from_openmm(force, system)
    positions = perturbed_two_scales(ad2.positions, seed=3)
    # some pairs must lie beyond the cutoff for the test to mean anything
    distances = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
    assert (distances > cutoff).any()
    assert_matches(term, system, positions)


def test_cutoff_periodic_alanine_dipeptide_across_the_boundary(ad2, obc):
    box = np.diag([1.5, 1.6, 1.7])
    force = copy.deepcopy(obc)
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)
    force.setCutoffDistance(0.7)
    masses = [ad2.openmm_system.getParticleMass(i) for i in range(22)]
    system = single_force_system(force, masses, box)
    term = GBSAOBCTerm.from_openmm(force, system)
    assert term.periodic
    # Shift the molecule onto a box corner and wrap each atom into the box: bonded neighbours end
    # up on opposite faces, so only the minimum image gets the right answer.
    positions = perturbed_two_scales(ad2.positions, seed=4) - np.asarray(ad2.positions).mean(0)
    positions = positions - np.floor(positions / np.diag(box)) * np.diag(box)
    assert_matches(term, system, positions, box=box)


def test_cutoff_periodic_synthetic_triclinic():
    rng = np.random.default_rng(5)
    n = 40
    box = np.array([[2.4, 0.0, 0.0], [0.5, 2.3, 0.0], [-0.4, 0.6, 2.2]])
    force = openmm.GBSAOBCForce()
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)
    force.setCutoffDistance(1.0)
    force.setSolventDielectric(80.0)
    force.setSurfaceAreaEnergy(3.0)
    charges = rng.normal(scale=0.5, size=n)
    for q, radius, scale in zip(charges, rng.uniform(0.11, 0.21, n), rng.uniform(0.7, 0.96, n)):
        force.addParticle(q, radius, scale)
    system = single_force_system(force, [12.0] * n, box)
    # random fractional coordinates (some atoms far outside the box, some nearly on top of others)
    frac = rng.uniform(-0.5, 1.5, size=(4, n, 3))
    positions = frac @ box
    positions[:, 1] = positions[:, 0] + [0.02, 0.01, -0.015]  # "inside" case: 0 nearly on top of 1
    term = GBSAOBCTerm.from_openmm(force, system)
    assert_matches(term, system, positions, box=box)


def test_inside_case_close_atoms(ad2, obc):
    """An H nearly on top of a C: rho_H < s_C - r (the 'i inside j' HCT branch)."""
    positions = np.repeat(np.asarray(ad2.positions)[None], 3, axis=0)
    positions[0, 7] = positions[0, 8] + [0.01, 0.005, 0.0]
    positions[1, 7] = positions[1, 8] + [0.0, 0.02, 0.003]
    positions[2, 1] = positions[2, 0] + [0.004, 0.0, 0.0]
    system = ad2_system(ad2, obc)
    assert_matches(GBSAOBCTerm.from_openmm(obc, system), system, positions)


def test_float32(ad2, obc):
    system = ad2_system(ad2, obc)
    positions = perturbed_two_scales(ad2.positions, seed=6)
    e_ref, f_ref = openmm_reference(system, positions)
    term = GBSAOBCTerm.from_openmm(obc, system)
    for analytic in (True, False):
        term.analytic_gradient = analytic
        energy, forces = torch_evaluate(term, positions, dtype=torch.float32)
        np.testing.assert_allclose(energy, e_ref, rtol=1e-5, atol=1e-5 * np.abs(e_ref).max())
        np.testing.assert_allclose(forces, f_ref, rtol=1e-4, atol=1e-5 * np.abs(f_ref).max())


def test_energy_without_grad_and_born_radii(ad2, obc):
    term = GBSAOBCTerm.from_openmm(obc)
    x = torch.tensor(perturbed_two_scales(ad2.positions, seed=7))
    with torch.no_grad():
        energy = term(x)
    x.requires_grad_(True)
    torch.testing.assert_close(term(x).detach(), energy, rtol=1e-13, atol=0)
    born = term.born_radii(x.detach())
    assert born.shape == (x.shape[0], 22)
    radii = torch.tensor([obc.getParticleParameters(i)[1].value_in_unit(unit.nanometer) for i in range(22)])
    # Born radii lie between the offset radius and 1 / (1/rho - 1/radius) (tanh in [0, 1))
    assert torch.all(born >= radii - 0.009 - 1e-12)
    assert torch.all(born <= 1.0 / (1.0 / (radii - 0.009) - 1.0 / radii))


def test_second_derivatives_with_autograd_path():
    rng = np.random.default_rng(8)
    n = 5
    term = GBSAOBCTerm(rng.normal(size=n), rng.uniform(0.12, 0.2, n), rng.uniform(0.7, 0.9, n))
    x = torch.tensor(rng.uniform(0, 0.6, size=(2, n, 3)), requires_grad=True)
    (grad,) = torch.autograd.grad(term(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # the analytic gradient is differentiable once
        torch.autograd.grad(grad.square().sum(), x)
    term.analytic_gradient = False
    assert torch.autograd.gradgradcheck(lambda y: term(y), (x,))


def test_errors(obc):
    force = copy.deepcopy(obc)
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)
    term = GBSAOBCTerm.from_openmm(force)
    with pytest.raises(ValueError, match="box"):
        term(torch.zeros(1, 22, 3, dtype=torch.float64), None)
    system = openmm.System()
    system.addParticle(1.0)
    with pytest.raises(UnsupportedForceError):
        GBSAOBCTerm.from_openmm(obc, system)


def test_pair_exactly_at_the_cutoff_is_kept():
    """GBSAOBCForce drops pairs with r > cutoff (CustomGBForce: r >= cutoff): r == cutoff counts."""
    force = openmm.GBSAOBCForce()
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffNonPeriodic)
    force.setCutoffDistance(0.5)
    for q, radius, scale in [(0.5, 0.15, 0.8), (-0.7, 0.17, 0.72), (0.3, 0.12, 0.85)]:
        force.addParticle(q, radius, scale)
    system = single_force_system(force, [12.0] * 3)
    positions = np.array([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.3, 0.0]]])
    term = GBSAOBCTerm.from_openmm(force, system)
    assert_matches(term, system, positions)
    shorter = copy.deepcopy(force)
    shorter.setCutoffDistance(0.4999)
    shorter_system = single_force_system(shorter, [12.0] * 3)
    assert not np.isclose(openmm_reference(system, positions)[0][0], openmm_reference(shorter_system, positions)[0][0])
