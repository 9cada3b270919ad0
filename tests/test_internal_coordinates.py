"""Z-matrix construction and the internal-coordinate flow: layout, round trips, exact log-det."""

from __future__ import annotations

import math
import os

import mdtraj
import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.flows import InternalCoordinateTransform, ZMatrix
from boltzgen.geometry import angles, dihedrals, distances

N_ATOMS = 22


# ----------------------------------------------------------------------------- helpers
def random_rotation(generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A uniformly random proper rotation ``[3, 3]``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def max_deviation_after_alignment(moving: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest atom distance (nm) after the optimal *proper* rigid alignment (Kabsch), float64.

    ``moving``, ``reference``: ``[N, 3]``. Mirror images are not aligned away (chirality counts).
    """
    p = moving.double() - moving.double().mean(0)
    q = reference.double() - reference.double().mean(0)
    u, _, vt = torch.linalg.svd(p.T @ q)
    sign = torch.sign(torch.det(vt.T @ u.T))
    rotation = vt.T @ torch.diag(torch.tensor([1.0, 1.0, sign.item()], dtype=torch.float64)) @ u.T
    return (p @ rotation.T - q).norm(dim=-1).max().item()


def rotation_zyz(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``Rz(alpha) Ry(beta) Rz(gamma)``; its Haar measure is ``sin(beta) dalpha dbeta dgamma``."""

    def about_z(angle):
        c, s, o, l = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
        return torch.stack([torch.stack([c, -s, o]), torch.stack([s, c, o]), torch.stack([o, o, l])])

    def about_y(angle):
        c, s, o, l = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
        return torch.stack([torch.stack([c, o, s]), torch.stack([o, l, o]), torch.stack([-s, o, c])])

    return about_z(alpha) @ about_y(beta) @ about_z(gamma)


def circular_aware_error(a: torch.Tensor, b: torch.Tensor, circular_mask: torch.Tensor) -> float:
    difference = a - b
    wrapped = torch.remainder(difference + 0.5, 1.0) - 0.5
    return torch.where(circular_mask, wrapped, difference).abs().max().item()


def topology_from_bonds(elements: list[str], bonds: list[tuple[int, int]]) -> mdtraj.Topology:
    topology = mdtraj.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    atoms = [
        topology.add_atom(f"{symbol}{k}", mdtraj.element.get_by_symbol(symbol), residue)
        for k, symbol in enumerate(elements)
    ]
    for i, j in bonds:
        topology.add_bond(atoms[i], atoms[j])
    return topology


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def alanine_dipeptide():
    return systems.load("alanine_dipeptide_implicit")


@pytest.fixture(scope="module")
def zmatrix(alanine_dipeptide) -> ZMatrix:
    return ZMatrix.from_topology(alanine_dipeptide.mdtraj_topology)


@pytest.fixture(scope="module")
def reference_positions(alanine_dipeptide) -> torch.Tensor:
    return torch.tensor(alanine_dipeptide.positions, dtype=torch.float64)


@pytest.fixture(scope="module")
def data(reference_positions) -> torch.Tensor:
    """64 perturbed frames ``[64, 66]`` float64 (0.01 nm Gaussian noise per coordinate)."""
    generator = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(64, N_ATOMS, 3, generator=generator, dtype=torch.float64)
    return (reference_positions + noise).reshape(64, -1)


@pytest.fixture()
def transform(zmatrix, data) -> InternalCoordinateTransform:
    return InternalCoordinateTransform(zmatrix).fit_normalization(data)


# ----------------------------------------------------------------------------- Z-matrix
def test_alanine_dipeptide_zmatrix_has_60_coordinates_and_places_each_atom_once(zmatrix, alanine_dipeptide):
    topology = alanine_dipeptide.mdtraj_topology
    assert zmatrix.n_atoms == N_ATOMS and zmatrix.n_internal == 60
    assert zmatrix.bond_atoms.shape == (21, 2)
    assert zmatrix.angle_atoms.shape == (20, 3)
    assert zmatrix.torsion_atoms.shape == (19, 4)
    assert sorted(zmatrix.placement_order.tolist()) == list(range(N_ATOMS))
    assert [topology.atom(k).name for k in zmatrix.root] == ["N", "CA", "C"]
    bonds = {frozenset((b[0].index, b[1].index)) for b in topology.bonds}
    r0, r1, r2 = zmatrix.root
    assert {frozenset((r0, r1)), frozenset((r1, r2))} <= bonds
    placed = set(zmatrix.root)
    for i, a, b, c in zmatrix.rows.tolist():
        assert {a, b, c} <= placed, f"row {(i, a, b, c)} refers to atoms not yet placed"
        assert {frozenset((i, a)), frozenset((a, b))} <= bonds
        # c continues the chain (proper torsion) or is another branch at a (relative torsion)
        assert frozenset((b, c)) in bonds or frozenset((a, c)) in bonds
        placed.add(i)
    assert all(topology.atom(k).element.symbol != "H" for k in zmatrix.rows[:, 1:3].ravel())
    # every bond of the molecule (a tree) is a bond coordinate
    assert {frozenset(pair) for pair in zmatrix.bond_atoms.tolist()} == bonds


def test_without_relative_torsions_all_torsions_are_proper_and_siblings_share_references(alanine_dipeptide):
    topology = alanine_dipeptide.mdtraj_topology
    zmatrix = ZMatrix.from_topology(topology, relative_torsions=False)
    bonds = {frozenset((b[0].index, b[1].index)) for b in topology.bonds}
    for i, a, b, c in zmatrix.rows.tolist():
        assert {frozenset((i, a)), frozenset((a, b)), frozenset((b, c))} <= bonds, "not a proper torsion chain"
    is_hydrogen = [topology.atom(k).element.symbol == "H" for k in zmatrix.placement_order]
    assert is_hydrogen == sorted(is_hydrogen), "a heavy atom is placed after a hydrogen"
    references_by_parent: dict[int, set] = {}
    for i, a, b, c in zmatrix.rows.tolist():
        if topology.atom(i).element.symbol == "H":
            references_by_parent.setdefault(a, set()).add((b, c))
    assert len(references_by_parent) == 6  # N-H x2, CA-H, three methyls
    assert all(len(refs) == 1 for refs in references_by_parent.values())


def test_relative_torsions_leave_one_free_torsion_per_rotatable_bond(zmatrix, alanine_dipeptide):
    """Default Z-matrix: per bond a-b, the first branch has a proper torsion, later ones refer to it."""
    topology = alanine_dipeptide.mdtraj_topology
    name = {atom.index: f"{atom.residue.name}-{atom.name}" for atom in topology.atoms}
    is_hydrogen = [topology.atom(k).element.symbol == "H" for k in zmatrix.placement_order]
    assert is_hydrogen == sorted(is_hydrogen), "a heavy atom is placed after a hydrogen"
    bonds = {frozenset((b[0].index, b[1].index)) for b in topology.bonds}
    free = [(i, a, b, c) for i, a, b, c in zmatrix.rows.tolist() if frozenset((b, c)) in bonds]
    assert sorted(name[i] for i, *_ in free) == sorted(
        ["ACE-C", "NME-N", "ACE-O", "NME-C", "ALA-HB1", "ACE-H1", "NME-H1"]
    )  # phi, psi, two omegas and three methyl rotors
    assert len({frozenset((a, b)) for _, a, b, _ in free}) == len(free)
    rows = {name[i]: (a, b, c) for i, a, b, c in zmatrix.rows.tolist()}
    index = {value: key for key, value in name.items()}
    for methyl in ("ACE-H", "ALA-HB", "NME-H"):
        for k in (2, 3):
            assert rows[f"{methyl}{k}"][2] == index[f"{methyl}1"]
    assert rows["ALA-O"][2] == index["NME-N"] and rows["ALA-CB"][2] == index["ALA-C"]


def test_relative_torsions_are_narrow_in_equilibrium_data(zmatrix, alanine_dipeptide):
    """The offsets between branches are nearly fixed (std < 0.25 rad), the free torsions are not
    (with the hydrogens of each methyl in one labelling, see boltzgen.equivalent_hydrogens)."""
    from boltzgen.equivalent_hydrogens import canonicalize_hydrogen_labels, equivalent_hydrogen_groups
    from boltzgen.systems import reference_data

    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology, alanine_dipeptide.openmm_system)
    frames = np.array(reference_data("alanine_dipeptide_implicit").positions[::20])
    positions = torch.as_tensor(canonicalize_hydrogen_labels(frames, groups)[0])
    transform = InternalCoordinateTransform(zmatrix).fit_normalization(positions.reshape(len(positions), -1))
    torsions = transform.physical_internal_coordinates(positions.reshape(len(positions), -1).double())[:, 41:]
    resultant = torch.exp(1j * torsions).mean(0).abs()
    circular_std = torch.sqrt(-2 * torch.log(resultant))
    bonds = {frozenset((b[0].index, b[1].index)) for b in alanine_dipeptide.mdtraj_topology.bonds}
    relative = torch.tensor([frozenset((b, c)) not in bonds for _, _, b, c in zmatrix.rows.tolist()])
    assert circular_std[relative].max() < 0.25
    assert (circular_std[~relative] > 0.25).sum() >= 5  # phi, psi and the three methyl rotors


def test_phi_and_psi_are_torsion_coordinates(zmatrix, alanine_dipeptide, data, transform):
    frames = data[:8]
    trajectory = mdtraj.Trajectory(frames.reshape(8, N_ATOMS, 3).numpy(), alanine_dipeptide.mdtraj_topology)
    ic = transform.physical_internal_coordinates(frames)
    for compute in (mdtraj.compute_phi, mdtraj.compute_psi):
        (atoms,), values = compute(trajectory)
        row = zmatrix.find_torsion(atoms)
        assert row == zmatrix.find_torsion(atoms[::-1])
        index = transform.torsion_coordinate_index(atoms)
        assert bool(transform.circular_mask[index]) and index == 41 + row
        np.testing.assert_allclose(ic[:, index].numpy(), values[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="no torsion over atoms"):
        zmatrix.find_torsion([0, 1, 2, 3])


def test_physical_internal_coordinates_match_mdtraj_geometry(zmatrix, alanine_dipeptide, data, transform):
    frames = data[:8]
    trajectory = mdtraj.Trajectory(frames.reshape(8, N_ATOMS, 3).numpy(), alanine_dipeptide.mdtraj_topology)
    ic = transform.physical_internal_coordinates(frames).numpy()
    np.testing.assert_allclose(ic[:, :21], mdtraj.compute_distances(trajectory, zmatrix.bond_atoms), atol=2e-6)
    np.testing.assert_allclose(ic[:, 21:41], mdtraj.compute_angles(trajectory, zmatrix.angle_atoms), atol=2e-5)
    torsion_error = np.angle(np.exp(1j * (ic[:, 41:] - mdtraj.compute_dihedrals(trajectory, zmatrix.torsion_atoms))))
    assert np.abs(torsion_error).max() < 5e-5


@pytest.mark.parametrize(
    "root, rows, message",
    [
        ((0, 1, 2), [[3, 2, 1, 0], [4, 3, 2, 1]], "missing atoms \\[5\\]"),
        ((0, 1, 2), [[3, 2, 1, 0], [4, 3, 2, 1], [4, 3, 2, 1], [5, 4, 3, 2]], "more than once \\[4\\]"),
        ((0, 1, 2), [[3, 2, 1, 0], [4, 3, 2, 1], [2, 4, 3, 1]], "more than once \\[2\\]"),
        ((0, 1, 2), [[3, 2, 1, 0], [4, 5, 2, 1], [5, 4, 3, 2]], "placed after 4"),
        ((0, 1, 2), [[3, 2, 1, 0], [4, 3, 3, 1], [5, 4, 3, 2]], "repeats an atom"),
        ((0, 1, 2), [[3, 2, 1, 0], [4, 3, 2, 1], [6, 4, 3, 2]], "outside \\[0, 6\\)"),
        ((0, 1, 2), [[3, 2, 1]], "shape"),
    ],
)
def test_invalid_zmatrix_raises(root, rows, message):
    with pytest.raises(ValueError, match=message):
        ZMatrix(root=root, rows=np.array(rows), n_atoms=6)


def test_from_topology_rejects_disconnected_and_tiny_molecules():
    two_waters = topology_from_bonds(["O", "H", "H", "O", "H", "H"], [(0, 1), (0, 2), (3, 4), (3, 5)])
    with pytest.raises(ValueError, match="not connected"):
        ZMatrix.from_topology(two_waters)
    with pytest.raises(ValueError, match="at least 3 atoms"):
        ZMatrix.from_topology(topology_from_bonds(["H", "H"], [(0, 1)]))


def _cyclohexane():
    carbons = [(k, (k + 1) % 6) for k in range(6)]
    hydrogens = [(k, 6 + 2 * k + s) for k in range(6) for s in range(2)]
    return ["C"] * 6 + ["H"] * 12, carbons + hydrogens


@pytest.mark.parametrize(
    "elements, bonds",
    [
        (["O", "H", "H"], [(0, 1), (0, 2)]),  # water: the root only
        (["C", "H", "H", "H", "H"], [(0, 1), (0, 2), (0, 3), (0, 4)]),  # methane: no proper chain
        (["C", "C", "C"] + ["H"] * 8,  # propane
         [(0, 1), (1, 2), (0, 3), (0, 4), (0, 5), (1, 6), (1, 7), (2, 8), (2, 9), (2, 10)]),
        _cyclohexane(),  # a ring
    ],
    ids=["water", "methane", "propane", "cyclohexane"],
)
def test_any_connected_molecule_gets_a_valid_zmatrix_and_round_trips(elements, bonds):
    topology = topology_from_bonds(elements, bonds)
    zmatrix = ZMatrix.from_topology(topology)
    n_atoms = len(elements)
    assert sorted(zmatrix.placement_order.tolist()) == list(range(n_atoms))
    bonded = {frozenset(pair) for pair in bonds}
    assert all(frozenset((i, a)) in bonded for i, a, _, _ in zmatrix.rows.tolist())
    assert not topology.atom(zmatrix.root[1]).element.symbol == "H"
    if sum(symbol != "H" for symbol in elements) >= 3:  # references avoid hydrogens when they can
        assert all(elements[k] != "H" for k in zmatrix.rows[:, 1:3].ravel())

    generator = torch.Generator().manual_seed(n_atoms)
    x = 0.15 * torch.randn(4, n_atoms * 3, generator=generator, dtype=torch.float64)
    transform = InternalCoordinateTransform(zmatrix).double().fit_normalization(x)
    u, logdet_inverse = transform.inverse(x)
    rebuilt, logdet_forward = transform(u)
    assert u.shape == (4, 3 * n_atoms - 6)
    for k in range(4):
        deviation = max_deviation_after_alignment(rebuilt[k].reshape(-1, 3), x[k].reshape(-1, 3))
        assert deviation < 1e-10
    assert (logdet_forward + logdet_inverse).abs().max() < 1e-10


def test_protein_backbone_torsions_are_all_torsion_coordinates():
    """Villin headpiece (35 residues, with Pro/Phe/Trp/His rings) from OpenMM's test data."""
    import openmm.app

    path = os.path.join(os.path.dirname(openmm.app.__file__), "data", "test.pdb")
    if not os.path.exists(path):
        pytest.skip("OpenMM's test.pdb is not installed")
    system = mdtraj.load(path)
    protein = system.atom_slice(sorted(atom.index for atom in system.topology.find_molecules()[0]))
    zmatrix = ZMatrix.from_topology(protein.topology)
    assert zmatrix.n_atoms == protein.n_atoms == 582
    root_atoms = [protein.topology.atom(k) for k in zmatrix.root]
    assert all(atom.is_backbone for atom in root_atoms)
    assert all(16 <= atom.residue.index <= 18 for atom in root_atoms)  # near the middle residue
    for compute in (mdtraj.compute_phi, mdtraj.compute_psi, mdtraj.compute_omega):
        quadruples, _ = compute(protein)
        assert len(quadruples) == 34
        for quadruple in quadruples:
            zmatrix.find_torsion(quadruple)
    transform = InternalCoordinateTransform(zmatrix).double()
    x = torch.tensor(protein.xyz.reshape(1, -1), dtype=torch.float64)
    u, logdet_inverse = transform.fit_normalization(x).inverse(x)
    rebuilt, logdet_forward = transform(u)
    assert max_deviation_after_alignment(rebuilt.reshape(-1, 3), x.reshape(-1, 3)) < 1e-10
    assert abs((logdet_forward + logdet_inverse).item()) < 1e-9


# ----------------------------------------------------------------------------- transform: layout
def test_layout_indices_and_circular_mask(transform):
    assert transform.dim_internal == 60 and transform.dim_cartesian == 66
    assert transform.bond_indices.tolist() == list(range(0, 21))
    assert transform.angle_indices.tolist() == list(range(21, 41))
    assert transform.torsion_indices.tolist() == list(range(41, 60))
    mask = transform.circular_mask
    assert mask.dtype == torch.bool and mask.shape == (60,)
    assert mask.nonzero().flatten().tolist() == transform.torsion_indices.tolist()


def test_forward_builds_the_canonical_frame(transform):
    generator = torch.Generator().manual_seed(1)
    u = torch.rand(16, 60, generator=generator, dtype=torch.float64)
    x, _ = transform.double()(u)
    positions = x.reshape(16, N_ATOMS, 3)
    r0, r1, r2 = transform.zmatrix.root
    assert positions[:, r0].abs().max() == 0
    assert (positions[:, r1, 0] > 0).all() and positions[:, r1, 1:].abs().max() == 0
    assert (positions[:, r2, 1] > 0).all() and positions[:, r2, 2].abs().max() == 0


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype, tolerance_nm", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_cartesian_round_trip_after_rigid_motion_and_noise(transform, data, dtype, tolerance_nm):
    generator = torch.Generator().manual_seed(2)
    frames = data[:16].reshape(16, N_ATOMS, 3)
    frames = frames + 0.02 * torch.randn(frames.shape, generator=generator, dtype=torch.float64)
    moved = torch.stack([
        frame @ random_rotation(generator).T + 3.0 * torch.randn(3, generator=generator, dtype=torch.float64)
        for frame in frames
    ])
    transform = transform.to(dtype)
    x = moved.reshape(16, -1).to(dtype)
    u, logdet_inverse = transform.inverse(x)
    rebuilt, logdet_forward = transform(u)
    assert u.dtype == rebuilt.dtype == logdet_forward.dtype == dtype
    assert rebuilt.shape == (16, 66) and logdet_forward.shape == logdet_inverse.shape == (16,)
    for k in range(16):
        deviation = max_deviation_after_alignment(rebuilt[k].reshape(-1, 3), x[k].reshape(-1, 3))
        assert deviation < tolerance_nm, f"frame {k}: {deviation:.2e} nm"
    relative = (logdet_forward + logdet_inverse).abs().max() / logdet_forward.abs().max()
    assert relative < (1e-6 if dtype == torch.float32 else 1e-13)
    # internal coordinates are invariant under rigid motions
    u_unmoved, logdet_unmoved = transform.inverse(frames.reshape(16, -1).to(dtype))
    assert circular_aware_error(u, u_unmoved, transform.circular_mask) < (1e-4 if dtype == torch.float32 else 1e-10)
    torch.testing.assert_close(logdet_inverse, logdet_unmoved)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_internal_round_trip_from_random_unit_box_points(transform, dtype, tolerance):
    generator = torch.Generator().manual_seed(3)
    u = torch.rand(64, 60, generator=generator, dtype=torch.float64).to(dtype)
    transform = transform.to(dtype)
    x, logdet_forward = transform(u)
    u_back, logdet_inverse = transform.inverse(x)
    assert circular_aware_error(u_back, u, transform.circular_mask) < tolerance
    assert u_back[:, transform.circular_mask].min() >= 0 and u_back[:, transform.circular_mask].max() < 1
    assert (logdet_forward + logdet_inverse).abs().max() < tolerance * logdet_forward.abs().max()


def test_torsions_are_periodic_in_the_forward_direction(transform):
    generator = torch.Generator().manual_seed(4)
    u = torch.rand(8, 60, generator=generator, dtype=torch.float64)
    shift = torch.zeros_like(u)
    shift[:, transform.circular_mask] = torch.randint(-2, 3, (8, 19), generator=generator).double()
    transform = transform.double()
    x, logdet = transform(u)
    x_shifted, logdet_shifted = transform(u + shift)
    assert (x - x_shifted).abs().max() < 1e-12
    torch.testing.assert_close(logdet, logdet_shifted)


# ----------------------------------------------------------------------------- exact log-det
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torsion_of_exactly_pi_maps_into_the_half_open_unit_interval(dtype):
    """A trans-planar chain has torsion +pi exactly: it must map to 0, not 1."""
    chain = ZMatrix.from_topology(topology_from_bonds(["C"] * 4, [(0, 1), (1, 2), (2, 3)]))
    transform = InternalCoordinateTransform(chain, bond_interval=(0.1, 0.2), angle_interval=(1.0, 2.0))
    x = 0.15 * torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1, -1, 0, 1]], dtype=dtype)
    assert transform.physical_internal_coordinates(x)[0, -1].item() == torch.tensor(math.pi, dtype=dtype).item()
    u, _ = transform.inverse(x)
    assert u[0, -1].item() == 0.0


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_logdet_equals_full_jacobian_with_six_global_degrees_of_freedom(transform, seed):
    """Complete u -> x by a translation t and a ZYZ rotation: |det J| = exp(logdet) * sin(beta)."""
    transform = transform.double()
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(60, generator=generator, dtype=torch.float64)
    translation = torch.randn(3, generator=generator, dtype=torch.float64)
    euler = torch.tensor([2 * math.pi, 2.6, 2 * math.pi], dtype=torch.float64) * torch.rand(
        3, generator=generator, dtype=torch.float64
    ) + torch.tensor([0.0, 0.25, 0.0], dtype=torch.float64)

    def full_map(variables: torch.Tensor) -> torch.Tensor:
        x, _ = transform(variables[6:][None])
        rotation = rotation_zyz(*variables[3:6])
        return (x.reshape(N_ATOMS, 3) @ rotation.T + variables[:3]).reshape(-1)

    variables = torch.cat([translation, euler, u])
    jacobian = torch.autograd.functional.jacobian(full_map, variables)
    assert jacobian.shape == (66, 66)
    _, log_abs_det = torch.linalg.slogdet(jacobian)
    x, logdet_forward = transform(u[None])
    assert abs(log_abs_det.item() - (logdet_forward.item() + math.log(math.sin(euler[1].item())))) < 1e-8
    # the inverse reports minus the same volume, from the rotated and translated structure
    moved = full_map(variables)[None]
    u_back, logdet_inverse = transform.inverse(moved)
    assert abs(logdet_inverse.item() + logdet_forward.item()) < 1e-9
    assert circular_aware_error(u_back, u[None], transform.circular_mask) < 1e-10


def test_logdet_formula_uses_bond_lengths_sines_and_interval_widths(transform, data):
    """Independent closed form: sum 2 log b + sum log sin(theta) + sum log(high - low)."""
    transform = transform.double()
    ic = transform.physical_internal_coordinates(data[:4])
    widths = transform.ic_high - transform.ic_low
    expected = (
        2 * ic[:, :21].log().sum(-1)
        + ic[:, 21:41].sin().log().sum(-1)
        + widths[:41].log().sum()
        + 19 * math.log(2 * math.pi)
    )
    _, logdet_inverse = transform.inverse(data[:4])
    torch.testing.assert_close(-logdet_inverse, expected, rtol=0, atol=1e-10)
    assert widths[41:].allclose(torch.tensor(2 * math.pi, dtype=torch.float64))


def test_gradients_and_second_derivatives_are_finite(transform, data):
    transform = transform.double()
    x = data[:4].clone().requires_grad_(True)
    u, logdet = transform.inverse(x)
    (gradient,) = torch.autograd.grad((u.sin().sum() + logdet.sum()), x, create_graph=True)
    (second,) = torch.autograd.grad(gradient.square().sum(), x)
    assert torch.isfinite(gradient).all() and torch.isfinite(second).all()


# ----------------------------------------------------------------------------- normalisation
def test_fitted_intervals_contain_data_and_held_out_frames(transform, reference_positions, zmatrix):
    generator = torch.Generator().manual_seed(8)
    held_out = (reference_positions + 0.01 * torch.randn(256, N_ATOMS, 3, generator=generator,
                                                          dtype=torch.float64)).reshape(256, -1)
    u, logdet = transform.double().inverse(held_out)
    assert not transform.out_of_bounds(u).any()
    assert u.min() >= 0 and u.max() <= 1 and torch.isfinite(logdet).all()
    low, high = transform.ic_low, transform.ic_high
    assert (low[:21] > 0).all() and (low[21:41] > 0).all() and (high[21:41] < math.pi).all()
    assert (low < high).all()


def test_out_of_interval_frames_map_outside_the_unit_box(transform, data):
    transform = transform.double()
    frames = data[:3].reshape(3, N_ATOMS, 3).clone()
    i, a = transform.zmatrix.rows[-1, :2]  # a hydrogen: stretch its bond to 3x its length
    frames[1, i] = frames[1, a] + 3.0 * (frames[1, i] - frames[1, a])
    u, logdet = transform.inverse(frames.reshape(3, -1))
    assert transform.out_of_bounds(u).tolist() == [False, True, False]
    assert u[1, 20] > 1  # the last bond coordinate, not clipped
    assert torch.isfinite(logdet).all()
    torsions = u[:, transform.circular_mask]
    assert torsions.min() >= 0 and torsions.max() < 1


def test_normalization_is_required_and_survives_state_dict(zmatrix, transform, data):
    fresh = InternalCoordinateTransform(zmatrix)
    assert not fresh.normalization_set
    with pytest.raises(RuntimeError, match="fit_normalization"):
        fresh.inverse(data[:2].float())
    fresh.load_state_dict(transform.state_dict())
    assert fresh.normalization_set
    torch.testing.assert_close(fresh.inverse(data[:2].float()), transform.inverse(data[:2].float()))


def test_constructor_intervals_and_validation(zmatrix, data):
    transform = InternalCoordinateTransform(zmatrix, bond_interval=(0.05, 0.2), angle_interval=(1.5, 2.4))
    assert transform.ic_low[:21].eq(0.05).all() and transform.ic_high[21:41].eq(2.4).all()
    with pytest.raises(ValueError, match="both"):
        InternalCoordinateTransform(zmatrix, bond_interval=(0.05, 0.2))
    with pytest.raises(ValueError, match="low < high"):
        InternalCoordinateTransform(zmatrix, bond_interval=(0.2, 0.05), angle_interval=(1.5, 2.4))
    with pytest.raises(ValueError, match="within \\[0, pi\\]"):
        InternalCoordinateTransform(zmatrix, bond_interval=(0.05, 0.2), angle_interval=(1.5, 3.5))
    with pytest.raises(ValueError, match="broadcastable to \\[21, 2\\]"):
        InternalCoordinateTransform(zmatrix, bond_interval=torch.ones(5, 2), angle_interval=(1.5, 2.4))


def test_wrong_shapes_raise_clear_errors(transform):
    with pytest.raises(ValueError, match=r"\[B, 60\]"):
        transform(torch.rand(3, 66))
    with pytest.raises(ValueError, match=r"\[B, 66\]"):
        transform.inverse(torch.rand(3, 22, 3))
