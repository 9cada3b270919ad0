"""Batched molecular geometry in torch: bond lengths, bond angles, dihedrals and NeRF placement.

Every function is pure, differentiable (to any order) and works on positions of shape
``[..., 3]`` in nm with any leading batch shape; results carry the leading shape. Angles are in
radians: bond angles in ``[0, pi]``, dihedrals in ``[-pi, pi]`` with the IUPAC sign convention
used by mdtraj (``mdtraj.compute_dihedrals``).

Two layers:
- point functions (``bond_length``, ``bond_angle``, ``dihedral_angle``, ``place_atom``) take the
  positions of the atoms involved as separate tensors;
- index functions (``distances``, ``angles``, ``dihedrals``) take a batch of frames
  ``[B, N, 3]`` and an integer array of atom tuples, like their mdtraj namesakes.

Numerics: angles come from ``atan2(|u x v|, u . v)``, which is accurate near 0 and pi where
``acos`` loses precision and has an infinite derivative; no cosine clamping is needed. The norm
used there has a zero (not NaN) gradient at exactly collinear atoms. Dihedrals are undefined when
three consecutive atoms are collinear; the value there is whatever ``atan2(0, 0) = 0`` gives.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

IndexArray = Union[torch.Tensor, np.ndarray, Sequence[Sequence[int]]]


def bond_length(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """Distance |p1 - p0| in nm: positions ``[..., 3]`` -> ``[...]``."""
    return torch.linalg.vector_norm(p1 - p0, dim=-1)


def bond_angle(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Angle p0-p1-p2 at the vertex ``p1`` in radians, in ``[0, pi]``: ``[..., 3]`` x3 -> ``[...]``."""
    u = p0 - p1
    v = p2 - p1
    sine_part = torch.linalg.vector_norm(torch.linalg.cross(u, v, dim=-1), dim=-1)
    cosine_part = (u * v).sum(-1)
    return torch.atan2(sine_part, cosine_part)


def dihedral_angle(
    p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor
) -> torch.Tensor:
    """Dihedral p0-p1-p2-p3 about the p1-p2 axis in radians, in ``[-pi, pi]``.

    Positive when, looking along p1 -> p2, the bond p2-p3 is rotated clockwise from p1-p0
    (IUPAC, as mdtraj). Symmetric under reversal: ``dihedral(p0,p1,p2,p3) == dihedral(p3,p2,p1,p0)``.
    Shapes ``[..., 3]`` x4 -> ``[...]``.
    """
    b1 = p1 - p0
    b2 = p2 - p1
    b3 = p3 - p2
    n12 = torch.linalg.cross(b1, b2, dim=-1)
    n23 = torch.linalg.cross(b2, b3, dim=-1)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n23).sum(-1)
    x = (n12 * n23).sum(-1)
    return torch.atan2(y, x)


def _unit(v: torch.Tensor) -> torch.Tensor:
    """``v / |v|`` along the last axis, finite (zero) for a zero vector."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / norm.clamp_min(torch.finfo(v.dtype).tiny)


def place_atom(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    bond: torch.Tensor,
    angle: torch.Tensor,
    torsion: torch.Tensor,
) -> torch.Tensor:
    """NeRF: the position of an atom ``i`` from three reference atoms and its internal coordinates.

    Returns the point ``p`` with ``bond_length(p, a) = bond``, ``bond_angle(p, a, b) = angle`` and
    ``dihedral_angle(p, a, b, c) = torsion`` (Parsons et al. 2005, "natural extension reference
    frame"). ``a``, ``b``, ``c``: ``[..., 3]`` nm; ``bond`` (nm), ``angle``, ``torsion`` (rad):
    ``[...]``. Output ``[..., 3]``. ``c``, ``b``, ``a`` must not be collinear.
    """
    axis = _unit(a - b)
    normal = _unit(torch.linalg.cross(b - c, axis, dim=-1))
    in_plane = torch.linalg.cross(normal, axis, dim=-1)
    radial = bond * torch.sin(angle)
    along = -bond * torch.cos(angle)
    across = radial * torch.cos(torsion)
    out_of_plane = radial * torch.sin(torsion)
    return (
        a
        + along.unsqueeze(-1) * axis
        + across.unsqueeze(-1) * in_plane
        + out_of_plane.unsqueeze(-1) * normal
    )


def _as_index(indices: IndexArray, width: int, device: torch.device) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        index = indices.to(device=device, dtype=torch.long)
    else:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=device)
    if index.numel() == 0:
        index = index.reshape(0, width)
    if index.ndim != 2 or index.shape[1] != width:
        raise ValueError(f"expected an index array of shape [K, {width}], got {tuple(index.shape)}")
    return index


def _check_frames(x: torch.Tensor) -> None:
    if x.ndim < 2 or x.shape[-1] != 3:
        raise ValueError(f"expected positions of shape [..., N, 3], got {tuple(x.shape)}")


def distances(x: torch.Tensor, pairs: IndexArray) -> torch.Tensor:
    """Distances for atom pairs: ``x`` ``[..., N, 3]`` nm, ``pairs`` ``[K, 2]`` -> ``[..., K]`` nm."""
    _check_frames(x)
    index = _as_index(pairs, 2, x.device)
    return bond_length(x[..., index[:, 0], :], x[..., index[:, 1], :])


def angles(x: torch.Tensor, triples: IndexArray) -> torch.Tensor:
    """Bond angles at the middle atom of each triple: ``[..., N, 3]``, ``[K, 3]`` -> ``[..., K]`` rad."""
    _check_frames(x)
    index = _as_index(triples, 3, x.device)
    return bond_angle(x[..., index[:, 0], :], x[..., index[:, 1], :], x[..., index[:, 2], :])


def dihedrals(x: torch.Tensor, quadruples: IndexArray) -> torch.Tensor:
    """Dihedral angles of atom quadruples: ``[..., N, 3]``, ``[K, 4]`` -> ``[..., K]`` rad in [-pi, pi]."""
    _check_frames(x)
    index = _as_index(quadruples, 4, x.device)
    return dihedral_angle(*(x[..., index[:, k], :] for k in range(4)))
