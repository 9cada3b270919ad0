"""Ewald summation of periodic Coulomb energies in batched torch, as OpenMM's ``NonbondedForce.Ewald``.

The Coulomb energy of a neutral periodic system splits into (OpenMM's reference platform,
``ReferenceLJCoulombIxn::calculateEwaldIxn``; energies in kJ/mol, lengths in nm,
``k_e = 1 / (4 pi eps0) = 138.935...``):

- direct space, ordinary pairs within the cutoff: ``k_e q_i q_j erfc(alpha r) / r`` (minimum image);
- reciprocal space, all particles:
  ``k_e (4 pi / V) sum_{k in half space} exp(-|k|^2 / (4 alpha^2)) / |k|^2 |S(k)|^2`` with the
  structure factor ``S(k) = sum_j q_j exp(i k . r_j)`` and ``k = 2 pi (n_x / L_x, n_y / L_y, n_z / L_z)``,
  ``0 <= n_x < kmax_x``, ``|n_y| < kmax_y``, ``|n_z| < kmax_z``, one of each ``+-k`` pair (the half
  space doubles the terms of the full sum ``2 pi / V sum_{k != 0}``);
- self energy ``-k_e alpha / sqrt(pi) sum_i q_i^2``;
- excluded pairs (every exception, with the particles' own charges): ``-k_e q_i q_j erf(alpha r) / r``
  with the plain distance (minimum image when the force's exceptions use periodic boundary
  conditions), removing what the reciprocal sum added for them.

OpenMM chooses ``alpha = sqrt(-ln(2 tol)) / r_c`` and, per box axis of length ``L``, the smallest
``kmax`` with ``0.05 sqrt(L alpha) kmax exp(-(kmax pi / (L alpha))^2) < tol`` (searched from 10,
``NonbondedForceImpl::calcEwaldParameters``), rounded up to an odd number. `ewald_parameters`
reproduces that, so `TorchEnergy` of an Ewald system matches OpenMM to rounding. PME approximates
the same sum on a grid; it is not reproduced here (its result differs from Ewald by about the
error tolerance).
"""

from __future__ import annotations

import math

import torch

from boltzgen.energy.torch_forces.base import ONE_4PI_EPS0, as_float_buffer, as_index_buffer

__all__ = ["ewald_parameters", "EwaldReciprocalSum"]


def _kmax_error(width: float, alpha: float, tolerance: float, kmax: int) -> float:
    """OpenMM's ``EwaldErrorFunction``: positive when ``kmax`` is large enough."""
    t = kmax * math.pi / (width * alpha)
    return tolerance - 0.05 * math.sqrt(width * alpha) * kmax * math.exp(-t * t)


def _smallest_kmax(width: float, alpha: float, tolerance: float) -> int:
    """``NonbondedForceImpl::findZero`` started at 10, then made odd."""
    k = 10
    if _kmax_error(width, alpha, tolerance, k) > 0.0:
        while _kmax_error(width, alpha, tolerance, k) > 0.0 and k > 0:
            k -= 1
        k += 1
    else:
        while _kmax_error(width, alpha, tolerance, k) < 0.0:
            k += 1
    return k + 1 if k % 2 == 0 else k


def ewald_parameters(cutoff_nm: float, tolerance: float, box_lengths_nm) -> tuple[float, tuple[int, int, int]]:
    """OpenMM's Ewald splitting parameter ``alpha`` (1/nm) and ``(kmax_x, kmax_y, kmax_z)``.

    Args:
        cutoff_nm: direct-space cutoff (nm); tolerance: ``getEwaldErrorTolerance()``;
        box_lengths_nm: the three diagonal box lengths (nm) of the System's default box.
    """
    if not cutoff_nm > 0 or not 0 < tolerance < 0.5:
        raise ValueError(f"Ewald needs a positive cutoff and 0 < tolerance < 0.5, got {cutoff_nm}, {tolerance}")
    alpha = math.sqrt(-math.log(2.0 * tolerance)) / cutoff_nm
    kmax = tuple(_smallest_kmax(float(length), alpha, tolerance) for length in box_lengths_nm)
    return alpha, kmax


class EwaldReciprocalSum(torch.nn.Module):
    """Reciprocal-space + self energy of the Ewald sum, ``[B]`` kJ/mol, for a rectangular box.

    Args:
        charges: ``[N]`` partial charges (e) of all particles; only the charged ones are kept.
        alpha: splitting parameter (1/nm); kmax: wave-vector counts per axis (see the module docstring).

    ``forward(positions [B, N, 3] nm, box [3, 3] nm)``. The structure factor is built from per-axis
    cosine/sine tables (``exp(i k.r)`` factorises over the axes), so the cost is
    ``O(B N kmax_x kmax_y kmax_z)`` multiply-adds without any complex tensors.
    """

    def __init__(self, charges, alpha: float, kmax: tuple[int, int, int]):
        super().__init__()
        charges = torch.as_tensor(charges, dtype=torch.float64).reshape(-1)
        charged = torch.nonzero(charges != 0.0).flatten()
        self.register_buffer("charged_atoms", as_index_buffer(charged.numpy(), 1).reshape(-1))
        self.register_buffer("charges", as_float_buffer(charges[charged].numpy()))
        self.alpha = float(alpha)
        self.kmax = tuple(int(k) for k in kmax)
        if any(k < 1 for k in self.kmax):
            raise ValueError(f"kmax must be positive, got {self.kmax}")
        self.self_energy = -ONE_4PI_EPS0 * self.alpha / math.sqrt(math.pi) * float((charges * charges).sum())
        kx, ky, kz = self.kmax
        # Integer wave vectors: n_x in [0, kx), n_y in (-ky, ky), n_z in (-kz, kz); the half space
        # keeps n_x > 0, or n_x = 0 and n_y > 0, or n_x = n_y = 0 and n_z > 0 (OpenMM's loop bounds).
        nx = torch.arange(kx, dtype=torch.float64)
        ny = torch.arange(-(ky - 1), ky, dtype=torch.float64)
        nz = torch.arange(-(kz - 1), kz, dtype=torch.float64)
        self.register_buffer("order_x", nx)
        self.register_buffer("order_y", ny)
        self.register_buffer("order_z", nz)
        nx, ny, nz = nx.view(-1, 1, 1), ny.view(1, -1, 1), nz.view(1, 1, -1)
        half = (nx > 0) | ((nx == 0) & (ny > 0)) | ((nx == 0) & (ny == 0) & (nz > 0))
        self.register_buffer("half_space", half.to(torch.float64))

    def forward(self, positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        dtype = positions.dtype
        lengths = torch.diagonal(box).to(dtype)
        x = positions.index_select(1, self.charged_atoms)  # [B, M, 3]
        # Wave numbers per axis, 2 pi n / L (1/nm), and phase tables [B, M, n].
        gx, gy, gz = (2.0 * math.pi) / lengths
        wx, wy, wz = gx * self.order_x.to(dtype), gy * self.order_y.to(dtype), gz * self.order_z.to(dtype)
        phase_x, phase_y, phase_z = x[..., 0:1] * wx, x[..., 1:2] * wy, x[..., 2:3] * wz
        q = self.charges.to(dtype).view(1, -1, 1)
        cx, sx = q * torch.cos(phase_x), q * torch.sin(phase_x)
        cy, sy = torch.cos(phase_y), torch.sin(phase_y)
        cz, sz = torch.cos(phase_z), torch.sin(phase_z)
        # q exp(i (kx x + ky y)) as [B, M, kx, 2ky - 1], real and imaginary parts.
        re_xy = cx.unsqueeze(-1) * cy.unsqueeze(-2) - sx.unsqueeze(-1) * sy.unsqueeze(-2)
        im_xy = cx.unsqueeze(-1) * sy.unsqueeze(-2) + sx.unsqueeze(-1) * cy.unsqueeze(-2)
        s_re = torch.einsum("bmxy,bmz->bxyz", re_xy, cz) - torch.einsum("bmxy,bmz->bxyz", im_xy, sz)
        s_im = torch.einsum("bmxy,bmz->bxyz", re_xy, sz) + torch.einsum("bmxy,bmz->bxyz", im_xy, cz)
        k2 = (wx * wx).view(-1, 1, 1) + (wy * wy).view(1, -1, 1) + (wz * wz).view(1, 1, -1)
        half = self.half_space.to(dtype)
        # k = 0 lies outside the half space; give it k^2 = 1 so the masked weight stays finite.
        k2 = torch.where(half > 0, k2, torch.ones_like(k2))
        weight = half * torch.exp(-k2 / (4.0 * self.alpha * self.alpha)) / k2
        volume = lengths[0] * lengths[1] * lengths[2]
        reciprocal = (4.0 * math.pi * ONE_4PI_EPS0 / volume) * ((s_re * s_re + s_im * s_im) * weight).sum((1, 2, 3))
        return reciprocal + self.self_energy

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.6g}, kmax={self.kmax}, charged_particles={self.charges.shape[0]}"
