"""`CustomGBTerm` against OpenMM's Reference platform (float64, energies and forces to 1e-6)."""

from __future__ import annotations

import copy

import numpy as np
import openmm
import openmm.app as app
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.custom_gb import CustomGBTerm
from force_term_checks import openmm_reference, perturbed_two_scales, single_force_system, torch_evaluate

RTOL = 1e-6
AMBER_GB = ["implicit/obc1.xml", "implicit/obc2.xml", "implicit/gbn.xml", "implicit/gbn2.xml", "implicit/hct.xml"]


@pytest.fixture(scope="module")
def ad2():
    return systems.load("alanine_dipeptide_implicit")


def assert_matches(force, system, positions, box=None, dtype=torch.float64, rtol=RTOL, ftol=None):
    e_ref, f_ref = openmm_reference(system, positions)
    energy, forces = torch_evaluate(CustomGBTerm.from_openmm(force, system), positions, box, dtype)
    np.testing.assert_allclose(energy, e_ref, rtol=rtol, atol=rtol * np.abs(e_ref).max())
    ftol = rtol if ftol is None else ftol
    np.testing.assert_allclose(forces, f_ref, rtol=ftol, atol=ftol * np.abs(f_ref).max())
    return e_ref


def amber_gb_force(ad2, xml, **create):
    forcefield = app.ForceField("amber14-all.xml", xml)
    topology = create.pop("topology", ad2.topology)
    system = forcefield.createSystem(topology, constraints=None, **create)
    (force,) = [f for f in system.getForces() if isinstance(f, openmm.CustomGBForce)]
    masses = [system.getParticleMass(i) for i in range(system.getNumParticles())]
    return copy.deepcopy(force), masses  # a copy: the force dies with its System


@pytest.mark.parametrize("xml", AMBER_GB)
def test_amber14_implicit_no_cutoff(ad2, xml):
    force, masses = amber_gb_force(ad2, xml, nonbondedMethod=app.NoCutoff)
    assert force.getNonbondedMethod() == openmm.CustomGBForce.NoCutoff
    system = single_force_system(force, masses)
    assert_matches(force, system, perturbed_two_scales(ad2.positions, seed=11))


@pytest.mark.parametrize("xml", ["implicit/obc2.xml", "implicit/gbn2.xml"])
def test_amber14_implicit_cutoff_nonperiodic(ad2, xml):
    force, masses = amber_gb_force(
        ad2, xml, nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=0.5 * unit.nanometer
    )
    assert force.getNonbondedMethod() == openmm.CustomGBForce.CutoffNonPeriodic
    system = single_force_system(force, masses)
    positions = perturbed_two_scales(ad2.positions, seed=12)
    assert (np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1) > 0.5).any()
    assert_matches(force, system, positions)


@pytest.mark.parametrize("xml", ["implicit/obc2.xml", "implicit/gbn.xml"])
def test_amber14_implicit_cutoff_periodic(ad2, xml):
    box = np.diag([1.5, 1.6, 1.7])
    topology = copy.deepcopy(ad2.topology)
    topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
    force, masses = amber_gb_force(
        ad2, xml, topology=topology, nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=0.7 * unit.nanometer
    )
    assert force.getNonbondedMethod() == openmm.CustomGBForce.CutoffPeriodic
    system = single_force_system(force, masses, box)
    # molecule wrapped across the box faces: only the minimum image is right
    positions = perturbed_two_scales(ad2.positions, seed=13) - np.asarray(ad2.positions).mean(0)
    positions = positions - np.floor(positions / np.diag(box)) * np.diag(box)
    assert_matches(force, system, positions, box=box)


def test_amber14_float32(ad2):
    force, masses = amber_gb_force(ad2, "implicit/gbn2.xml", nonbondedMethod=app.NoCutoff)
    system = single_force_system(force, masses)
    assert_matches(force, system, perturbed_two_scales(ad2.positions, seed=14), dtype=torch.float32, rtol=1e-5, ftol=1e-4)


def synthetic_force(value_type, method, cutoff=None, n=16, seed=0):
    """A CustomGBForce using every feature: globals, tabulated functions, x/y/z, exclusions, value chains,
    pair terms that are not symmetric in particles 1 and 2."""
    rng = np.random.default_rng(seed)
    force = openmm.CustomGBForce()
    force.addPerParticleParameter("q")
    force.addPerParticleParameter("a")
    force.addGlobalParameter("k", 0.7)
    force.addGlobalParameter("unused", 3.0)
    force.addTabulatedFunction("g", openmm.Continuous1DFunction(list(np.sin(np.linspace(0, 3, 20)) + 1), 0.0, 2.0))
    force.addTabulatedFunction("h", openmm.Discrete2DFunction(2, 2, [0.5, 1.0, 1.5, 2.0]))
    force.addComputedValue("S", "a2*exp(-k*r^2) + g(r)*q1 + 0.1*h(c1, c2); c1=step(q1); c2=step(q2)", value_type)
    force.addComputedValue("T", "S^2 + a*x - 0.5*y*z + 0.1*q", openmm.CustomGBForce.SingleParticle)
    force.addComputedValue("U", "S*T + sin(a) + k", openmm.CustomGBForce.SingleParticle)
    force.addEnergyTerm("q*T + 0.2*U^2 + k*x*y", openmm.CustomGBForce.SingleParticle)
    force.addEnergyTerm("q1*q2*exp(-r)*(S1 + 2*T2) + a1*U2/(1 + r^2)", openmm.CustomGBForce.ParticlePair)
    force.addEnergyTerm("0.3*k*(S1 - S2)^2/r + a1*a2*r - 0.1*U1", openmm.CustomGBForce.ParticlePairNoExclusions)
    for q, a in zip(rng.normal(size=n), rng.uniform(0.5, 1.5, n)):
        force.addParticle([q, a])
    for i in range(0, n - 1, 3):
        force.addExclusion(i + 1, i)  # listed as (larger, smaller) on purpose
    force.addExclusion(0, n - 1)
    force.setNonbondedMethod(method)
    if cutoff is not None:
        force.setCutoffDistance(cutoff)
    return force


@pytest.mark.parametrize("value_type", ["ParticlePair", "ParticlePairNoExclusions"])
@pytest.mark.parametrize("method", ["NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic"])
def test_synthetic_every_feature(value_type, method):
    n = 16
    rng = np.random.default_rng(21)
    box = None
    if method == "CutoffPeriodic":
        box = np.array([[2.0, 0.0, 0.0], [0.4, 1.9, 0.0], [-0.3, 0.5, 1.8]])
        positions = rng.uniform(-0.5, 1.5, size=(4, n, 3)) @ box
    else:
        positions = rng.uniform(0.0, 1.6, size=(4, n, 3))
    force = synthetic_force(
        getattr(openmm.CustomGBForce, value_type), getattr(openmm.CustomGBForce, method), cutoff=0.8, n=n
    )
    system = single_force_system(force, [12.0] * n, box)
    term = CustomGBTerm.from_openmm(force, system)
    assert term.cutoff == (None if method == "NoCutoff" else 0.8)
    if method != "NoCutoff":
        distances = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
        assert (distances > 0.8).any() and (distances[distances > 0] < 0.8).any()
    assert_matches(force, system, positions, box=box)


def test_zero_computed_values_and_no_pairs():
    """No computed values, single-particle terms only (checked by hand: OpenMM's Reference platform
    crashes on a CustomGBForce without computed values, it reads valueParamDerivExpressions[0])."""
    force = openmm.CustomGBForce()
    force.addPerParticleParameter("c")
    force.addGlobalParameter("k", 2.0)
    force.addEnergyTerm("c*(x^2 + y^2) - k*z", openmm.CustomGBForce.SingleParticle)
    for c in (1.0, 2.0, 3.0):
        force.addParticle([c])
    term = CustomGBTerm.from_openmm(force)
    assert not term.needs_pairs
    x = torch.tensor(np.random.default_rng(3).normal(size=(2, 3, 3)), requires_grad=True)
    energy = term(x)
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected = (c * (x[..., 0] ** 2 + x[..., 1] ** 2) - 2.0 * x[..., 2]).sum(-1)
    torch.testing.assert_close(energy, expected, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    expected_grad = torch.stack([2 * c * x[..., 0], 2 * c * x[..., 1], -2.0 * torch.ones_like(x[..., 2])], -1)
    torch.testing.assert_close(grad, expected_grad.detach(), rtol=1e-14, atol=0)


def test_unsupported_layouts_and_variables():
    single, pair = openmm.CustomGBForce.SingleParticle, openmm.CustomGBForce.ParticlePair

    def gb_force(values=(), energies=(), particles=2):
        force = openmm.CustomGBForce()
        force.addPerParticleParameter("q")
        for name, expression, kind in values:
            force.addComputedValue(name, expression, kind)
        for expression, kind in energies:
            force.addEnergyTerm(expression, kind)
        for _ in range(particles):
            force.addParticle([1.0])
        return force

    cases = [
        (gb_force(values=[("A", "q*2", single)]), "first computed value"),
        (gb_force(values=[("A", "q1*r", pair), ("C", "A1*r", pair)]), "first computed value"),
        (gb_force(energies=[("q*r", single)], particles=1), "unknown variable"),  # r only exists for pairs
    ]
    for force, fragment in cases:
        with pytest.raises(UnsupportedForceError, match=fragment):
            CustomGBTerm.from_openmm(force)


def test_periodic_needs_box():
    force = synthetic_force(openmm.CustomGBForce.ParticlePair, openmm.CustomGBForce.CutoffPeriodic, cutoff=0.8)
    term = CustomGBTerm.from_openmm(force)
    with pytest.raises(ValueError, match="box"):
        term(torch.zeros(1, 16, 3, dtype=torch.float64), None)


def test_pair_exactly_at_the_cutoff_is_dropped():
    """CustomGBForce keeps pairs with r < cutoff only (GBSAOBCForce keeps r == cutoff)."""
    force = synthetic_force(openmm.CustomGBForce.ParticlePair, openmm.CustomGBForce.CutoffNonPeriodic, cutoff=0.5, n=3)
    system = single_force_system(force, [12.0] * 3)
    positions = np.array([[[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]])  # pair (1, 2): r = 0.5 exactly
    e_ref = assert_matches(force, system, positions)
    longer = copy.deepcopy(force)
    longer.setCutoffDistance(0.5001)
    assert not np.isclose(e_ref[0], openmm_reference(single_force_system(longer, [12.0] * 3), positions)[0][0])
