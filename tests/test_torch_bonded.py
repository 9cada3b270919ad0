"""Bonded torch force terms against OpenMM's Reference platform: energies and forces, float64 and float32.

Each OpenMM force is copied on its own into a System and evaluated by OpenMM (Reference platform,
double precision) and by its `ForceTerm` (forces by autograd). Configurations: the alanine
dipeptide minimum with 0.01 nm noise and with large noise (high energies), and synthetic systems
including periodic ones whose bonds cross the box boundary (triclinic box too).
"""

from __future__ import annotations

import math

import numpy as np
import openmm
import pytest
import torch

from boltzgen import systems
from boltzgen.energy.torch_forces.bonded import (
    HarmonicAngleTerm,
    HarmonicBondTerm,
    PeriodicTorsionTerm,
    RBTorsionTerm,
)
from boltzgen.geometry import dihedral_angle
from force_term_checks import (  # noqa: F401  (single_torch_thread: autouse fixture)
    check_term,
    openmm_reference,
    perturbed,
    single_force_system,
    single_torch_thread,
)

RTOL32 = 2e-4
TERMS = {
    openmm.HarmonicBondForce: HarmonicBondTerm,
    openmm.HarmonicAngleForce: HarmonicAngleTerm,
    openmm.PeriodicTorsionForce: PeriodicTorsionTerm,
    openmm.RBTorsionForce: RBTorsionTerm,
}
CUBIC_BOX = np.diag([2.0, 2.2, 2.4])
TRICLINIC_BOX = np.array([[2.0, 0.0, 0.0], [0.6, 2.1, 0.0], [-0.5, 0.8, 2.2]])


# ----------------------------------------------------------------------------- helpers


def check_bonded(force, masses, frames, **options):
    """:func:`check_term` with the term class of ``force``'s type."""
    return check_term(TERMS[type(force)], force, masses, frames, **options)


# ----------------------------------------------------------------------------- alanine dipeptide


@pytest.fixture(scope="module")
def alanine():
    molecule = systems.load("alanine_dipeptide_implicit")
    system = molecule.openmm_system
    masses = [system.getParticleMass(i) for i in range(system.getNumParticles())]
    return system, masses, np.asarray(molecule.positions, dtype=np.float64)


@pytest.mark.parametrize("force_type", list(TERMS)[:3], ids=lambda t: t.__name__)
@pytest.mark.parametrize("sigma", [0.01, 0.05], ids=["noise0.01", "noise0.05"])
def test_alanine_dipeptide_bonded_forces(alanine, force_type, sigma):
    system, masses, positions = alanine
    (force,) = [f for f in system.getForces() if isinstance(f, force_type)]
    frames = perturbed(positions, 8, sigma, seed=11)
    check_bonded(force, masses, frames)


@pytest.mark.parametrize("force_type", list(TERMS)[:3], ids=lambda t: t.__name__)
def test_alanine_dipeptide_bonded_forces_float32(alanine, force_type):
    system, masses, positions = alanine
    (force,) = [f for f in system.getForces() if isinstance(f, force_type)]
    frames = perturbed(positions, 8, 0.02, seed=12)
    check_bonded(force, masses, frames, rtol=RTOL32, dtype=torch.float32)


# ----------------------------------------------------------------------------- synthetic systems


def random_chain(n: int, seed: int, bond: float = 0.15) -> np.ndarray:
    """A random walk of ``n`` atoms with steps of length ``bond`` nm and no sharp backtracking."""
    rng = np.random.default_rng(seed)
    points = [np.zeros(3)]
    direction = rng.normal(size=3)
    for _ in range(n - 1):
        direction = direction / np.linalg.norm(direction) + 0.9 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        points.append(points[-1] + bond * direction)
    return np.array(points)


def synthetic_force(force_type, n: int, seed: int, periodic: bool):
    """A force of ``force_type`` over a chain of ``n`` atoms with random parameters (all consecutive tuples)."""
    rng = np.random.default_rng(seed)
    force = force_type()
    if force_type is openmm.HarmonicBondForce:
        for i in range(n - 1):
            force.addBond(i, i + 1, rng.uniform(0.1, 0.2), rng.uniform(1e4, 4e5))
        force.addBond(0, n - 1, 0.3, 1000.0)  # a long one too
    elif force_type is openmm.HarmonicAngleForce:
        for i in range(n - 2):
            force.addAngle(i, i + 1, i + 2, rng.uniform(1.6, 2.2), rng.uniform(100, 600))
    elif force_type is openmm.PeriodicTorsionForce:
        for i in range(n - 3):
            for periodicity in (1, 2, 3, 4, 6):
                force.addTorsion(i, i + 1, i + 2, i + 3, periodicity, rng.uniform(-math.pi, math.pi), rng.uniform(-5, 10))
        force.addTorsion(n - 1, n - 2, n - 3, n - 4, 2, 0.3, 4.0)  # reversed order
    else:
        for i in range(n - 3):
            force.addTorsion(i, i + 1, i + 2, i + 3, *rng.uniform(-10, 10, size=6))
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


@pytest.mark.parametrize("force_type", list(TERMS), ids=lambda t: t.__name__)
@pytest.mark.parametrize("sigma", [0.01, 0.06], ids=["noise0.01", "noise0.06"])
def test_synthetic_nonperiodic(force_type, sigma):
    n = 14
    force = synthetic_force(force_type, n, seed=3, periodic=False)
    frames = perturbed(random_chain(n, seed=4), 8, sigma, seed=5)
    check_bonded(force, [12.0] * n, frames)


@pytest.mark.parametrize("force_type", list(TERMS), ids=lambda t: t.__name__)
@pytest.mark.parametrize("box", [CUBIC_BOX, TRICLINIC_BOX], ids=["cubic", "triclinic"])
def test_synthetic_periodic_bonds_across_the_boundary(force_type, box):
    n = 14
    force = synthetic_force(force_type, n, seed=6, periodic=True)
    chain = random_chain(n, seed=7) + np.array([1.9, 2.0, 2.1])  # straddles the box faces
    frames = perturbed(chain, 8, 0.02, seed=8)
    # Wrap every atom into the box (reduced coordinates in [0, 1)) so that bonds cross the boundary.
    fractional = frames @ np.linalg.inv(box)
    wrapped = (fractional - np.floor(fractional)) @ box
    assert np.abs(wrapped - frames).max() > 1.0  # really wrapped
    check_bonded(force, [12.0] * n, wrapped, box=box)
    # Without periodic boundary conditions in the force, the wrapped chain is far from the original.
    check_bonded(synthetic_force(force_type, n, seed=6, periodic=False), [12.0] * n, wrapped)


def test_torsion_sign_matches_openmm():
    """A phase of 90 degrees makes the energy odd in phi: the sign convention must be OpenMM's."""
    force = openmm.PeriodicTorsionForce()
    force.addTorsion(0, 1, 2, 3, 1, math.pi / 2, 10.0)
    frames = perturbed(random_chain(4, seed=9), 16, 0.05, seed=10)
    phi = dihedral_angle(*(torch.tensor(frames[:, k]) for k in range(4))).numpy()
    assert (phi > 0).any() and (phi < 0).any()
    system = single_force_system(force, [1.0] * 4)
    ref_energy, _ = openmm_reference(system, frames)
    # E = k (1 + cos(phi - pi/2)) = k (1 + sin(phi)): IUPAC phi, as OpenMM's.
    np.testing.assert_allclose(ref_energy, 10.0 * (1 + np.sin(phi)), rtol=1e-9, atol=1e-9)
    check_bonded(force, [1.0] * 4, frames)


def test_empty_forces_give_zero_energy():
    frames = perturbed(random_chain(5, seed=1), 3, 0.01, seed=2)
    for force_type, term_class in TERMS.items():
        term = term_class.from_openmm(force_type(), None)
        energy = term(torch.tensor(frames), None)
        assert energy.shape == (3,) and torch.all(energy == 0)


def test_periodic_term_without_box_raises():
    term = HarmonicBondTerm.from_openmm(synthetic_force(openmm.HarmonicBondForce, 4, 0, periodic=True), None)
    with pytest.raises(ValueError, match="periodic"):
        term(torch.zeros(1, 4, 3, dtype=torch.float64), None)


def test_terms_move_between_dtypes_and_keep_index_buffers():
    term = PeriodicTorsionTerm.from_openmm(synthetic_force(openmm.PeriodicTorsionForce, 6, 0, False), None)
    assert term.k.dtype == torch.float64 and term.geometry.atoms.dtype == torch.long
    term = term.to(torch.float32)
    assert term.k.dtype == torch.float32 and term.geometry.atoms.dtype == torch.long
