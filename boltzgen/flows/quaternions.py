"""Unit quaternions as orientations of rigid bodies.

Convention: a quaternion is ``q = (w, x, y, z)`` along the last axis, **scalar first**, of unit
norm. It acts on vectors as the active rotation ``v -> q v q*``, whose matrix is
:func:`quaternion_to_rotation_matrix`. ``q`` and ``-q`` give the same rotation (S^3 is a double
cover of SO(3)), so anything a flow learns about orientations must either be a function of the
sign-invariant products ``q_i q_j`` (:func:`sign_invariant_features`) or be odd in ``q``
(``f(-q) = -f(q)``, the double Möbius of :mod:`boltzgen.flows.mobius`). Training data get a random
sign per quaternion (:func:`random_quaternion_sign`), so a model never relies on one hemisphere.

Products follow Hamilton's convention: ``R(a ⊗ b) = R(a) R(b)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

#: Index pairs (i, j), i <= j, of the upper triangle of the 4 x 4 outer product ``q q^T``.
_UPPER_I, _UPPER_J = torch.triu_indices(4, 4)
N_SIGN_INVARIANT_FEATURES = 10


def _check_last_axis(q: torch.Tensor, size: int, name: str) -> None:
    if q.dim() < 1 or q.shape[-1] != size:
        raise ValueError(f"{name} must have shape [..., {size}], got {list(q.shape)}")


def quaternion_to_rotation_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``q`` ``[..., 4]`` (``(w, x, y, z)``).

    The matrix is the homogeneous form divided by ``|q|^2``, so ``q`` need not be exactly unit
    (any non-zero multiple gives the same rotation; ``q = 0`` gives NaN). It is quadratic in
    ``q``, hence ``R(q) = R(-q)``. Rotated vectors are ``R @ v`` (``v`` a column vector).
    """
    _check_last_axis(q, 4, "q")
    w, x, y, z = q.unbind(-1)
    norm2 = (q * q).sum(-1)
    s = 2.0 / norm2
    rows = [
        [1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
        [s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)],
        [s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def canonical_hemisphere(q: torch.Tensor) -> torch.Tensor:
    """``q`` ``[..., 4]`` with the sign flipped where ``w < 0`` (result has ``w >= 0``)."""
    _check_last_axis(q, 4, "q")
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[..., 4]`` (``(w, x, y, z)``, ``w >= 0``) of rotations ``[..., 3, 3]``.

    Shepperd's method: of the four candidates ``4w^2 = 1 + tr R``, ``4x^2 = 1 + 2R_00 - tr R``,
    ... the largest is taken as the pivot (it is >= 1/4, so the division is well conditioned) and
    the other components come from the off-diagonal sums and differences. The result is
    normalised and put in the hemisphere ``w >= 0`` (:func:`canonical_hemisphere`).
    """
    if matrix.dim() < 2 or matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have shape [..., 3, 3], got {list(matrix.shape)}")
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # 4 * (the squared component) for w, x, y, z
    pivots = torch.stack(
        [1 + trace, 1 + 2 * m[..., 0, 0] - trace, 1 + 2 * m[..., 1, 1] - trace,
         1 + 2 * m[..., 2, 2] - trace],
        dim=-1,
    )
    d21, s21 = m[..., 2, 1] - m[..., 1, 2], m[..., 2, 1] + m[..., 1, 2]
    d02, s02 = m[..., 0, 2] - m[..., 2, 0], m[..., 0, 2] + m[..., 2, 0]
    d10, s10 = m[..., 1, 0] - m[..., 0, 1], m[..., 1, 0] + m[..., 0, 1]
    # candidate k: 4 q_k * q (unnormalised), using the pivot 4 q_k^2 on the diagonal
    candidates = torch.stack(
        [
            torch.stack([pivots[..., 0], d21, d02, d10], dim=-1),
            torch.stack([d21, pivots[..., 1], s10, s02], dim=-1),
            torch.stack([d02, s10, pivots[..., 2], s21], dim=-1),
            torch.stack([d10, s02, s21, pivots[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4 components]
    best = pivots.argmax(dim=-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    q = candidates.gather(-2, index).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return canonical_hemisphere(q)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a ⊗ b`` of ``[..., 4]`` quaternions (broadcasting).

    ``R(a ⊗ b) = R(a) R(b)``: rotating by ``b`` first, then by ``a``.
    """
    _check_last_axis(a, 4, "a")
    _check_last_axis(b, 4, "b")
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def random_quaternion_sign(
    q: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``q`` ``[..., 4]`` with each quaternion multiplied by an independent random sign ±1.

    Use on training data so that the two representatives of a rotation are equally likely.
    """
    _check_last_axis(q, 4, "q")
    bits = torch.randint(0, 2, q.shape[:-1] + (1,), generator=generator, device=q.device)
    return q * (2 * bits - 1).to(q.dtype)


def sign_invariant_features(q: torch.Tensor) -> torch.Tensor:
    """The 10 products ``q_i q_j`` (``i <= j``, row-major upper triangle of ``q q^T``).

    Shapes: ``q [..., 4]`` (e.g. ``[B, K, 4]``) -> ``[..., 10]`` (e.g. ``[B, K, 10]``). The map is
    even (``q`` and ``-q`` give the same features) and injective on S^3 / ±1 (the outer product
    determines ``q`` up to sign), so a conditioner on these features is a function on SO(3).
    Order: ``ww, wx, wy, wz, xx, xy, xz, yy, yz, zz``.
    """
    _check_last_axis(q, 4, "q")
    i, j = _UPPER_I.to(q.device), _UPPER_J.to(q.device)
    return q[..., i] * q[..., j]


class SignInvariantConditioner(torch.nn.Module):
    """Wraps a conditioner so that quaternions among its inputs enter only as sign-invariant
    features: the whole coupling layer is then a function of rotations (SO(3)), not of the
    representative quaternions.

    Args:
        dim: number D_c of conditioning inputs ``x_C``.
        quaternion_dims: indices into ``x_C`` of the quaternion components, ``4K`` of them,
            each consecutive group of 4 one quaternion ``(w, x, y, z)``.
        conditioner: module ``(features [B, D_c - 4K + 10K], context) -> params``, e.g. an
            :class:`~boltzgen.flows.conditioners.MLPConditioner` whose ``circular`` flags are
            those of the other inputs followed by ``10K`` False (the products lie in [-1, 1]
            and are treated as interval variables).

    Feature layout: the non-quaternion inputs in increasing index, then
    :func:`sign_invariant_features` of each quaternion (``[B, K, 10]`` flattened).

    Shapes: ``forward(x_c [B, D_c], context) -> conditioner output``.
    """

    def __init__(self, dim: int, quaternion_dims: Sequence[int], conditioner: torch.nn.Module):
        super().__init__()
        q_dims = torch.as_tensor(list(quaternion_dims), dtype=torch.long)
        if q_dims.numel() % 4 != 0 or q_dims.dim() != 1:
            raise ValueError(f"quaternion_dims must hold 4K indices, got {q_dims.tolist()}")
        if q_dims.numel() and (q_dims.min() < 0 or q_dims.max() >= dim):
            raise ValueError(f"quaternion_dims must lie in [0, {dim}), got {q_dims.tolist()}")
        if torch.unique(q_dims).numel() != q_dims.numel():
            raise ValueError(f"quaternion_dims must be unique, got {q_dims.tolist()}")
        is_quaternion = torch.zeros(dim, dtype=torch.bool)
        is_quaternion[q_dims] = True
        self.dim = int(dim)
        self.n_quaternions = q_dims.numel() // 4
        self.n_features = self.dim - 4 * self.n_quaternions + 10 * self.n_quaternions
        self.register_buffer("quaternion_dims", q_dims)
        self.register_buffer("other_dims", torch.nonzero(~is_quaternion).flatten())
        self.conditioner = conditioner

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x_c [B, D_c]`` -> sign-invariant features ``[B, n_features]``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"expected conditioning inputs [batch, {self.dim}], got {list(x.shape)}"
            )
        quaternions = x[:, self.quaternion_dims].reshape(x.shape[0], self.n_quaternions, 4)
        products = sign_invariant_features(quaternions).reshape(x.shape[0], -1)
        return torch.cat([x[:, self.other_dims], products], dim=-1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conditioner(self.features(x), context)
