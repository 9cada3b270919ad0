"""Particle pairs for nonbonded terms: index lists and OpenMM's minimum image of displacement vectors.

Shapes: pair index arrays ``[K, 2]`` (long, ``i < j``); displacements ``[..., 3]`` nm; box
``[3, 3]`` nm (rows a, b, c in OpenMM's reduced form: a = (ax, 0, 0), b = (bx, by, 0),
c = (cx, cy, cz)).
"""

from __future__ import annotations

from typing import Iterable

import torch

from boltzgen.energy.torch_forces.layout import minimum_image_components


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

    The vector form of `layout.minimum_image_components` (one shift per box vector, c, then b,
    then a), which is the nearest image for OpenMM's reduced triclinic boxes when the cutoff is at
    most half the smallest box height.
    """
    return torch.stack(minimum_image_components(*delta.unbind(-1), box), dim=-1)
