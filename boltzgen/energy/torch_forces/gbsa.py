"""`GBSAOBCTerm`: OpenMM's ``GBSAOBCForce`` (OBC2 generalized Born + ACE surface area) in batched torch.

Follows the Reference platform (``ReferenceObc.cpp``, ``ObcParameters.cpp``) term by term:

- offset radii ``rho_i = radius_i - 0.009`` nm, scaled radii ``s_j = rho_j * scale_j``;
- HCT integral ``I_i = sum_{j != i} H(rho_i, s_j, r_ij)`` with ``L = max(rho_i, |r - s_j|)``,
  ``U = r + s_j``, ``H = 1/L - 1/U + (r/4)(1/U^2 - 1/L^2) + log(L/U)/(2r) + (s_j^2/(4r))(1/L^2 - 1/U^2)``;
  pairs with ``rho_i >= r + s_j`` add nothing, and "i inside j" (``rho_i < s_j - r``) adds
  ``2 (1/rho_i - 1/L)``;
- OBC2 Born radii ``B_i = 1 / (1/rho_i - tanh(psi - 0.8 psi^2 + 4.85 psi^3) / radius_i)``, ``psi = I_i rho_i / 2``;
- polar energy ``pre (sum_{i<j} q_i q_j / f_ij + 1/2 sum_i q_i^2 / B_i)`` with
  ``pre = -ONE_4PI_EPS0 (1/eps_solute - 1/eps_solvent)`` (0 if either dielectric is 0) and
  ``f_ij = sqrt(r^2 + B_i B_j exp(-r^2 / (4 B_i B_j)))``;
- ACE non-polar energy ``sum_i 4 pi sa (radius_i + 0.14)^2 (radius_i / B_i)^6`` (``sa`` = surface area
  energy; skipped when 0; OpenMM adds it only where ``B_i > 0``, which holds whenever radius > 0.009 nm).

With a cutoff (CutoffNonPeriodic / CutoffPeriodic) OpenMM drops every pair with ``r > cutoff`` from both
the Born sums and the polar pair sum, and shifts each remaining pair energy (not the self terms) by
``- pre q_i q_j / cutoff`` (a reaction-field-like shift; the energy is still discontinuous at the
cutoff through the Born radii). CutoffPeriodic uses the minimum image (``layout.minimum_image_components``).

Layout (chosen by measurement, see the tests' timing note): batch last. The ``K = N(N-1)/2`` unique
pairs (``[K, B]``) carry distances and the symmetric polar pair terms; the ``N(N-1)`` directed pairs
(``[N(N-1), B]``, grouped by the receiving atom) carry the HCT integrand, so each Born sum is a plain
reshape-and-sum. There are no boolean masks: ``L = max(r - s, max(s - r, rho))`` and
``U = max(r + s, L)`` make the skipped pairs give exactly ``H = 0``, and the inside correction is
``2/rho - 2/max(s - r, rho)`` (exactly 0 unless i is inside j).

When positions require grad (and ``analytic_gradient`` is on) the energy and its exact gradient are
computed in one pass, as OpenMM does, and handed to autograd (`_GBSAOBCFunction`); this is 3-4x faster
than autograd through the ~40 elementwise ops. That path is differentiable once (forces, or gradients
of anything built from the energy w.r.t. positions); for second derivatives (e.g. a loss on forces)
set ``analytic_gradient = False``, which differentiates the same energy code with autograd (also used
automatically when the box requires grad).
"""

from __future__ import annotations

import math

import openmm
import torch
from torch.autograd.function import once_differentiable

from boltzgen.energy.torch_forces.base import (
    ONE_4PI_EPS0,
    ForceTerm,
    UnsupportedForceError,
    as_float_buffer,
    value_of,
)
from boltzgen.energy.torch_forces.layout import batch_last, minimum_image_components
from boltzgen.energy.torch_forces.pairs import all_pairs

_NM = openmm.unit.nanometer
_E = openmm.unit.elementary_charge
_KJ_PER_NM2 = openmm.unit.kilojoule_per_mole / openmm.unit.nanometer**2

#: OBC type II (Onufriev, Bashford, Case 2004) as OpenMM's GBSAOBCForce uses it.
OBC2_ALPHA, OBC2_BETA, OBC2_GAMMA = 1.0, 0.8, 4.85
#: Dielectric offset (nm) and ACE probe radius (nm) fixed by OpenMM.
DIELECTRIC_OFFSET = 0.009
PROBE_RADIUS = 0.14


class GBSAOBCTerm(ForceTerm):
    """``GBSAOBCForce`` as torch: ``forward(positions [B, N, 3] nm, box) -> [B]`` kJ/mol.

    ``analytic_gradient`` (default True): compute the exact gradient together with the energy
    (fast; first derivatives only). False: plain autograd through the energy (any order).
    """

    openmm_name = "GBSAOBCForce"

    def __init__(
        self,
        charges,
        radii,
        scale_factors,
        solute_dielectric: float = 1.0,
        solvent_dielectric: float = 78.5,
        surface_area_energy: float = 2.25936,
        cutoff: float | None = None,
        periodic: bool = False,
    ):
        super().__init__()
        charges = as_float_buffer(charges)
        radii = as_float_buffer(radii)
        scale_factors = as_float_buffer(scale_factors)
        n = len(charges)
        if not (len(radii) == len(scale_factors) == n):
            raise ValueError("charges, radii and scale_factors must have one entry per particle")
        if periodic and cutoff is None:
            raise ValueError("a periodic GBSAOBCTerm needs a cutoff")
        offset_radii = radii - DIELECTRIC_OFFSET
        scaled_radii = offset_radii * scale_factors
        if solute_dielectric != 0.0 and solvent_dielectric != 0.0:
            prefactor = -ONE_4PI_EPS0 * (1.0 / solute_dielectric - 1.0 / solvent_dielectric)
        else:
            prefactor = 0.0
        self.n_particles = n
        self.cutoff = None if cutoff is None else float(cutoff)
        self.periodic = bool(periodic)
        self.use_ace = surface_area_energy != 0.0
        # OpenMM adds the ACE term only where B > 0, which can fail only for radius <= 0.009 nm.
        self.ace_needs_mask = bool((offset_radii <= 0).any())
        self.analytic_gradient = True

        # Unique pairs k = (i < j) and directed pairs (i, j != i) in row-major order.
        pairs = all_pairs(n)
        pair_id = torch.full((n, n), -1, dtype=torch.long)
        pair_id[pairs[:, 0], pairs[:, 1]] = torch.arange(len(pairs))
        pair_id[pairs[:, 1], pairs[:, 0]] = torch.arange(len(pairs))
        off = ~torch.eye(n, dtype=torch.bool)
        dir_i, dir_j = off.nonzero(as_tuple=True)  # row-major: grouped by i
        dir_pos = torch.full((n, n), -1, dtype=torch.long)
        dir_pos[dir_i, dir_j] = torch.arange(len(dir_i))
        self.register_buffer("pair_i", pairs[:, 0].contiguous())
        self.register_buffer("pair_j", pairs[:, 1].contiguous())
        self.register_buffer("dir_pair", pair_id[dir_i, dir_j])  # unique pair of each directed pair
        self.register_buffer("dir_ij", dir_pos[pairs[:, 0], pairs[:, 1]])  # directed slot of (i, j)
        self.register_buffer("dir_ji", dir_pos[pairs[:, 1], pairs[:, 0]])  # directed slot of (j, i)
        # Parameters, shaped to broadcast against [rows, B].
        self.register_buffer("dir_rho", offset_radii[dir_i].reshape(-1, 1))
        self.register_buffer("dir_s", scaled_radii[dir_j].reshape(-1, 1))
        self.register_buffer("half_rho", 0.5 * offset_radii.reshape(n, 1))
        self.register_buffer("inv_rho", 1.0 / offset_radii.reshape(n, 1))
        self.register_buffer("inv_radius", 1.0 / radii.reshape(n, 1))
        self.register_buffer("qq_pair", (prefactor * charges[pairs[:, 0]] * charges[pairs[:, 1]]).reshape(-1, 1))
        self.register_buffer("q2_self", (0.5 * prefactor * charges**2).reshape(n, 1))
        # ACE: 4 pi sa (radius + probe)^2 radius^6 / B^6.
        ace = 4.0 * math.pi * surface_area_energy * (radii + PROBE_RADIUS) ** 2 * radii**6
        self.register_buffer("ace", ace.reshape(n, 1))

    @classmethod
    def from_openmm(cls, force: openmm.GBSAOBCForce, system: openmm.System | None = None) -> "GBSAOBCTerm":
        method = force.getNonbondedMethod()
        if method == openmm.GBSAOBCForce.NoCutoff:
            cutoff, periodic = None, False
        elif method == openmm.GBSAOBCForce.CutoffNonPeriodic:
            cutoff, periodic = value_of(force.getCutoffDistance(), _NM), False
        elif method == openmm.GBSAOBCForce.CutoffPeriodic:
            cutoff, periodic = value_of(force.getCutoffDistance(), _NM), True
        else:  # pragma: no cover - OpenMM has no other methods
            raise UnsupportedForceError(f"GBSAOBCForce nonbonded method {method} is not supported")
        if system is not None and force.getNumParticles() != system.getNumParticles():
            raise UnsupportedForceError("GBSAOBCForce must have exactly as many particles as the System")
        charges, radii, scales = [], [], []
        for i in range(force.getNumParticles()):
            q, radius, scale = force.getParticleParameters(i)
            charges.append(value_of(q, _E))
            radii.append(value_of(radius, _NM))
            scales.append(value_of(scale))
        if any(r <= 0 for r in radii) or any(s <= 0 for s in scales):
            raise UnsupportedForceError("GBSAOBCForce: particle radii and scaling factors must be positive")
        return cls(
            charges,
            radii,
            scales,
            solute_dielectric=value_of(force.getSoluteDielectric()),
            solvent_dielectric=value_of(force.getSolventDielectric()),
            surface_area_energy=value_of(force.getSurfaceAreaEnergy(), _KJ_PER_NM2),
            cutoff=cutoff,
            periodic=periodic,
        )

    # -- evaluation ---------------------------------------------------------------------------

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        if (
            self.analytic_gradient
            # Under torch.compile the analytic path is exact without a cutoff (checked against
            # eager), but a compiled sum of several periodic terms with it gave wrong forces (also
            # before the batch-last change): with a cutoff, compiled code uses plain autograd.
            and not (self.cutoff is not None and torch.compiler.is_compiling())
            and positions.requires_grad
            and torch.is_grad_enabled()
            and not (box is not None and box.requires_grad)
        ):
            return _GBSAOBCFunction.apply(positions, box, self)
        return self.evaluate(positions, box)[0]

    def born_radii(self, positions: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """OBC2 Born radii ``[B, N]`` nm."""
        return self.evaluate(positions, box)[1].T

    def evaluate(self, positions: torch.Tensor, box: torch.Tensor | None = None, with_gradient: bool = False):
        """``(energy [B], born radii [N, B], dE/dpositions [B, N, 3] or None)``.

        Differentiable by autograd when ``with_gradient`` is False; with ``with_gradient`` it runs
        without autograd and also returns the analytic gradient.
        """
        if with_gradient:
            with torch.no_grad():
                return self._evaluate(positions, box, True)
        return self._evaluate(positions, box, False)

    def _evaluate(self, positions, box, with_gradient):
        if self.periodic and box is None:
            raise ValueError("GBSAOBCForce with CutoffPeriodic needs the periodic box vectors")
        dtype = positions.dtype
        n, batch = self.n_particles, positions.shape[0]
        half_rho, inv_radius = self.half_rho.to(dtype), self.inv_radius.to(dtype)
        rho, s = self.dir_rho.to(dtype), self.dir_s.to(dtype)

        # Pair displacements d[c, k, b] = x_j - x_i (minimum image if periodic), distances [K, B].
        points = batch_last(positions)  # [3, N, B]
        d = points.index_select(1, self.pair_j) - points.index_select(1, self.pair_i)
        if self.periodic:
            d = torch.stack(minimum_image_components(*d.unbind(0), box.to(positions)))
        r2 = torch.addcmul(torch.addcmul(d[0] * d[0], d[1], d[1]), d[2], d[2])
        r = r2.sqrt()
        keep = None
        if self.cutoff is not None:
            keep = (r2 <= self.cutoff**2).to(dtype)  # OpenMM skips r > cutoff

        # HCT integrand on directed pairs [N(N-1), B] (row i receives from j).
        rd = r.index_select(0, self.dir_pair)
        tracked = torch.is_grad_enabled() and (positions.requires_grad or (box is not None and box.requires_grad))
        h, dl2, log_lu, inv_r = _hct_integrand(rd, rho, s, inplace=not tracked)
        if keep is not None:
            h = h * keep.index_select(0, self.dir_pair)
        psi = half_rho * h.view(n, n - 1, batch).sum(1)  # [N, B]
        tanh = torch.tanh(psi * (OBC2_ALPHA - psi * (OBC2_BETA - OBC2_GAMMA * psi)))
        born = (self.inv_rho.to(dtype) - tanh * inv_radius).reciprocal()

        # Polar energy: pairs once plus the self terms; ACE.
        born_i, born_j = born.index_select(0, self.pair_i), born.index_select(0, self.pair_j)
        bb = born_i * born_j
        minus_d = torch.div(r2, bb).mul(-0.25)
        expo = torch.exp(minus_d)
        inv_f = torch.addcmul(r2, bb, expo).rsqrt()
        qq = self.qq_pair.to(dtype)
        pair = qq * inv_f
        if keep is not None:
            pair_energy = ((pair - qq / self.cutoff) * keep).sum(0)
        else:
            pair_energy = pair.sum(0)
        q2_over_b = self.q2_self.to(dtype) / born
        energy = pair_energy + q2_over_b.sum(0)
        ace = None
        if self.use_ace:
            b2 = born * born
            ace = self.ace.to(dtype) / (b2 * b2 * b2)
            if self.ace_needs_mask:
                ace = ace * (born > 0).to(dtype)
            energy = energy + ace.sum(0)
        if not with_gradient:
            return energy, born, None

        # Gradient (no autograd: in place). dE/d(r^2) and dE/d(B_i B_j) of the pair sum at fixed B.
        g = pair.mul_(inv_f).mul_(inv_f)  # qq / f^3
        if keep is not None:
            g.mul_(keep)
        de_dr2 = g * (0.125 * expo - 0.5)
        de_dbb = g.mul_(expo).mul_(minus_d.sub_(1.0)).mul_(0.5)  # -g e (1 + D) / 2
        de_dborn = torch.zeros_like(born)
        de_dborn.index_add_(0, self.pair_i, de_dbb * born_j).index_add_(0, self.pair_j, de_dbb.mul_(born_i))
        de_dborn.sub_(q2_over_b.div_(born))
        if ace is not None:
            de_dborn.sub_(ace.div_(born).mul_(6.0))
        # dB/dpsi * dpsi/dH for each receiving atom.
        dpoly = OBC2_ALPHA - psi * (2.0 * OBC2_BETA - 3.0 * OBC2_GAMMA * psi)
        de_dh = de_dborn.mul_(born).mul_(born).mul_(1.0 - tanh * tanh).mul_(dpoly).mul_(inv_radius).mul_(half_rho)
        # dH/dr at fixed L, U (dH/dL = dH/dU = 0 wherever they move with r; for i inside j the
        # correction's L-dependence cancels H's), zero for skipped pairs.
        inv_r2 = inv_r.mul_(inv_r)
        dh_dr = torch.mul(s * s, inv_r2).add_(1.0).mul_(dl2).mul_(-0.25).addcmul_(log_lu, inv_r2, value=-0.5)
        dh_dr = dh_dr.view(n, n - 1, batch).mul_(de_dh.view(n, 1, batch)).view(-1, batch)
        if keep is not None:
            dh_dr.mul_(keep.index_select(0, self.dir_pair))
        # Per unique pair: w = (dE/dr) / r, then dE/dx_j = w d, dE/dx_i = -w d.
        w = dh_dr.index_select(0, self.dir_ij).add_(dh_dr.index_select(0, self.dir_ji)).div_(r)
        w.add_(de_dr2, alpha=2.0)
        fd = d.mul_(w)  # [3, K, B]
        grad = torch.zeros_like(points).index_add_(1, self.pair_j, fd).index_add_(1, self.pair_i, fd, alpha=-1.0)
        return energy, born, grad.permute(2, 1, 0)


def _hct_integrand(r, rho, s, inplace: bool):
    """HCT integrand ``H`` ``[rows, B]`` for distances ``r`` and receiving ``rho`` / sending ``s`` ``[rows, 1]``.

    Returns ``(H, 1/L^2 - 1/U^2, log(L/U), 1/r)`` (the last three for the gradient). Mask-free:
    ``L = max(r - s, max(s - r, rho))`` and ``U = max(r + s, L)`` give exactly ``H = 0`` for pairs
    with ``rho >= r + s``; ``2/rho - 2/max(s - r, rho)`` is the "i inside j" correction (exactly 0
    otherwise). ``inplace`` (no autograd) reuses buffers: same values, fewer allocations.
    """
    two_inv_rho = 2.0 * rho.reciprocal()
    if not inplace:
        inner = torch.maximum(s - r, rho)  # > rho only when i lies inside j's scaled sphere
        lower = torch.maximum(r - s, inner)  # L = max(rho, |r - s|)
        upper = torch.maximum(r + s, lower)  # r + s for contributing pairs, else L (then H = 0)
        inv_l, inv_u, inv_r = lower.reciprocal(), upper.reciprocal(), r.reciprocal()
        log_lu = torch.log(lower * inv_u)
        diff = inv_l - inv_u
        dl2 = diff * (inv_l + inv_u)  # 1/L^2 - 1/U^2
        h = torch.addcmul(diff, dl2, s * s * inv_r - r, value=0.25)
        h = torch.addcmul(h, inv_r, log_lu, value=0.5)
        h = h + torch.sub(two_inv_rho, inner.reciprocal(), alpha=2.0)
        return h, dl2, log_lu, inv_r
    inner = torch.sub(s, r).clamp_min_(rho)
    lower = torch.maximum(torch.sub(r, s), inner)
    upper = torch.add(r, s)
    torch.maximum(upper, lower, out=upper)
    inv_u, inv_r = upper.reciprocal_(), r.reciprocal()
    log_lu = torch.mul(lower, inv_u).log_()
    inv_l = lower.reciprocal_()
    diff = inv_l - inv_u
    dl2 = inv_l.add_(inv_u).mul_(diff)
    h = diff.addcmul_(dl2, torch.mul(s * s, inv_r).sub_(r), value=0.25)
    h.addcmul_(inv_r, log_lu, value=0.5)
    return h.add_(torch.sub(two_inv_rho, inner.reciprocal_(), alpha=2.0)), dl2, log_lu, inv_r


class _GBSAOBCFunction(torch.autograd.Function):
    """Energy with its analytic gradient for autograd (first derivatives only)."""

    @staticmethod
    def forward(ctx, positions, box, term):
        energy, _, grad = term.evaluate(positions.detach(), None if box is None else box.detach(), with_gradient=True)
        ctx.save_for_backward(grad)
        return energy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_energy):
        (grad,) = ctx.saved_tensors
        return grad_energy.view(-1, 1, 1) * grad, None, None
