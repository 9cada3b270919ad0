"""Batch-last layout helpers shared by the pair and bonded terms.

Positions arrive as ``[B, N, 3]`` nm. On CPU (and GPU) the per-pair / per-bond arithmetic is
fastest "batch-last": ``[3, N, B]`` (`batch_last`), so that gathering atoms is a copy of
contiguous rows (``index_select`` on dim 1, whose backward is a row-wise ``index_add``) and
every elementwise op runs over contiguous ``[K, B]`` rows. Vectors are handled as three ``[K, B]``
components (``unbind``), cross and dot products written out per component.

Under ``torch.compile`` the transpose is an opaque custom op (``boltzgen::batch_last``; its
backward is a plain permute): left as a plain ``permute().contiguous()``, inductor fuses the copy
into the consumers and then picks its loops to read the ``[B, N, 3]`` input contiguously, which
makes every pair / bond kernel loop over the batch one element at a time (2-3x slower). As an
opaque op the ``[3, N, B]`` buffer is materialized once (shared by all terms of a compiled sum:
identical calls are merged) and every kernel vectorizes over the batch. Eager mode uses the plain
``permute().contiguous()`` (same values, no custom-op dispatch overhead).

Box ``[3, 3]`` nm: rows a, b, c in OpenMM's reduced form (a = (ax, 0, 0), b = (bx, by, 0),
c = (cx, cy, cz)).
"""

from __future__ import annotations

import torch

__all__ = ["batch_last", "gather_atoms", "minimum_image_components", "displacement_components"]


@torch.library.custom_op("boltzgen::batch_last", mutates_args=())
def _batch_last_op(positions: torch.Tensor) -> torch.Tensor:
    return positions.permute(2, 1, 0).contiguous()


@_batch_last_op.register_fake
def _(positions: torch.Tensor) -> torch.Tensor:
    b, n, c = positions.shape
    return positions.new_empty((c, n, b))


def _batch_last_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    # A plain permute: inductor writes it as its own small copy after the scatter-adds.
    return grad.permute(2, 1, 0)


_batch_last_op.register_autograd(_batch_last_backward)


def batch_last(positions: torch.Tensor) -> torch.Tensor:
    """Positions ``[B, N, 3]`` -> contiguous ``[3, N, B]``: per coordinate, one row per atom across the batch."""
    if torch.compiler.is_compiling():
        return _batch_last_op(positions)
    return positions.permute(2, 1, 0).contiguous()


def gather_atoms(points: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Batch-last positions ``[3, N, B]`` of the atoms ``[K]`` -> ``[3, K, B]`` (row copies)."""
    return points.index_select(1, atoms)


def minimum_image_components(
    dx: torch.Tensor, dy: torch.Tensor, dz: torch.Tensor, box: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenMM's minimum image of displacements given by components (any equal shapes).

    ``getDeltaRPeriodic``: shift by c, then b, then a, each ``floor(d_k / box_kk + 0.5)`` times;
    box rows a, b, c in OpenMM's reduced form (so a shift by c or b also moves the lower components).
    """
    box = box.to(dx.dtype)
    shift = torch.floor(dz / box[2, 2] + 0.5)
    dx, dy, dz = dx - shift * box[2, 0], dy - shift * box[2, 1], dz - shift * box[2, 2]
    shift = torch.floor(dy / box[1, 1] + 0.5)
    dx, dy = dx - shift * box[1, 0], dy - shift * box[1, 1]
    shift = torch.floor(dx / box[0, 0] + 0.5)
    return dx - shift * box[0, 0], dy, dz


def displacement_components(
    points: torch.Tensor, first: torch.Tensor, second: torch.Tensor, box: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``r_second - r_first`` as three ``[K, B]`` components from batch-last ``[3, N, B]`` (minimum image if ``box``)."""
    dx, dy, dz = (gather_atoms(points, second) - gather_atoms(points, first)).unbind(0)
    if box is not None:
        dx, dy, dz = minimum_image_components(dx, dy, dz, box)
    return dx, dy, dz
