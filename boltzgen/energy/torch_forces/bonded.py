"""Bonded OpenMM forces as batched torch: harmonic bonds and angles, periodic and Ryckaert-Bellemans torsions.

Conventions checked against OpenMM's reference platform (``ReferenceHarmonicBondIxn``,
``ReferenceAngleBondIxn``, ``ReferenceProperDihedralBond``, ``ReferenceRbDihedralBond``):

- ``HarmonicBondForce``: ``E = k/2 (r - r0)^2``.
- ``HarmonicAngleForce``: ``E = k/2 (theta - theta0)^2``; OpenMM takes ``acos`` of the clamped
  cosine, we take ``atan2(|u x v|, u . v)`` as `boltzgen.geometry.bond_angle` does: the same
  angle, more accurate near 0 and pi.
- ``PeriodicTorsionForce``: ``E = k (1 + cos(n phi - phi0))``. OpenMM's dihedral is the angle
  between ``(A-B) x (C-B)`` and ``(C-B) x (C-D)``, with the sign of ``(A-B) . ((C-B) x (C-D))``.
  Those cross products are the IUPAC normals ``b1 x b2`` and ``b2 x b3`` (``b1 = B-A`` ...) each
  times -1, and the sign test is IUPAC's ``b1 . (b2 x b3)``: OpenMM's angle *is* the IUPAC angle
  of `boltzgen.geometry.dihedral_angle` (mdtraj's), no sign flip needed. (At phi = +-pi the two
  may pick different signs, where ``cos(n phi - phi0)`` is the same.)
- ``RBTorsionForce``: ``E = sum_i C_i cos(psi)^i``, ``psi = phi - pi`` (polymer convention), so
  ``cos(psi) = -cos(phi)``.
- With ``usesPeriodicBoundaryConditions()`` every bond vector (``B-A``, ``C-B``, ``D-C``) is
  replaced by its minimum image separately, as OpenMM does.

Layout, for speed on CPU and GPU alike: positions are turned "batch-last" once per term,
``[B, N, 3] -> [3, N, B]`` (`layout.batch_last`), so that gathering atoms is a copy of contiguous rows
(``index_select`` on dim 1, whose backward is a row-wise ``index_add``), and vectors are handled
as three contiguous ``[K, B]`` components (``unbind``: no per-component ``select`` whose backward
would zero-fill the whole tensor each time). Cross and dot products are written out per
component (no ``linalg.cross``). The geometry is the same as
`boltzgen.geometry` (``atan2`` forms; the tests compare against it), in that layout.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import ForceTerm, as_float_buffer, as_index_buffer
from boltzgen.energy.torch_forces.layout import batch_last, gather_atoms, minimum_image_components

__all__ = ["HarmonicBondTerm", "HarmonicAngleTerm", "PeriodicTorsionTerm", "RBTorsionTerm"]


def _require_box(box: torch.Tensor | None, name: str) -> torch.Tensor:
    if box is None:
        raise ValueError(f"{name} uses periodic boundary conditions but no periodic box was given")
    return box


def _bond_vectors(positions: torch.Tensor, atoms: torch.Tensor, box: torch.Tensor | None):
    """Components of ``p[k+1] - p[k]`` along each row of ``atoms`` ``[K, m]``: ``m - 1`` triples of ``[K, B]``."""
    points = batch_last(positions)
    columns = [gather_atoms(points, atoms[:, k]) for k in range(atoms.shape[1])]
    vectors = []
    for k in range(len(columns) - 1):
        dx, dy, dz = (columns[k + 1] - columns[k]).unbind(0)
        if box is not None:
            dx, dy, dz = minimum_image_components(dx, dy, dz, box)
        vectors.append((dx, dy, dz))
    return vectors


def _cross(a, b):
    """``a x b`` for vectors given as component triples."""
    ax, ay, az = a
    bx, by, bz = b
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _dihedral_xy(b1, b2, b3):
    """``(x, y)`` with ``phi = atan2(y, x)`` the IUPAC dihedral, from bond vectors (component triples).

    ``x = (b1 x b2) . (b2 x b3)``, ``y = |b2| b1 . (b2 x b3)`` (as `boltzgen.geometry.dihedral_angle`).
    """
    n2 = _cross(b2, b3)
    x = _dot(_cross(b1, b2), n2)
    y = _dot(b2, b2).sqrt() * _dot(b1, n2)
    return x, y


class _TorsionGeometry(torch.nn.Module):
    """Dihedral geometry of the distinct atom quadruples of a torsion force, shared by its terms.

    Force fields list several periodicities for the same four atoms; the dihedral is computed once
    per distinct quadruple and gathered for each term (only when that saves work).
    """

    def __init__(self, atoms):
        super().__init__()
        atoms = as_index_buffer(atoms, 4)
        unique, inverse = (torch.unique(atoms, dim=0, return_inverse=True) if len(atoms) else (atoms, None))
        if inverse is not None and len(unique) < len(atoms):
            self.register_buffer("atoms", unique)
            self.register_buffer("term_to_quadruple", inverse.reshape(-1))
        else:
            self.register_buffer("atoms", atoms)
            self.term_to_quadruple = None

    def xy(self, positions: torch.Tensor, box: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b1, b2, b3 = _bond_vectors(positions, self.atoms, box)
        return _dihedral_xy(b1, b2, b3)

    def per_term(self, values: torch.Tensor) -> torch.Tensor:
        """``[U, B]`` values per distinct quadruple -> ``[K, B]`` per term."""
        return values if self.term_to_quadruple is None else values.index_select(0, self.term_to_quadruple)


# ----------------------------------------------------------------------------- terms


class HarmonicBondTerm(ForceTerm):
    """``HarmonicBondForce``: ``E = sum k/2 (|r_j - r_i| - r0)^2``."""

    openmm_name = "HarmonicBondForce"

    def __init__(self, atoms, length, k, periodic: bool = False):
        super().__init__()
        self.register_buffer("atoms", as_index_buffer(atoms, 2))
        self.register_buffer("length", as_float_buffer(length))
        self.register_buffer("half_k", as_float_buffer(k) * 0.5)
        self.periodic = bool(periodic)

    @classmethod
    def from_openmm(cls, force: openmm.HarmonicBondForce, system: openmm.System | None = None) -> "HarmonicBondTerm":
        atoms, length, k = [], [], []
        for index in range(force.getNumBonds()):
            i, j, r0, kb = force.getBondParameters(index)
            atoms.append((i, j))
            length.append(_plain(r0))
            k.append(_plain(kb))
        return cls(atoms, length, k, periodic=force.usesPeriodicBoundaryConditions())

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        box = _require_box(box, self.openmm_name) if self.periodic else None
        (delta,) = _bond_vectors(positions, self.atoms, box)
        stretch = _dot(delta, delta).sqrt() - self.length.unsqueeze(1)
        return (self.half_k.unsqueeze(1) * stretch * stretch).sum(0)


class HarmonicAngleTerm(ForceTerm):
    """``HarmonicAngleForce``: ``E = sum k/2 (theta_ijk - theta0)^2`` (angle at the middle atom j)."""

    openmm_name = "HarmonicAngleForce"

    def __init__(self, atoms, angle, k, periodic: bool = False):
        super().__init__()
        self.register_buffer("atoms", as_index_buffer(atoms, 3))
        self.register_buffer("angle", as_float_buffer(angle))
        self.register_buffer("half_k", as_float_buffer(k) * 0.5)
        self.periodic = bool(periodic)

    @classmethod
    def from_openmm(cls, force: openmm.HarmonicAngleForce, system: openmm.System | None = None) -> "HarmonicAngleTerm":
        atoms, angle, k = [], [], []
        for index in range(force.getNumAngles()):
            i, j, l, theta0, ka = force.getAngleParameters(index)
            atoms.append((i, j, l))
            angle.append(_plain(theta0))
            k.append(_plain(ka))
        return cls(atoms, angle, k, periodic=force.usesPeriodicBoundaryConditions())

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        box = _require_box(box, self.openmm_name) if self.periodic else None
        to_first, to_last = _bond_vectors(positions, self.atoms, box)  # j - i and l - j
        # The angle between u = i - j = -to_first and v = l - j = to_last: u x v = to_last x to_first.
        normal = _cross(to_last, to_first)
        sine_part = _dot(normal, normal).sqrt()
        cosine_part = -_dot(to_first, to_last)
        bend = torch.atan2(sine_part, cosine_part) - self.angle.unsqueeze(1)
        return (self.half_k.unsqueeze(1) * bend * bend).sum(0)


class PeriodicTorsionTerm(ForceTerm):
    """``PeriodicTorsionForce``: ``E = sum k (1 + cos(n phi - phi0))``."""

    openmm_name = "PeriodicTorsionForce"

    def __init__(self, atoms, periodicity, phase, k, periodic: bool = False):
        super().__init__()
        self.geometry = _TorsionGeometry(atoms)
        self.register_buffer("periodicity", as_float_buffer(periodicity))
        self.register_buffer("phase", as_float_buffer(phase))
        self.register_buffer("k", as_float_buffer(k))
        self.constant = float(np.sum(np.asarray(k, dtype=np.float64)))  # sum of k: the "1 +" part
        self.periodic = bool(periodic)

    @classmethod
    def from_openmm(cls, force: openmm.PeriodicTorsionForce, system: openmm.System | None = None) -> "PeriodicTorsionTerm":
        atoms, periodicity, phase, k = [], [], [], []
        for index in range(force.getNumTorsions()):
            i, j, l, m, n, phi0, kt = force.getTorsionParameters(index)
            atoms.append((i, j, l, m))
            periodicity.append(float(n))
            phase.append(_plain(phi0))
            k.append(_plain(kt))
        return cls(atoms, periodicity, phase, k, periodic=force.usesPeriodicBoundaryConditions())

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        box = _require_box(box, self.openmm_name) if self.periodic else None
        x, y = self.geometry.xy(positions, box)
        phi = self.geometry.per_term(torch.atan2(y, x))
        cosine = torch.cos(self.periodicity.unsqueeze(1) * phi - self.phase.unsqueeze(1))
        return (self.k.unsqueeze(1) * cosine).sum(0) + self.constant


class RBTorsionTerm(ForceTerm):
    """``RBTorsionForce``: ``E = sum_i C_i cos(psi)^i``, ``psi = phi - pi`` (i = 0..5)."""

    openmm_name = "RBTorsionForce"

    def __init__(self, atoms, coefficients, periodic: bool = False):
        super().__init__()
        self.geometry = _TorsionGeometry(atoms)
        # [6, K], highest power first, as Horner's rule consumes them.
        self.register_buffer("coefficients", as_float_buffer(coefficients, 6).T.flip(0).contiguous())
        self.periodic = bool(periodic)

    @classmethod
    def from_openmm(cls, force: openmm.RBTorsionForce, system: openmm.System | None = None) -> "RBTorsionTerm":
        atoms, coefficients = [], []
        for index in range(force.getNumTorsions()):
            i, j, l, m, *c = force.getTorsionParameters(index)
            atoms.append((i, j, l, m))
            coefficients.append([_plain(value) for value in c])
        return cls(atoms, coefficients, periodic=force.usesPeriodicBoundaryConditions())

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        box = _require_box(box, self.openmm_name) if self.periodic else None
        x, y = self.geometry.xy(positions, box)
        # cos(psi) = -cos(phi) = -x / sqrt(x^2 + y^2), as OpenMM's normed dot product of the normals.
        cos_psi = self.geometry.per_term(-x * torch.rsqrt(x * x + y * y))
        c = self.coefficients.unsqueeze(2)
        energy = c[0] * cos_psi + c[1]
        for power in range(2, 6):
            energy = energy * cos_psi + c[power]
        return energy.sum(0)


def _plain(value) -> float:
    """A float from an OpenMM getter result that may be a Quantity (OpenMM's default units)."""
    if openmm.unit.is_quantity(value):
        return float(value.value_in_unit_system(openmm.unit.md_unit_system))
    return float(value)
