"""Equivalent hydrogens: find them and give every frame the same labelling of them.

The hydrogens of a methyl, methylene or amine group are identical particles: swapping their
labels leaves the energy unchanged. An MD trajectory never swaps them, but data pooled from
differently built starting structures can hold frames in different labellings (the second and
third hydrogen of a methyl on either side of the first). To a density model these are separate
modes of the labelled configuration space: the torsion of the second hydrogen relative to the
first becomes bimodal (+120 or -120 degrees). `canonicalize_hydrogen_labels` relabels each frame
so that one labelling (orientation) holds throughout; permutation-invariant observables (energies,
backbone torsions, free energies) are unchanged, and the canonical labelled density is the
Boltzmann density restricted to one orientation of each group.

Canonical orientation of a group of hydrogens H_1..H_k on ``parent``, looking along the bond
``parent -> axis`` (a heavy neighbour): going around in the positive dihedral sense from H_1 one
meets H_2, ..., H_k in order. For k >= 3 the atom labelled H_1 keeps its label (its torsion stays
a continuous rotor coordinate); for k = 2, H_1 is the hydrogen from which H_2 lies less than
half a turn ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from boltzgen.geometry import dihedrals


@dataclass(frozen=True)
class HydrogenGroup:
    """Interchangeable hydrogens bonded to one heavy atom.

    Attributes:
        parent: index of the heavy atom carrying the hydrogens.
        axis: index of a heavy neighbour of ``parent``; the group rotates about ``parent-axis``.
        hydrogens: atom indices of the hydrogens in label order (at least two).
    """

    parent: int
    axis: int
    hydrogens: tuple[int, ...]


def equivalent_hydrogen_groups(topology, openmm_system=None) -> list[HydrogenGroup]:
    """Groups of two or more hydrogens on one heavy atom that has a heavy neighbour.

    Args:
        topology: an ``mdtraj.Topology`` (bonds and elements).
        openmm_system: optional ``openmm.System``; when given, only hydrogens with equal masses
            and equal per-particle parameters in every force that has them (charges, Lennard-Jones,
            implicit-solvent radii...) are grouped, so that relabelling leaves the energy unchanged.

    Returns:
        One `HydrogenGroup` per set of interchangeable hydrogens, ordered by parent index.
    """
    atoms = list(topology.atoms)
    neighbours: list[set[int]] = [set() for _ in atoms]
    for bond in topology.bonds:
        neighbours[bond[0].index].add(bond[1].index)
        neighbours[bond[1].index].add(bond[0].index)

    def is_hydrogen(k: int) -> bool:
        element = atoms[k].element
        return element is not None and getattr(element, "number", 0) == 1

    signature = _particle_signatures(openmm_system, len(atoms)) if openmm_system is not None else None
    groups = []
    for parent in range(len(atoms)):
        if is_hydrogen(parent):
            continue
        hydrogens = sorted(k for k in neighbours[parent] if is_hydrogen(k) and len(neighbours[k]) == 1)
        heavy = sorted(k for k in neighbours[parent] if not is_hydrogen(k))
        if len(hydrogens) < 2 or not heavy:
            continue
        classes: dict[object, list[int]] = {}
        for k in hydrogens:
            classes.setdefault(None if signature is None else signature[k], []).append(k)
        for members in classes.values():
            if len(members) >= 2:
                groups.append(HydrogenGroup(parent, heavy[0], tuple(members)))
    return groups


def _particle_signatures(openmm_system, n_atoms: int) -> list[tuple]:
    """Per-particle (mass, parameters of every force) tuples, rounded for comparison."""
    if openmm_system.getNumParticles() != n_atoms:
        raise ValueError(
            f"the OpenMM system has {openmm_system.getNumParticles()} particles, the topology {n_atoms} atoms"
        )
    signatures: list[list] = [[round(openmm_system.getParticleMass(k)._value, 6)] for k in range(n_atoms)]
    for force in openmm_system.getForces():
        if not (hasattr(force, "getNumParticles") and hasattr(force, "getParticleParameters")):
            continue
        if force.getNumParticles() != n_atoms:
            continue
        for k in range(n_atoms):
            values = force.getParticleParameters(k)
            signatures[k].append(tuple(_plain_number(v) for v in values))
    return [tuple(s) for s in signatures]


def _plain_number(value) -> object:
    value = getattr(value, "_value", value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain_number(v) for v in value)
    try:
        return round(float(value), 8)
    except (TypeError, ValueError):
        return value


def canonicalize_hydrogen_labels(
    positions: np.ndarray, groups: list[HydrogenGroup], reference: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Relabel the hydrogens of every group into the canonical orientation, frame by frame.

    Args:
        positions: ``[F, N, 3]`` or ``[F, 3N]`` positions (nm); not modified.
        groups: from `equivalent_hydrogen_groups`.
        reference: optional structure whose orientation is the canonical one (see `hydrogen_permutations`).

    Returns:
        ``(relabelled positions`` of the input's shape and dtype``, number of frames changed)``.
        Relabel other per-atom arrays (forces) alike with `hydrogen_permutations` and
        `apply_hydrogen_permutation`.
    """
    permutation = hydrogen_permutations(positions, groups, reference)
    return apply_hydrogen_permutation(positions, permutation), count_relabelled_frames(permutation)


def count_relabelled_frames(permutation: np.ndarray) -> int:
    """Number of frames whose ``permutation`` ``[F, N]`` row is not the identity."""
    return int((permutation != np.arange(permutation.shape[1])).any(axis=1).sum())


def apply_hydrogen_permutation(values: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Per-atom values ``[F, N, 3]`` or ``[F, 3N]`` (positions, forces) relabelled by
    ``permutation`` ``[F, N]`` from `hydrogen_permutations`; same shape and dtype."""
    array = np.asarray(values)
    per_atom = array.reshape(array.shape[0], -1, 3)
    if per_atom.shape[:2] != permutation.shape:
        raise ValueError(f"values {array.shape} do not match the permutation {permutation.shape} ([F, N])")
    return np.take_along_axis(per_atom, permutation[:, :, None], axis=1).reshape(array.shape)


def hydrogen_permutations(
    positions: np.ndarray, groups: list[HydrogenGroup], reference: np.ndarray | None = None
) -> np.ndarray:
    """``[F, N]`` int64: for each frame, the atom whose coordinates go to each label.

    ``relabelled[f, label] = positions[f, permutation[f, label]]``. The canonical orientation puts
    the group's other hydrogens in the order of their dihedral from the first one; with a
    ``reference`` structure (``[N, 3]`` or ``[3N]`` nm, e.g. the force field's own) the orientation
    is the reference's instead, so that frames labelled like the reference keep their labels.
    """
    if reference is not None:
        reference_permutation = hydrogen_permutations(np.asarray(reference).reshape(1, -1, 3), groups)[0]
        inverse = np.argsort(reference_permutation)
        return hydrogen_permutations(positions, groups)[:, inverse]
    frames = np.asarray(positions)
    if frames.ndim == 2:
        frames = frames.reshape(frames.shape[0], -1, 3)
    if frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"positions must be [F, N, 3] or [F, 3N], got {np.shape(positions)}")
    n_frames, n_atoms = frames.shape[:2]
    permutation = np.tile(np.arange(n_atoms, dtype=np.int64), (n_frames, 1))
    xyz = torch.tensor(frames, dtype=torch.float64)
    for group in groups:
        first = group.hydrogens[0]
        quadruples = [[h, group.parent, group.axis, first] for h in group.hydrogens[1:]]
        ahead = np.mod(dihedrals(xyz, quadruples).numpy(), 2.0 * np.pi)  # [F, k - 1], in (0, 2 pi)
        members = np.asarray(group.hydrogens)
        if len(members) == 2:
            order = np.where(ahead[:, :1] > np.pi, [1, 0], [0, 1])
        else:
            order = np.concatenate([np.zeros((n_frames, 1), dtype=np.int64), 1 + np.argsort(ahead, axis=1)], axis=1)
        permutation[:, members] = members[order]
    return permutation
