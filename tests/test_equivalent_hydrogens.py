"""Equivalent hydrogens: grouping, energy invariance of relabelling (OpenMM), canonical orientation."""

import copy

import mdtraj
import numpy as np
import openmm
import pytest
import torch

from boltzgen import systems
from boltzgen.energy import OpenMMEnergy
from boltzgen.equivalent_hydrogens import (
    apply_hydrogen_permutation,
    canonicalize_hydrogen_labels,
    equivalent_hydrogen_groups,
    hydrogen_permutations,
)
from boltzgen.geometry import dihedrals
from boltzgen.systems import reference_data


@pytest.fixture(scope="module")
def alanine_dipeptide():
    return systems.load("alanine_dipeptide_implicit")


@pytest.fixture(scope="module")
def frames():
    return np.array(reference_data("alanine_dipeptide_implicit").positions[::500])  # [92, 22, 3]


def atom_names(topology, indices):
    return [f"{topology.atom(k).residue.name}-{topology.atom(k).name}" for k in indices]


def test_alanine_dipeptide_has_three_methyl_groups(alanine_dipeptide):
    topology = alanine_dipeptide.mdtraj_topology
    groups = equivalent_hydrogen_groups(topology, alanine_dipeptide.openmm_system)
    assert [atom_names(topology, [g.parent, g.axis]) for g in groups] == [
        ["ACE-CH3", "ACE-C"], ["ALA-CB", "ALA-CA"], ["NME-C", "NME-N"]
    ]
    assert [atom_names(topology, g.hydrogens) for g in groups] == [
        ["ACE-H1", "ACE-H2", "ACE-H3"], ["ALA-HB1", "ALA-HB2", "ALA-HB3"], ["NME-H1", "NME-H2", "NME-H3"]
    ]
    assert equivalent_hydrogen_groups(topology) == groups  # no parameter check needed here


def test_hydrogens_with_different_parameters_are_not_grouped(alanine_dipeptide):
    system = copy.deepcopy(alanine_dipeptide.openmm_system)
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charge, sigma, epsilon = nonbonded.getParticleParameters(14)  # ALA-HB2
    nonbonded.setParticleParameters(14, charge * 1.1, sigma, epsilon)
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology, system)
    beta = next(g for g in groups if g.parent == 12)
    assert beta.hydrogens == (13, 15)


def test_relabelling_leaves_the_openmm_energy_unchanged(alanine_dipeptide, frames):
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology, alanine_dipeptide.openmm_system)
    relabelled, changed = canonicalize_hydrogen_labels(frames, groups)
    assert changed > 0 and relabelled.shape == frames.shape and relabelled.dtype == frames.dtype
    energy = OpenMMEnergy(alanine_dipeptide.openmm_system, alanine_dipeptide.temperature, platform="Reference")
    try:
        before = energy.energy(torch.as_tensor(frames.reshape(len(frames), -1), dtype=torch.float64))
        after = energy.energy(torch.as_tensor(relabelled.reshape(len(frames), -1), dtype=torch.float64))
    finally:
        energy.close()
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-9, atol=1e-7)
    # only hydrogens of the groups move, and each frame is a permutation of the original atoms
    movable = {h for g in groups for h in g.hydrogens}
    fixed = [k for k in range(frames.shape[1]) if k not in movable]
    np.testing.assert_array_equal(relabelled[:, fixed], frames[:, fixed])
    np.testing.assert_array_equal(np.sort(relabelled, axis=1), np.sort(frames, axis=1))


def test_canonical_orientation_is_positive_and_idempotent(alanine_dipeptide, frames):
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology)
    relabelled, _ = canonicalize_hydrogen_labels(frames.reshape(len(frames), -1), groups)  # [F, 3N] input
    assert relabelled.shape == (len(frames), 66)
    xyz = torch.as_tensor(relabelled.reshape(len(frames), -1, 3), dtype=torch.float64)
    for g in groups:
        h1, h2, h3 = g.hydrogens
        ahead = np.mod(dihedrals(xyz, [[h2, g.parent, g.axis, h1], [h3, g.parent, g.axis, h1]]).numpy(), 2 * np.pi)
        assert (ahead[:, 0] < ahead[:, 1]).all()
        np.testing.assert_allclose(ahead.mean(0), [2 * np.pi / 3, 4 * np.pi / 3], atol=0.1)
    again, changed = canonicalize_hydrogen_labels(relabelled, groups)
    assert changed == 0 and np.array_equal(again, relabelled)


def test_two_hydrogens_get_the_one_less_than_half_a_turn_ahead_as_second():
    """A CH2 group (ethane-like fragment C-CH2): H2 lies within half a turn ahead of H1."""
    topology = mdtraj.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    elements = ["C", "C", "H", "H", "H"]
    atoms = [topology.add_atom(f"{e}{k}", mdtraj.element.get_by_symbol(e), residue) for k, e in enumerate(elements)]
    for i, j in [(0, 1), (0, 2), (0, 3), (1, 4)]:
        topology.add_bond(atoms[i], atoms[j])
    groups = equivalent_hydrogen_groups(topology)
    assert [(g.parent, g.axis, g.hydrogens) for g in groups] == [(0, 1, (2, 3))]
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(200, 5, 3))
    permutation = hydrogen_permutations(positions, groups)
    assert set(map(tuple, permutation[:, 2:4].tolist())) == {(2, 3), (3, 2)}
    relabelled, changed = canonicalize_hydrogen_labels(positions, groups)
    assert 0 < changed < 200
    ahead = np.mod(dihedrals(torch.as_tensor(relabelled), [[3, 0, 1, 2]]).numpy()[:, 0], 2 * np.pi)
    assert (ahead < np.pi).all()


def test_bad_shapes_are_rejected(alanine_dipeptide):
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology)
    with pytest.raises(ValueError, match=r"\[F, N, 3\] or \[F, 3N\]"):
        hydrogen_permutations(np.zeros((2, 22, 2)), groups)
    with pytest.raises(ValueError, match="do not match the permutation"):
        apply_hydrogen_permutation(np.zeros((2, 66)), np.zeros((2, 21), dtype=np.int64))
    with pytest.raises(ValueError, match="particles"):
        equivalent_hydrogen_groups(mdtraj.Topology(), alanine_dipeptide.openmm_system)


def test_job_data_permute_forces_with_the_positions(alanine_dipeptide):
    """After relabelling, the stored forces are OpenMM's forces at the relabelled positions."""
    from boltzgen.job.data import load_data

    data = load_data("alanine_dipeptide_implicit", 22)
    subset = data.subset(np.arange(0, data.n_frames, 3000))
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology, alanine_dipeptide.openmm_system)
    canonical, changed = subset.with_canonical_hydrogens(groups)
    assert changed > 0 and not np.array_equal(canonical.positions, subset.positions)
    energy = OpenMMEnergy(alanine_dipeptide.openmm_system, alanine_dipeptide.temperature, platform="Reference")
    try:
        forces = energy.force(torch.as_tensor(canonical.positions, dtype=torch.float64)).numpy()
    finally:
        energy.close()
    np.testing.assert_allclose(canonical.forces, forces, rtol=1e-4, atol=0.05)
    np.testing.assert_array_equal(canonical.reduced_energy, subset.reduced_energy)


def test_a_reference_structure_sets_the_canonical_orientation(alanine_dipeptide, frames):
    groups = equivalent_hydrogen_groups(alanine_dipeptide.mdtraj_topology, alanine_dipeptide.openmm_system)
    reference = alanine_dipeptide.positions  # [22, 3] nm, the force field's own labelling
    identity = np.arange(reference.shape[0])
    assert (hydrogen_permutations(reference[None], groups, reference)[0] == identity).all()
    canonical, _ = canonicalize_hydrogen_labels(frames, groups, reference)
    # still canonical: frames whose methyls have the other handedness of labels (the first
    # hydrogen kept: its torsion is a free coordinate) map to the same positions
    swapped = frames.copy()
    swapped[:, [14, 15]] = frames[:, [15, 14]]
    swapped[:, [2, 3]] = frames[:, [3, 2]]
    np.testing.assert_array_equal(canonicalize_hydrogen_labels(swapped, groups, reference)[0], canonical)
    # the reference's orientation is kept: the canonical form of the reference is the reference
    assert (canonicalize_hydrogen_labels(reference[None], groups, reference)[0][0] == reference).all()
    # and it differs from the default orientation only by one fixed relabelling per group
    default = hydrogen_permutations(frames, groups)
    oriented = hydrogen_permutations(frames, groups, reference)
    fixed = np.argsort(hydrogen_permutations(reference[None], groups)[0])
    np.testing.assert_array_equal(oriented, default[:, fixed])
