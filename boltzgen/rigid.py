"""Rigid molecules: Cartesian coordinates <-> (reference-point position, orientation quaternion).

A rigid molecule is a frozen body-frame geometry (`RigidMoleculeTemplate`) placed by a position
``p`` (its reference atom, e.g. water's O or methane's C) and a rotation ``R``: real atom ``i`` sits
at ``x_i = p + R b_i``; virtual sites (the M site of TIP4P/Ew) are then placed from their parent
atoms exactly as OpenMM places them (same formula, weights read from the ``openmm.System``).
`RigidBodySystem` converts batches of whole configurations ``[B, 3N]`` (nm, every particle in the
System's order, virtual sites included) to positions ``[B, K, 3]`` and unit quaternions
``[B, K, 4]`` (``(w, x, y, z)``, :mod:`boltzgen.flows.quaternions`) of the K molecules, and back.

**Body frame.** Three atoms of the molecule, ``frame_atoms = (o, a, b)`` (default the first three:
O, H1, H2 for water; C, H1, H2 for the tetrahedron), define it: origin at ``o`` (the reference
point), ``e1`` along the bisector of ``o->a`` and ``o->b``, ``e3`` along ``(a - o) x (b - o)``
(normal to their plane), ``e2 = e3 x e1`` (towards ``b``). The template's body coordinates are
the reference structure expressed in that frame, so a configuration's rotation is just its frame
``R = [e1 e2 e3]`` (exact for exactly rigid molecules; :meth:`RigidBodySystem.rigidity_rmsd`
reports how far a configuration is from rigid).

**Double cover.** ``q`` and ``-q`` give the same ``R`` (hence the same Cartesian configuration).
:meth:`RigidBodySystem.from_cartesian` returns a random sign per quaternion by default (training
data: both representatives equally likely); ``random_sign=False`` gives the hemisphere ``w >= 0``.

**Translation.** With ``remove_translation=True`` (default) molecule 0's reference point is the
origin: ``positions[:, 0] == 0`` and ``positions[:, k] = p_k - p_0`` (wrapped into the periodic
box ``[0, L)^3``, a torus, when the System is periodic). The removed ``p_0`` is returned as
``origin`` so that :meth:`~RigidBodySystem.to_cartesian` can restore the absolute configuration.
A flow models the density of ``(positions[:, 1:], quaternions)``: ``3(K - 1) + 4K`` numbers, of
``3(K - 1) + 3K`` degrees of freedom.

**Volume constants** (:func:`log_volume_constant`). The configurational partition function of K
rigid molecules is ``Z = int prod_k d^3p_k dOmega_k exp(-u)``, with ``dOmega`` the Haar measure
of SO(3) normalised to ``8 pi^2`` (Euler angles ``sin(beta) dalpha dbeta dgamma``, the volume
form of the metric where a rotation by angle ``t`` has length ``t``). Flows on S^3 give densities
with respect to the surface measure ``sigma`` of S^3 (area ``2 pi^2``). ``q -> R(q)`` doubles
angles, so it scales volumes by ``2^3 = 8``, and covers SO(3) twice:
``int_{S^3} f(R(q)) dsigma(q) = (2/8) int_{SO(3)} f dOmega``, i.e. ``Z_Omega = 4 Z_sigma`` per
molecule (check: ``8 pi^2 = 4 * 2 pi^2``). Removing the translation of a periodic system
integrates ``p_0`` over the box: a factor ``V``. Hence

    log Z = log Z_flow + K log 4 (+ log V, periodic with the translation removed),

where ``Z_flow`` normalises ``exp(-u)`` with respect to Lebesgue measure on the free positions
and ``sigma`` on the quaternions (what importance weights of a flow on that space estimate), and
the free energy is ``F = -log Z_flow - log_volume_constant(K, V)``. Differences between states
with the same K and box (e.g. dF between temperatures) do not depend on the constant. A further
constant relates ``d^3p dOmega`` to the volume of the rigid-configuration manifold inside the
Cartesian space R^{3n} of one molecule's n real atoms:
``dVol = n^{3/2} sqrt(det I_c) d^3p dOmega`` (``I_c``: unit-mass inertia tensor about the
centroid; :meth:`RigidMoleculeTemplate.log_cartesian_volume_factor`, with masses
``M^{3/2} sqrt(det I_com)``); it matters only when comparing with Cartesian densities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from boltzgen.flows.quaternions import (
    quaternion_to_rotation_matrix,
    random_quaternion_sign,
    rotation_matrix_to_quaternion,
)

#: ``log 4``: per molecule, ``log`` of (Haar volume of SO(3), ``8 pi^2``) / (area of S^3, ``2 pi^2``).
LOG_HAAR_PER_S3 = math.log(4.0)


def log_volume_constant(n_molecules: int, box_volume: Optional[float] = None) -> float:
    """``c`` with ``log Z = log Z_flow + c`` (see the module docstring): ``K log 4 [+ log V]``.

    Args:
        n_molecules: K, the number of rigid molecules (quaternions).
        box_volume: the periodic box volume V (nm^3) when the global translation was removed from
            a periodic system (molecule 0 fixed); None otherwise (no translation term).

    ``Z`` integrates ``exp(-u)`` over positions (nm^3 each) and orientations with the Haar
    measure of volume ``8 pi^2``; ``Z_flow`` over the free positions and unit quaternions with
    the S^3 surface measure. For Haar normalised to 1 subtract ``K log(8 pi^2)``.
    """
    if isinstance(n_molecules, bool) or int(n_molecules) != n_molecules or n_molecules < 1:
        raise ValueError(f"n_molecules must be a positive integer, got {n_molecules!r}")
    constant = int(n_molecules) * LOG_HAAR_PER_S3
    if box_volume is not None:
        if not box_volume > 0:
            raise ValueError(f"box_volume must be positive, got {box_volume!r}")
        constant += math.log(box_volume)
    return constant


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def frame_rotation(origin: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` whose columns are the body axes ``e1, e2, e3``.

    ``origin``, ``a``, ``b``: ``[..., 3]`` nm (not collinear). ``e1`` bisects ``a - origin`` and
    ``b - origin``, ``e3`` is normal to their plane, ``e2 = e3 x e1``. Body coordinates of a point
    ``x`` are ``R^T (x - origin)``.
    """
    u, v = _unit(a - origin), _unit(b - origin)
    e1 = _unit(u + v)
    e3 = _unit(torch.linalg.cross(u, v, dim=-1))
    e2 = torch.linalg.cross(e3, e1, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


@dataclass(frozen=True)
class VirtualSiteRule:
    """A virtual site of a molecule in molecule-local particle indices, as OpenMM defines it.

    ``kind``: ``"average"`` (Two/ThreeParticleAverageSite: ``r = sum_k w_k r_k``) or
    ``"out_of_plane"`` (OutOfPlaneSite: ``r = r1 + w12 r12 + w13 r13 + wcross r12 x r13``,
    ``weights = (w12, w13, wcross)``, ``r1k = r_k - r_1``).
    """

    site: int
    kind: str
    parents: tuple[int, ...]
    weights: tuple[float, ...]


def virtual_site_rule(openmm_system, particle: int, local_index: dict[int, int]) -> VirtualSiteRule:
    """The `VirtualSiteRule` of System particle ``particle``; ``local_index`` maps System -> local indices."""
    import openmm

    site = openmm_system.getVirtualSite(particle)
    parents = tuple(local_index[site.getParticle(k)] for k in range(site.getNumParticles()))
    if isinstance(site, openmm.OutOfPlaneSite):
        weights = (site.getWeight12(), site.getWeight13(), site.getWeightCross())
        return VirtualSiteRule(local_index[particle], "out_of_plane", parents, tuple(map(float, weights)))
    if isinstance(site, (openmm.TwoParticleAverageSite, openmm.ThreeParticleAverageSite)):
        weights = tuple(float(site.getWeight(k)) for k in range(site.getNumParticles()))
        return VirtualSiteRule(local_index[particle], "average", parents, weights)
    raise ValueError(f"particle {particle}: {type(site).__name__} virtual sites are not supported")


def place_virtual_sites(positions: torch.Tensor, rules: Sequence[VirtualSiteRule]) -> torch.Tensor:
    """``positions`` ``[..., P, 3]`` of one molecule type with each rule's site recomputed (OpenMM's formulas)."""
    positions = positions.clone()
    for rule in rules:
        parents = [positions[..., k, :] for k in rule.parents]
        if rule.kind == "average":
            site = sum(w * r for w, r in zip(rule.weights, parents))
        else:
            r12, r13 = parents[1] - parents[0], parents[2] - parents[0]
            w12, w13, wcross = rule.weights
            site = parents[0] + w12 * r12 + w13 * r13 + wcross * torch.linalg.cross(r12, r13, dim=-1)
        positions[..., rule.site, :] = site
    return positions


@dataclass(frozen=True)
class RigidMoleculeTemplate:
    """Frozen body-frame geometry of one rigid molecule type.

    Attributes:
        body_positions: ``[P, 3]`` float64 nm, every particle of the molecule (virtual sites
            included) in the body frame (reference atom at the origin, axes of `frame_rotation`).
        is_virtual: ``[P]`` bool, which particles are virtual sites.
        virtual_sites: rules placing the virtual sites from real atoms (local indices).
        frame_atoms: local indices ``(o, a, b)`` of the atoms defining the frame (real atoms).
        names: optional particle names.
    """

    body_positions: np.ndarray
    is_virtual: np.ndarray
    virtual_sites: tuple[VirtualSiteRule, ...] = ()
    frame_atoms: tuple[int, int, int] = (0, 1, 2)
    names: tuple[str, ...] = ()

    @classmethod
    def from_positions(
        cls,
        positions: np.ndarray,
        frame_atoms: tuple[int, int, int] = (0, 1, 2),
        virtual_sites: Sequence[VirtualSiteRule] = (),
        names: Sequence[str] = (),
    ) -> "RigidMoleculeTemplate":
        """Template from one molecule's reference positions ``[P, 3]`` nm (any placement).

        The virtual sites' body positions are recomputed from ``virtual_sites`` (so they are
        exactly where OpenMM would put them), not read from ``positions``.
        """
        x = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"positions must have shape [P, 3], got {tuple(x.shape)}")
        is_virtual = np.zeros(len(x), dtype=bool)
        for rule in virtual_sites:
            is_virtual[rule.site] = True
        for rule in virtual_sites:
            if is_virtual[list(rule.parents)].any():
                raise ValueError(f"virtual site {rule.site} has a virtual parent; not supported")
        o, a, b = frame_atoms
        if is_virtual[[o, a, b]].any():
            raise ValueError(f"frame_atoms {frame_atoms} must be real atoms")
        rotation = frame_rotation(x[o], x[a], x[b])
        body = (x - x[o]) @ rotation
        body = place_virtual_sites(body, virtual_sites)
        return cls(body.numpy(), is_virtual, tuple(virtual_sites), tuple(frame_atoms), tuple(names))

    @property
    def n_particles(self) -> int:
        return int(len(self.body_positions))

    @property
    def atom_indices(self) -> np.ndarray:
        """Local indices of the real atoms, ``[n]``."""
        return np.flatnonzero(~self.is_virtual)

    def log_cartesian_volume_factor(self, masses: Optional[Sequence[float]] = None) -> float:
        """``log sqrt(det G)``: volume of the rigid manifold in R^{3n} per unit ``d^3p dOmega``.

        ``G`` is the metric that ``x_i = p + R b_i`` (real atoms) induces on (translation,
        rotation angle) from the Euclidean metric of R^{3n} (weighted by ``masses``, one per
        particle, virtual sites ignored; unit masses by default): ``sqrt(det G) = M^{3/2}
        sqrt(det I)``, ``I`` the inertia tensor about the centre of mass. Constant (rigid body).
        """
        atoms = self.atom_indices
        m = np.ones(len(atoms)) if masses is None else np.asarray(masses, dtype=np.float64)[atoms]
        r = self.body_positions[atoms]
        centred = r - (m[:, None] * r).sum(0) / m.sum()
        second_moment = np.einsum("i,ij,ik->jk", m, centred, centred)
        inertia = np.eye(3) * np.trace(second_moment) - second_moment
        return 1.5 * math.log(m.sum()) + 0.5 * math.log(np.linalg.det(inertia))


class RigidCoordinates(NamedTuple):
    """Rigid-body coordinates of a batch (see `RigidBodySystem`).

    positions: ``[B, K, 3]`` nm, reference points (relative to molecule 0 and wrapped into the
        box when the translation is removed; row 0 is then 0).
    quaternions: ``[B, K, 4]`` unit quaternions ``(w, x, y, z)``, rotation body -> lab.
    origin: ``[B, 3]`` nm, molecule 0's reference point (the removed translation; zeros when the
        translation is kept).
    """

    positions: torch.Tensor
    quaternions: torch.Tensor
    origin: torch.Tensor


class RigidBodySystem(torch.nn.Module):
    """Convert a System of K identical rigid molecules between Cartesian and rigid coordinates.

    Args:
        template: the molecule's `RigidMoleculeTemplate`.
        molecule_particles: ``[K, P]`` System particle indices of each molecule, in the
            template's local order; together they must cover every particle exactly once.
        box: orthorhombic box edge lengths ``[3]`` nm for a periodic System, else None.
        remove_translation: fix molecule 0's reference point at the origin (module docstring).

    Conventions and units are those of the module docstring; every method works in the dtype and
    device of its input (buffers are float64 and cast on use) and is differentiable.
    """

    def __init__(
        self,
        template: RigidMoleculeTemplate,
        molecule_particles: np.ndarray,
        box: Optional[Sequence[float]] = None,
        remove_translation: bool = True,
    ):
        super().__init__()
        particles = np.asarray(molecule_particles, dtype=np.int64)
        if particles.ndim != 2 or particles.shape[1] != template.n_particles:
            raise ValueError(
                f"molecule_particles must have shape [K, {template.n_particles}], got {particles.shape}"
            )
        if sorted(particles.ravel().tolist()) != list(range(particles.size)):
            raise ValueError("molecule_particles must hold every particle index 0..N-1 exactly once")
        self.template = template
        self.n_molecules = int(particles.shape[0])
        self.n_particles = int(particles.size)
        self.remove_translation = bool(remove_translation)
        self.register_buffer("molecule_particles", torch.as_tensor(particles))
        self.register_buffer("body_positions", torch.as_tensor(template.body_positions, dtype=torch.float64))
        self.register_buffer("atom_indices", torch.as_tensor(template.atom_indices))
        if box is not None:
            box = torch.as_tensor(np.asarray(box, dtype=np.float64))
            if box.shape != (3,) or not bool((box > 0).all()):
                raise ValueError(f"box must hold 3 positive edge lengths (orthorhombic), got {box}")
        self.register_buffer("box", box)

    @classmethod
    def from_openmm(
        cls,
        openmm_system,
        topology,
        positions: np.ndarray,
        frame_atoms: tuple[int, int, int] = (0, 1, 2),
        remove_translation: bool = True,
        tolerance: float = 1e-4,
    ) -> "RigidBodySystem":
        """One rigid molecule per topology residue; template from the first residue's ``positions``.

        ``positions``: ``[N, 3]`` nm reference configuration. Virtual sites come from
        ``openmm_system``; the box from its default box vectors if it is periodic (orthorhombic
        only). Raises ValueError when residues differ in size or virtual sites, or when the
        reference configuration deviates from the template by more than ``tolerance`` nm (rms).
        """
        residues = [[atom.index for atom in residue.atoms()] for residue in topology.residues()]
        if len({len(r) for r in residues}) != 1:
            raise ValueError("all residues (molecules) must have the same number of particles")
        particles = np.array(residues, dtype=np.int64)
        rules = [_molecule_virtual_sites(openmm_system, row) for row in particles]
        if any(r != rules[0] for r in rules):
            raise ValueError("all molecules must have the same virtual sites")
        names = tuple(atom.name for atom in list(topology.residues())[0].atoms())
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        template = RigidMoleculeTemplate.from_positions(positions[particles[0]], frame_atoms, rules[0], names)
        rigid = cls(template, particles, _orthorhombic_box(openmm_system), remove_translation)
        deviation = float(rigid.rigidity_rmsd(torch.as_tensor(positions.reshape(1, -1)))[0])
        if deviation > tolerance:
            raise ValueError(f"reference molecules deviate from the template by {deviation:.2e} nm rms")
        return rigid

    @classmethod
    def from_molecular_system(cls, system, **options) -> "RigidBodySystem":
        """`from_openmm` on a `boltzgen.systems.MolecularSystem` (its topology and positions)."""
        return cls.from_openmm(system.openmm_system, system.topology, system.positions, **options)

    # ---------------------------------------------------------------- geometry helpers

    @property
    def periodic(self) -> bool:
        return self.box is not None

    @property
    def box_volume(self) -> Optional[float]:
        return None if self.box is None else float(torch.prod(self.box))

    def log_volume_constant(self) -> float:
        """:func:`log_volume_constant` for this system (box volume iff periodic with translation removed)."""
        volume = self.box_volume if self.remove_translation else None
        return log_volume_constant(self.n_molecules, volume)

    def wrap(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions ``[..., 3]`` wrapped into ``[0, L)^3`` (unchanged when not periodic)."""
        if self.box is None:
            return positions
        box = self.box.to(positions)
        wrapped = positions - torch.floor(positions / box) * box
        return torch.where(wrapped >= box, wrapped - box, wrapped)  # rounding at the upper edge

    def minimum_image(self, d: torch.Tensor) -> torch.Tensor:
        """Difference vectors ``[..., 3]`` in the minimum image (unchanged when not periodic)."""
        if self.box is None:
            return d
        box = self.box.to(d)
        return d - torch.round(d / box) * box

    def _frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reference points ``[B, K, 3]``, rotations ``[B, K, 3, 3]``, lab offsets ``[B, K, P, 3]``."""
        if x.ndim != 2 or x.shape[1] != 3 * self.n_particles:
            raise ValueError(
                f"expected Cartesian coordinates [batch, {3 * self.n_particles}], got {list(x.shape)}"
            )
        molecules = x.reshape(x.shape[0], self.n_particles, 3)[:, self.molecule_particles]  # [B, K, P, 3]
        o, a, b = self.template.frame_atoms
        reference = molecules[:, :, o]
        offsets = self.minimum_image(molecules - reference.unsqueeze(2))
        rotation = frame_rotation(torch.zeros_like(reference), offsets[:, :, a], offsets[:, :, b])
        return reference, rotation, offsets

    # ---------------------------------------------------------------- conversions

    def from_cartesian(
        self, x: torch.Tensor, random_sign: bool = True, generator: Optional[torch.Generator] = None
    ) -> RigidCoordinates:
        """Cartesian ``x`` ``[B, 3N]`` nm -> `RigidCoordinates`.

        Shapes: positions ``[B, K, 3]`` nm, quaternions ``[B, K, 4]``, origin ``[B, 3]`` nm.
        Molecules may be broken across the periodic boundary (offsets use the minimum image).
        Virtual-site coordinates in ``x`` are ignored. ``random_sign``: an independent random
        sign per quaternion (``generator`` for reproducibility); else ``w >= 0``.
        """
        reference, rotation, _ = self._frames(x)
        quaternions = rotation_matrix_to_quaternion(rotation)
        if random_sign:
            quaternions = random_quaternion_sign(quaternions, generator=generator)
        if self.remove_translation:
            origin = self.wrap(reference[:, 0])
            positions = self.wrap(reference - reference[:, :1])
            positions = torch.cat([torch.zeros_like(positions[:, :1]), positions[:, 1:]], dim=1)
        else:
            origin = torch.zeros_like(reference[:, 0])
            positions = self.wrap(reference)
        return RigidCoordinates(positions, quaternions, origin)

    def to_cartesian(
        self, positions: torch.Tensor, quaternions: torch.Tensor, origin: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Rigid coordinates -> Cartesian ``x`` ``[B, 3N]`` nm (every particle, System order).

        Shapes: positions ``[B, K, 3]`` nm (or ``[B, K-1, 3]``: molecule 0 at 0), quaternions
        ``[B, K, 4]``.
        Real atom ``i`` of molecule ``k``: ``origin + positions[k] + R(q_k) b_i``; virtual sites
        from their parents by OpenMM's formulas. Quaternions need not be normalised (``R(q)`` is
        scale- and sign-invariant). ``origin`` ``[B, 3]`` defaults to 0; when given, the reference
        points ``origin + positions`` are wrapped into the box (periodic Systems), so Cartesian
        inputs whose reference atoms lie in ``[0, L)^3`` come back exactly. Molecules stay whole.
        """
        batch, k = quaternions.shape[0], self.n_molecules
        if quaternions.shape != (batch, k, 4):
            raise ValueError(f"quaternions must have shape [batch, {k}, 4], got {list(quaternions.shape)}")
        if positions.shape == (batch, k - 1, 3):
            positions = torch.cat([positions.new_zeros(batch, 1, 3), positions], dim=1)
        if positions.shape != (batch, k, 3):
            raise ValueError(f"positions must have shape [batch, {k}(-1), 3], got {list(positions.shape)}")
        if origin is not None:
            positions = self.wrap(positions + origin.unsqueeze(1))
        rotation = quaternion_to_rotation_matrix(quaternions)  # [B, K, 3, 3]
        body = self.body_positions.to(positions)
        molecules = positions.unsqueeze(2) + torch.einsum("bkij,pj->bkpi", rotation, body)
        molecules = place_virtual_sites(molecules, self.template.virtual_sites)
        x = positions.new_zeros(batch, self.n_particles, 3)
        x = x.index_copy(1, self.molecule_particles.reshape(-1), molecules.reshape(batch, -1, 3))
        return x.reshape(batch, -1)

    def rigidity_rmsd(self, x: torch.Tensor) -> torch.Tensor:
        """Rms deviation ``[B]`` (nm) of the real atoms of ``x`` ``[B, 3N]`` from the rigid placement of its frames."""
        _, rotation, offsets = self._frames(x)
        atoms = self.atom_indices
        rigid = torch.einsum("bkij,pj->bkpi", rotation, self.body_positions.to(x)[atoms])
        return (offsets[:, :, atoms] - rigid).square().sum(-1).mean(dim=(1, 2)).sqrt()


def _molecule_virtual_sites(openmm_system, particles: np.ndarray) -> tuple[VirtualSiteRule, ...]:
    local = {int(p): i for i, p in enumerate(particles)}
    return tuple(
        virtual_site_rule(openmm_system, int(p), local) for p in particles if openmm_system.isVirtualSite(int(p))
    )


def _orthorhombic_box(openmm_system) -> Optional[np.ndarray]:
    """Edge lengths ``[3]`` nm of the System's default box if it is periodic, else None."""
    if not openmm_system.usesPeriodicBoundaryConditions():
        return None
    from openmm import unit

    vectors = np.array(
        [[float(c) for c in v.value_in_unit(unit.nanometer)] for v in openmm_system.getDefaultPeriodicBoxVectors()]
    )
    if np.count_nonzero(vectors - np.diag(np.diag(vectors))):
        raise ValueError("only orthorhombic boxes are supported")
    return np.diag(vectors).copy()


__all__ = [
    "LOG_HAAR_PER_S3",
    "RigidBodySystem",
    "RigidCoordinates",
    "RigidMoleculeTemplate",
    "VirtualSiteRule",
    "frame_rotation",
    "log_volume_constant",
    "place_virtual_sites",
    "virtual_site_rule",
]
