"""Space-group operations of periodic configurations (boltzgen.symmetry) and augmentation with them."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.energy import OpenMMEnergy, TorchEnergy
from boltzgen.flows import InverseFlow, SequentialFlow
from boltzgen.flows.rigid_flow import RigidCoordinateLayer, rigid_coupling_flow
from boltzgen.rigid import RigidBodySystem
from boltzgen.symmetry import (
    SymmetryAugmentation,
    SymmetryOperation,
    find_symmetry_operations,
    particle_kinds,
    preserves_topology,
    system_symmetry_operations,
)
from boltzgen.train.temperature_change import mixture_reverse_works, reverse_works
from flow_checks import perturb_parameters, rigid_tangent_log_det

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=None)
def ice(proton_order: str = "genice2"):
    return systems.load("ice_xi_tip4pew_16", proton_order=proton_order, electrostatics="Ewald")


def box_of(system) -> np.ndarray:
    return RigidBodySystem.from_molecular_system(system).box.numpy()


def same_sites(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """Largest minimum-image distance between corresponding points of ``a`` and ``b`` ``[N, 3]``."""
    d = a - b
    d -= np.round(d / box) * box
    return float(np.abs(d).max())


def compose(first: SymmetryOperation, second: SymmetryOperation) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and permutation of ``second`` after ``first``."""
    return second.rotation @ first.rotation, second.permutation[first.permutation]


# ------------------------------------------------------------------ finding the operations


def test_simple_cubic_lattice_has_the_full_cubic_group_times_its_translations():
    grid = np.array(list(itertools.product(range(2), repeat=3)), dtype=np.float64) * 0.5
    box = np.ones(3)
    operations = find_symmetry_operations(grid, box, np.zeros(8, dtype=int))
    assert len(operations) == 48 * 8  # O_h x the 8 lattice translations of a 2 x 2 x 2 cell
    assert operations[0].is_identity and operations[0].is_proper
    assert sum(op.is_proper for op in operations) == 24 * 8
    for op in operations:
        assert same_sites(op.apply(grid), grid, box) < 1e-12
    # a distinguishable particle pins the translation: only the point group about it is left
    kinds = np.zeros(8, dtype=int)
    kinds[3] = 1
    pinned = find_symmetry_operations(grid, box, kinds)
    assert len(pinned) == 48 and all(op.permutation[3] == 3 for op in pinned)
    # an orthorhombic box allows axis sign flips only
    assert len(find_symmetry_operations(grid * [1.0, 1.2, 1.4], box * [1.0, 1.2, 1.4], np.zeros(8, dtype=int))) == 8 * 8


@pytest.mark.parametrize("proton_order, n_operations, n_proper", [("genice2", 8, 8), ("Cmc2_1", 16, 8)])
def test_ice_operations_form_a_group_and_map_the_crystal_onto_itself(proton_order, n_operations, n_proper):
    system = ice(proton_order)
    operations = system_symmetry_operations(system)
    assert len(operations) == n_operations and sum(op.is_proper for op in operations) == n_proper
    assert operations[0].is_identity
    # genice2's antiferroelectric order keeps the 2 x 1 x 1 translation and three 2_1 screw axes; the
    # ferroelectric Cmc2_1 structure the point group mm2 (with its mirrors), C-centring and supercell
    box = box_of(system)
    rotations = {tuple(np.diag(op.rotation).astype(int)) for op in operations}
    if proton_order == "genice2":
        assert rotations == {(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)}
    else:
        assert rotations == {(1, 1, 1), (-1, -1, 1), (1, -1, 1), (-1, 1, 1)}
    for op in operations:
        assert same_sites(op.apply(system.positions), system.positions, box) < 1e-6
        assert preserves_topology(system.openmm_system, op.permutation)
    keys = {(op.rotation.tobytes(), op.permutation.tobytes()) for op in operations}
    for a, b in itertools.product(operations, repeat=2):
        rotation, permutation = compose(a, b)
        assert (rotation.tobytes(), permutation.tobytes()) in keys  # closed under composition


def test_kinds_and_topology_checks_of_the_ice_system():
    system = ice()
    kinds = particle_kinds(system.openmm_system)
    assert kinds.shape == (64,)
    per_molecule = kinds.reshape(16, 4)
    assert (per_molecule == per_molecule[0]).all()  # every water alike
    assert per_molecule[0, 1] == per_molecule[0, 2] and len(set(per_molecule[0].tolist())) == 3  # O, H, M
    identity = np.arange(64)
    assert preserves_topology(system.openmm_system, identity)
    swapped_h = identity.copy()
    swapped_h[[1, 2]] = [2, 1]  # H1 <-> H2 within a molecule: still rigid water
    assert preserves_topology(system.openmm_system, swapped_h)
    across = identity.copy()
    across[[1, 5]] = [5, 1]  # an H of molecule 0 exchanged with one of molecule 1: constraints broken
    assert not preserves_topology(system.openmm_system, across)
    site_swap = identity.copy()
    site_swap[[3, 0]] = [0, 3]  # M (virtual site) <-> O
    assert not preserves_topology(system.openmm_system, site_swap)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="positions must be"):
        find_symmetry_operations(np.zeros((4, 2)), np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match="box must hold"):
        find_symmetry_operations(np.zeros((4, 3)), np.array([1.0, 0.0, 1.0]), np.zeros(4))
    with pytest.raises(ValueError, match="one label per particle"):
        find_symmetry_operations(np.zeros((4, 3)), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="periodic"):
        system_symmetry_operations(systems.load("tetrahedron_in_field"))
    with pytest.raises(ValueError, match="at least one operation"):
        SymmetryAugmentation([])
    augmentation = SymmetryAugmentation(system_symmetry_operations(ice()))
    with pytest.raises(ValueError, match="expected configurations"):
        augmentation(torch.zeros(2, 5, dtype=F64))
    with pytest.raises(IndexError):
        augmentation.apply(torch.zeros(2, 192, dtype=F64), 8)


# ------------------------------------------------------------------ augmentation


def perturbed_ice(n: int, seed: int) -> torch.Tensor:
    """``[n, 192]`` exactly rigid ice configurations, molecules displaced and rotated at random."""
    system = ice()
    rigid = RigidBodySystem.from_molecular_system(system)
    gen = torch.Generator().manual_seed(seed)
    coordinates = rigid.from_cartesian(torch.as_tensor(system.positions.reshape(1, -1)).repeat(n, 1), random_sign=False)
    positions = coordinates.positions + 0.01 * torch.randn(coordinates.positions.shape, generator=gen, dtype=F64)
    quaternions = coordinates.quaternions + 0.03 * torch.randn(coordinates.quaternions.shape, generator=gen, dtype=F64)
    return rigid.to_cartesian(positions, quaternions, coordinates.origin)


def test_every_operation_leaves_the_ice_energy_unchanged_in_torch_and_openmm():
    system = ice()
    augmentation = SymmetryAugmentation(system_symmetry_operations(system))
    x = perturbed_ice(3, seed=0)
    torch_energy = TorchEnergy.from_openmm(system.openmm_system, system.temperature, dtype=F64)
    openmm_energy = OpenMMEnergy(system.openmm_system, system.temperature, "Reference", n_workers=1, parallel="serial")
    u_torch, u_openmm = torch_energy(x), openmm_energy(x)
    assert float((u_torch - u_openmm).abs().max()) < 1e-4  # the same Hamiltonian (Ewald tolerance)
    images = torch.cat([augmentation.apply(x, k) for k in range(len(augmentation))])
    assert float((torch_energy(images) - u_torch.repeat(len(augmentation))).abs().max()) < 1e-9 * float(u_torch.abs().max())
    assert float((openmm_energy(images) - u_openmm.repeat(len(augmentation))).abs().max()) < 1e-9 * float(u_openmm.abs().max())
    # the images are different configurations (not the input relabelled trivially), still exactly rigid
    rigid = RigidBodySystem.from_molecular_system(system)
    assert float(rigid.rigidity_rmsd(images).max()) < 1e-12
    distinct = [float((augmentation.apply(x, k) - x).abs().max()) for k in range(1, len(augmentation))]
    assert min(distinct) > 1e-3
    # each particle's image lands next to the crystal site of its new label: the images stay in the
    # crystal's basin (molecules displaced by ~0.01 nm stay within a few 0.01 nm of their sites)
    box, reference = box_of(system), system.positions
    for k, op in enumerate(augmentation.operations):
        image = augmentation.apply(x, k).reshape(3, -1, 3).numpy()
        np.testing.assert_allclose(image, op.apply(x.reshape(3, -1, 3).numpy()), atol=1e-12)
        assert max(same_sites(frame, reference, box) for frame in image) < 0.1
        assert same_sites(op.apply(reference), reference, box) < 1e-6


def test_random_augmentation_is_seeded_and_uses_every_operation():
    augmentation = SymmetryAugmentation(system_symmetry_operations(ice()))
    x = perturbed_ice(1, seed=1).repeat(400, 1)
    a = augmentation(x, torch.Generator().manual_seed(5))
    b = augmentation(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    singles = torch.cat([augmentation.apply(x[:1], k) for k in range(len(augmentation))])
    # every output row is one of the 8 images, and all 8 occur
    match = (a[:, None, :] - singles[None]).abs().amax(-1) < 1e-12
    assert bool(match.any(1).all()) and bool(match.any(0).all())
    assert augmentation(x.float(), torch.Generator().manual_seed(5)).dtype == torch.float32


def test_operations_preserve_volume_in_the_rigid_flow_coordinates_and_symmetrize_a_flow():
    """Each operation, as a map of the rigid flow's latent manifold (box fractions of molecules
    1..K-1 relative to molecule 0 x (S^3)^K), has |det| = 1: the group average of a rigid flow's
    density is then a normalised density, and its works are invariant under the group."""
    system = ice()
    rigid = RigidBodySystem.from_molecular_system(system)
    layer = RigidCoordinateLayer(rigid)
    augmentation = SymmetryAugmentation(system_symmetry_operations(system))
    x = perturbed_ice(2, seed=2)
    z = layer.inverse(x)[0]
    for k in range(len(augmentation)):
        def mapped(u, k=k):
            return layer.inverse(augmentation.apply(layer(u)[0], k))

        log_det = rigid_tangent_log_det(mapped, z, layer.layout)
        assert float(log_det.abs().max()) < 1e-9, (k, log_det)
    # a random (non-symmetric) flow f = L o g o L^-1; its group-averaged works are invariant
    latent = rigid_coupling_flow(rigid.n_molecules, 1, hidden=(16,), conditioner="mlp", n_bins=4)
    flow = SequentialFlow([InverseFlow(layer), perturb_parameters(latent.double(), scale=0.05, seed=1), layer])
    energy = TorchEnergy.from_openmm(system.openmm_system, system.temperature, dtype=F64)

    def base(u):
        return 0.4 * energy(u)

    works = mixture_reverse_works(flow, x, energy(x), base, augmentation)
    for k in range(1, len(augmentation)):
        image = augmentation.apply(x, k)
        torch.testing.assert_close(mixture_reverse_works(flow, image, energy(image), base, augmentation),
                                   works, rtol=0, atol=1e-7)
    plain = reverse_works(flow, x, energy(x), base)
    assert float((works - plain).abs().min()) > 1e-3  # the flow is not invariant: averaging matters
