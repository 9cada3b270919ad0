"""boltzgen.geometry: bond lengths, angles, dihedrals vs mdtraj; NeRF placement; edge cases."""

from __future__ import annotations

import math

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.geometry import (
    angles,
    bond_angle,
    bond_length,
    dihedral_angle,
    dihedrals,
    distances,
    place_atom,
)


@pytest.fixture(scope="module")
def alanine_dipeptide():
    return systems.load("alanine_dipeptide_implicit")


@pytest.fixture(scope="module")
def frames(alanine_dipeptide):
    """Six perturbed alanine dipeptide frames ``[6, 22, 3]`` as float32 (mdtraj's precision)."""
    rng = np.random.default_rng(11)
    xyz = alanine_dipeptide.positions[None] + 0.03 * rng.standard_normal((6, 22, 3))
    return xyz.astype(np.float32)


@pytest.fixture(scope="module")
def trajectory(alanine_dipeptide, frames):
    return mdtraj.Trajectory(frames, alanine_dipeptide.mdtraj_topology)


def _random_tuples(rng: np.random.Generator, size: int, count: int, n_atoms: int = 22) -> np.ndarray:
    return np.stack([rng.choice(n_atoms, size=size, replace=False) for _ in range(count)])


def _circular_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.angle(np.exp(1j * (a - b)))).max())


def test_distances_match_mdtraj(trajectory, frames):
    rng = np.random.default_rng(0)
    bonded = np.array([[b[0].index, b[1].index] for b in trajectory.topology.bonds])
    pairs = np.concatenate([bonded, _random_tuples(rng, 2, 30)])
    ours = distances(torch.from_numpy(frames).double(), pairs).numpy()
    assert ours.shape == (6, len(pairs))
    np.testing.assert_allclose(ours, mdtraj.compute_distances(trajectory, pairs), atol=2e-6, rtol=0)


def test_angles_match_mdtraj(trajectory, frames):
    rng = np.random.default_rng(1)
    triples = _random_tuples(rng, 3, 40)
    ours = angles(torch.from_numpy(frames).double(), triples).numpy()
    np.testing.assert_allclose(ours, mdtraj.compute_angles(trajectory, triples), atol=2e-5, rtol=0)


def test_dihedrals_match_mdtraj_including_backbone(trajectory, frames):
    rng = np.random.default_rng(2)
    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    quadruples = np.concatenate([phi_atoms, psi_atoms, _random_tuples(rng, 4, 40)])
    ours = dihedrals(torch.from_numpy(frames).double(), quadruples).numpy()
    reference = mdtraj.compute_dihedrals(trajectory, quadruples)
    assert _circular_error(ours, reference) < 5e-5
    assert _circular_error(ours[:, 0], phi[:, 0]) < 5e-5
    assert _circular_error(ours[:, 1], psi[:, 0]) < 5e-5
    assert np.all(np.abs(ours) <= math.pi)


def test_point_functions_agree_with_index_functions(frames):
    x = torch.from_numpy(frames).double()
    assert torch.equal(bond_length(x[:, 3], x[:, 7]), distances(x, [[3, 7]])[:, 0])
    assert torch.equal(bond_angle(x[:, 3], x[:, 7], x[:, 1]), angles(x, [[3, 7, 1]])[:, 0])
    assert torch.equal(dihedral_angle(x[:, 3], x[:, 7], x[:, 1], x[:, 9]), dihedrals(x, [[3, 7, 1, 9]])[:, 0])


@pytest.mark.parametrize("phi", [-3.1, -2.0, -0.5, 0.0, 0.7, 1.6, 3.0, math.pi])
def test_dihedral_sign_convention_by_hand(phi):
    """p0=(1,0,0), p1=0, p2=(0,0,1), p3=(cos phi, sin phi, 1): the IUPAC dihedral is phi."""
    p0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    p1 = torch.zeros(3, dtype=torch.float64)
    p2 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    p3 = torch.tensor([math.cos(phi), math.sin(phi), 1.0], dtype=torch.float64)
    value = dihedral_angle(p0, p1, p2, p3).item()
    assert _circular_error(np.array(value), np.array(phi)) < 1e-14
    assert abs(dihedral_angle(p3, p2, p1, p0).item() - value) < 1e-14  # reversal symmetric


def test_bond_angle_accurate_near_zero_and_pi():
    """atan2 keeps full relative precision where acos(cos) would lose ~8 digits."""
    for theta in [1e-7, 1e-4, math.pi - 1e-4, math.pi - 1e-7]:
        p0 = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
        vertex = torch.zeros(3, dtype=torch.float64)
        p2 = 0.7 * torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
        assert abs(bond_angle(p0, vertex, p2).item() - theta) < 1e-13 * max(1.0, 1 / theta)


def test_exactly_collinear_atoms_give_finite_values_and_gradients():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.3, 0.0, 0.0], [0.3, 0.1, 0.0]],
                          dtype=torch.float64, requires_grad=True)
    straight = bond_angle(points[0], points[1], points[2])
    folded = bond_angle(points[0], points[2], points[1])
    assert straight.item() == pytest.approx(math.pi) and folded.item() == 0.0
    (straight + folded).backward()
    assert torch.isfinite(points.grad).all()


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_place_atom_reproduces_its_internal_coordinates(dtype, atol):
    generator = torch.Generator().manual_seed(3)
    shape = (5, 7)  # leading batch dimensions broadcast
    a, b, c = (0.2 * torch.randn(*shape, 3, generator=generator, dtype=dtype) for _ in range(3))
    bond = 0.1 + 0.1 * torch.rand(shape, generator=generator, dtype=dtype)
    angle = 0.2 + 2.7 * torch.rand(shape, generator=generator, dtype=dtype)
    torsion = math.pi * (2 * torch.rand(shape, generator=generator, dtype=dtype) - 1)
    placed = place_atom(a, b, c, bond, angle, torsion)
    assert placed.shape == (*shape, 3) and placed.dtype == dtype
    assert (bond_length(placed, a) - bond).abs().max() < atol
    assert (bond_angle(placed, a, b) - angle).abs().max() < 10 * atol
    measured = dihedral_angle(placed, a, b, c)
    assert _circular_error(measured.double().numpy(), torsion.double().numpy()) < 10 * atol


def test_index_functions_reject_bad_shapes(frames):
    x = torch.from_numpy(frames).double()
    with pytest.raises(ValueError, match=r"\[K, 3\]"):
        angles(x, [[0, 1]])
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 3\]"):
        distances(x.reshape(6, -1), [[0, 1]])
