"""Particle pairs for nonbonded terms: index lists, displacement vectors and OpenMM's minimum image.

Shapes: positions ``[B, N, 3]`` nm; pair index arrays ``[K, 2]`` (long, ``i < j``); displacements
``[B, K, 3]`` nm (``r_j - r_i``); distances ``[B, K]`` nm; box ``[3, 3]`` nm (rows a, b, c in
OpenMM's reduced form: a = (ax, 0, 0), b = (bx, by, 0), c = (cx, cy, cz)) or ``None``.
"""

from __future__ import annotations

from typing import Iterable

import torch


def all_pairs(n_particles: int, exclude: Iterable[tuple[int, int]] = ()) -> torch.Tensor:
    """All pairs ``i < j`` of ``n_particles``, minus the unordered pairs in ``exclude``: ``[K, 2]`` long."""
    i, j = torch.triu_indices(n_particles, n_particles, offset=1)
    excluded = torch.tensor([(min(a, b), max(a, b)) for a, b in exclude], dtype=torch.long).reshape(-1, 2)
    if len(excluded):
        keep = ~torch.isin(i * n_particles + j, excluded[:, 0] * n_particles + excluded[:, 1])
        i, j = i[keep], j[keep]
    return torch.stack([i, j], dim=1)


def minimum_image(delta: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Wrap displacements ``[..., 3]`` into the box as OpenMM's reference platform does.

    One shift per box vector, c first, then b, then a (``delta -= c * floor(delta_z / c_z + 0.5)``,
    ...), which is the nearest image for OpenMM's reduced triclinic boxes when the cutoff is at
    most half the smallest box height.
    """
    for k in (2, 1, 0):
        shift = torch.floor(delta[..., k] / box[k, k] + 0.5)
        delta = delta - shift.unsqueeze(-1) * box[k]
    return delta


def pair_vectors(positions: torch.Tensor, pairs: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
    """Displacements ``r_j - r_i`` for ``pairs`` ``[K, 2]``: ``[B, N, 3]`` -> ``[B, K, 3]`` (minimum image if ``box``)."""
    delta = positions[:, pairs[:, 1], :] - positions[:, pairs[:, 0], :]
    return delta if box is None else minimum_image(delta, box)


def pair_distances(positions: torch.Tensor, pairs: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
    """Distances ``|r_j - r_i|`` for ``pairs`` ``[K, 2]``: ``[B, N, 3]`` -> ``[B, K]`` nm."""
    return torch.linalg.vector_norm(pair_vectors(positions, pairs, box), dim=-1)
