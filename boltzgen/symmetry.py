"""Symmetry operations of a periodic configuration (a crystal) and data augmentation with them.

A molecular crystal in a periodic box is mapped onto itself by the operations of its space group
(restricted to the box): an isometry ``r -> R r + t`` of the box lattice followed by a
relabelling of identical particles. The potential energy is invariant under every such operation
(identical particles have identical parameters, the lattice sum is unchanged), so the equilibrium
ensemble of the crystal is too: an MD frame mapped by an operation is another, equally probable,
frame of the same ensemble, with the same energy. Training a flow on the images of its data
multiplies the data by the order of the group (ice XI of `systems.rigid.ice_xi_tip4pew_16`: 8
operations) at no cost in MD; the flow itself needs no symmetry.

- :func:`find_symmetry_operations`: the operations that map a reference configuration onto
  itself, given which particles are interchangeable (``kinds``), for an orthorhombic box;
- :func:`particle_kinds`, :func:`preserves_topology` and :func:`system_symmetry_operations`: the
  same from an ``openmm.System`` (interchangeable = same mass and nonbonded parameters; the
  relabelling must map constraints, nonbonded exceptions and virtual sites onto themselves);
- :class:`SymmetryAugmentation`: applies a random operation per configuration to batches
  ``[B, 3N]`` (nm), e.g. as the ``augment`` of `boltzgen.train.train_temperature_change`.

Convention: operation ``(R, t, permutation)`` maps configuration ``x [N, 3]`` to ``x'`` with
``x'[permutation[i]] = R x[i] + t`` (particle ``i``'s image takes the label of the particle whose
site it lands on). Positions need not be wrapped into the box, and the images are not wrapped
either (molecules stay whole).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class SymmetryOperation:
    """``x'[permutation[i]] = rotation @ x[i] + translation`` (module docstring).

    Attributes:
        rotation: ``[3, 3]`` orthogonal matrix (a signed permutation of the box axes).
        translation: ``[3]`` nm.
        permutation: ``[N]`` int, a permutation of the particle indices.
    """

    rotation: np.ndarray
    translation: np.ndarray
    permutation: np.ndarray

    @property
    def is_proper(self) -> bool:
        """True for a rotation (det +1), False for a reflection or roto-inversion."""
        return bool(np.linalg.det(self.rotation) > 0)

    @property
    def is_identity(self) -> bool:
        """True for ``R = 1`` with the identity relabelling (``t`` is then a lattice vector, 0 in the box)."""
        return bool(np.allclose(self.rotation, np.eye(3)) and (self.permutation == np.arange(len(self.permutation))).all())

    def apply(self, positions: np.ndarray) -> np.ndarray:
        """The image ``[..., N, 3]`` of positions ``[..., N, 3]`` (nm)."""
        image = positions @ self.rotation.T + self.translation
        out = np.empty_like(image)
        out[..., self.permutation, :] = image
        return out


def _box_rotations(box: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Signed permutation matrices that map the orthorhombic lattice of ``box`` onto itself."""
    rotations = []
    for axes in itertools.permutations(range(3)):
        if any(abs(box[a] - box[i]) > tolerance for i, a in enumerate(axes)):
            continue
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for i, (a, s) in enumerate(zip(axes, signs)):
                matrix[a, i] = s  # column i (axis i) goes to +-axis a
            rotations.append(matrix)
    return rotations


def _match(image: np.ndarray, reference: np.ndarray, kinds: np.ndarray, box: np.ndarray,
           tolerance: float) -> Optional[np.ndarray]:
    """``permutation`` with ``image[i] == reference[permutation[i]]`` (mod box, same kind), or None."""
    d = image[:, None, :] - reference[None, :, :]
    d -= np.round(d / box) * box
    distance = np.linalg.norm(d, axis=-1)
    distance[kinds[:, None] != kinds[None, :]] = np.inf
    permutation = distance.argmin(axis=1)
    if distance[np.arange(len(image)), permutation].max() > tolerance:
        return None
    if len(np.unique(permutation)) != len(permutation):
        return None
    return permutation


def find_symmetry_operations(
    positions: np.ndarray,
    box: Sequence[float],
    kinds: Sequence,
    tolerance: float = 1e-4,
    proper_only: bool = False,
) -> list[SymmetryOperation]:
    """All operations ``(R, t, permutation)`` that map ``positions`` onto itself in the periodic box.

    Args:
        positions: reference configuration ``[N, 3]`` nm (e.g. the ideal crystal).
        box: orthorhombic box edges ``[3]`` nm.
        kinds: ``[N]`` labels; only particles with equal labels may be exchanged.
        tolerance: largest distance (nm, minimum image) between an image and its site.
        proper_only: keep rotations only (det R = +1).

    Returns:
        The operations with ``R`` a signed permutation of the box axes that maps the lattice onto
        itself and ``t`` in the box (one representative per lattice translation class), identity
        first. They form a group (closed under composition, checked by the tests).

    Raises:
        ValueError: bad shapes or a non-positive box.
    """
    reference = np.asarray(positions, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    kinds = np.asarray(kinds)
    if reference.ndim != 2 or reference.shape[1] != 3 or len(reference) == 0:
        raise ValueError(f"positions must be [N, 3] with N >= 1, got {list(reference.shape)}")
    if box.shape != (3,) or not bool((box > 0).all()):
        raise ValueError(f"box must hold 3 positive edge lengths, got {box.tolist()}")
    if kinds.shape != (len(reference),):
        raise ValueError(f"kinds must have one label per particle ({len(reference)}), got shape {list(kinds.shape)}")
    labels, counts = np.unique(kinds, return_counts=True)
    anchor = int(np.flatnonzero(kinds == labels[counts.argmin()])[0])  # fewest candidate images
    candidates = np.flatnonzero(kinds == kinds[anchor])
    operations: list[SymmetryOperation] = []
    for rotation in _box_rotations(box, tolerance):
        if proper_only and np.linalg.det(rotation) < 0:
            continue
        rotated = reference @ rotation.T
        for target in candidates:
            translation = reference[target] - rotated[anchor]
            translation = translation - np.floor(translation / box) * box
            permutation = _match(rotated + translation, reference, kinds, box, tolerance)
            if permutation is not None:
                operations.append(SymmetryOperation(rotation, translation, permutation))
    operations.sort(key=lambda op: (not op.is_identity, not np.allclose(op.rotation, np.eye(3))))
    return operations


def particle_kinds(openmm_system) -> np.ndarray:
    """``[N]`` int labels: particles with equal mass and equal NonbondedForce / CustomNonbondedForce
    parameters share a label (rounded to 1e-10)."""
    import openmm
    from openmm import unit

    n = openmm_system.getNumParticles()
    keys: list[list] = [[round(openmm_system.getParticleMass(i).value_in_unit(unit.dalton), 10)] for i in range(n)]
    for force in openmm_system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            for i in range(n):
                q, sigma, epsilon = force.getParticleParameters(i)
                keys[i] += [round(q.value_in_unit(unit.elementary_charge), 10),
                            round(sigma.value_in_unit(unit.nanometer), 10),
                            round(epsilon.value_in_unit(unit.kilojoule_per_mole), 10)]
        elif isinstance(force, (openmm.CustomNonbondedForce, openmm.GBSAOBCForce)):
            for i in range(n):
                keys[i] += [round(float(v), 10) for v in force.getParticleParameters(i)]
    _, labels = np.unique(np.array([repr(k) for k in keys]), return_inverse=True)
    return labels.astype(np.int64)


def preserves_topology(openmm_system, permutation: np.ndarray) -> bool:
    """Whether relabelling particle ``i`` as ``permutation[i]`` maps the System's constraints,
    NonbondedForce exceptions and virtual sites onto themselves (with equal parameters)."""
    import openmm
    from openmm import unit

    perm = np.asarray(permutation)

    def pair(i, j):
        i, j = int(perm[i]), int(perm[j])
        return (min(i, j), max(i, j))

    constraints = {}
    for k in range(openmm_system.getNumConstraints()):
        i, j, length = openmm_system.getConstraintParameters(k)
        constraints[(min(i, j), max(i, j))] = round(length.value_in_unit(unit.nanometer), 10)
    if {pair(i, j): v for (i, j), v in constraints.items()} != constraints:
        return False
    for force in openmm_system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            exceptions = {}
            for k in range(force.getNumExceptions()):
                i, j, q, sigma, epsilon = force.getExceptionParameters(k)
                exceptions[(min(i, j), max(i, j))] = (round(q.value_in_unit(unit.elementary_charge**2), 10),
                                                      round(sigma.value_in_unit(unit.nanometer), 10),
                                                      round(epsilon.value_in_unit(unit.kilojoule_per_mole), 10))
            if {pair(i, j): v for (i, j), v in exceptions.items()} != exceptions:
                return False
    for i in range(openmm_system.getNumParticles()):
        if openmm_system.isVirtualSite(i) != openmm_system.isVirtualSite(int(perm[i])):
            return False
        if openmm_system.isVirtualSite(i):
            site, image = openmm_system.getVirtualSite(i), openmm_system.getVirtualSite(int(perm[i]))
            if _virtual_site_key(site, perm) != _virtual_site_key(image, np.arange(len(perm))):
                return False
    return True


def _virtual_site_key(site, relabel: np.ndarray) -> tuple:
    """A comparable description of an OpenMM virtual site with its parents relabelled: average
    sites as the set of (parent, weight) (their parents' order does not matter), others in order."""
    import openmm

    parents = [int(relabel[site.getParticle(k)]) for k in range(site.getNumParticles())]
    if isinstance(site, (openmm.TwoParticleAverageSite, openmm.ThreeParticleAverageSite)):
        weights = [round(site.getWeight(k), 10) for k in range(site.getNumParticles())]
        return ("average", tuple(sorted(zip(parents, weights))))
    if isinstance(site, openmm.OutOfPlaneSite):
        weights = (site.getWeight12(), site.getWeight13(), site.getWeightCross())
        return ("out_of_plane", tuple(parents), tuple(round(w, 10) for w in weights))
    return (type(site).__name__, tuple(parents))  # other kinds: same parents in the same order


def system_symmetry_operations(system, tolerance: float = 1e-4, proper_only: bool = False) -> list[SymmetryOperation]:
    """:func:`find_symmetry_operations` of a periodic `boltzgen.systems.MolecularSystem`'s reference
    positions, with :func:`particle_kinds` of its System, keeping those that
    :func:`preserves_topology`.

    Raises:
        ValueError: the System is not periodic or its box is not orthorhombic.
    """
    from boltzgen.rigid import _orthorhombic_box

    box = _orthorhombic_box(system.openmm_system)
    if box is None:
        raise ValueError(f"{system.name}: symmetry operations need a periodic System")
    operations = find_symmetry_operations(system.positions, box, particle_kinds(system.openmm_system),
                                          tolerance=tolerance, proper_only=proper_only)
    return [op for op in operations if preserves_topology(system.openmm_system, op.permutation)]


class SymmetryAugmentation:
    """Apply a uniformly random operation of ``operations`` to each configuration of a batch.

    ``augmentation(x [B, 3N], generator) -> [B, 3N]`` (nm, same dtype and device); the operation
    indices are drawn on the CPU from ``generator`` (reproducible). :meth:`apply` applies one
    given operation to a whole batch.
    """

    def __init__(self, operations: Sequence[SymmetryOperation]):
        operations = list(operations)
        if not operations:
            raise ValueError("SymmetryAugmentation needs at least one operation")
        n = len(operations[0].permutation)
        if any(len(op.permutation) != n for op in operations):
            raise ValueError("all operations must act on the same number of particles")
        self.operations = operations
        self.n_particles = n
        self.rotations = torch.as_tensor(np.stack([op.rotation for op in operations]), dtype=torch.float64)
        self.translations = torch.as_tensor(np.stack([op.translation for op in operations]), dtype=torch.float64)
        # x'[:, j] = image[:, source[j]]: the inverse permutation
        self.sources = torch.as_tensor(np.stack([np.argsort(op.permutation) for op in operations]), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.operations)

    def _transform(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 3 * self.n_particles:
            raise ValueError(f"expected configurations [batch, {3 * self.n_particles}], got {list(x.shape)}")
        batch = x.shape[0]
        rotation = self.rotations.to(x)[index]  # [B, 3, 3]
        translation = self.translations.to(x)[index]  # [B, 3]
        source = self.sources.to(x.device)[index]  # [B, N]
        image = torch.einsum("bij,bnj->bni", rotation, x.reshape(batch, self.n_particles, 3))
        image = image + translation.unsqueeze(1)
        return torch.gather(image, 1, source.unsqueeze(-1).expand(-1, -1, 3)).reshape(batch, -1)

    def apply(self, x: torch.Tensor, operation: int) -> torch.Tensor:
        """Operation number ``operation`` applied to every configuration of ``x [B, 3N]``."""
        if not 0 <= operation < len(self):
            raise IndexError(f"operation {operation} out of range for {len(self)} operations")
        return self._transform(x, torch.full((x.shape[0],), int(operation), dtype=torch.long, device=x.device))

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        index = torch.randint(0, len(self), (x.shape[0],), generator=generator).to(x.device)
        return self._transform(x, index)


__all__ = [
    "SymmetryAugmentation",
    "SymmetryOperation",
    "find_symmetry_operations",
    "particle_kinds",
    "preserves_topology",
    "system_symmetry_operations",
]
