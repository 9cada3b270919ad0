"""`InternalCoordinateTransform`: normalised internal coordinates <-> Cartesian positions.

Directions (the `Flow` contract, with different input and output dimensions):

- ``forward(u)``: ``u`` ``[B, 3N - 6]`` normalised internal coordinates (the flow/prior space,
  the unit box) -> ``x`` ``[B, 3N]`` Cartesian positions in nm, atom-major
  (``x[:, 3 * k + d]`` is coordinate d of atom k), in the canonical frame: root atom r0 at the
  origin, r1 on the +x axis, r2 in the xy-plane with y > 0. Atoms are placed by NeRF.
- ``inverse(x)``: ``x`` ``[B, 3N]`` in any position and orientation -> ``u`` ``[B, 3N - 6]``;
  internal coordinates are invariant under rigid motions, which are thereby removed.

Internal-coordinate layout ``[bonds | angles | torsions]`` of sizes ``N - 1``, ``N - 2``,
``N - 3`` (see `boltzgen.flows.zmatrix` for the atoms of each entry): `bond_indices`,
`angle_indices`, `torsion_indices` index it; `circular_mask` (``[3N - 6]`` bool) is True on the
torsions, which are periodic.

Normalisation, coordinate-wise affine ``u = (q - low) / (high - low)`` with buffers `ic_low`,
`ic_high` (``[3N - 6]``):

- torsions: ``low = -pi``, ``high = pi``, wrapped to ``[0, 1)``; any real ``u`` is accepted
  in the forward direction (periodic, period 1);
- bonds (nm) and angles (rad): an interval per coordinate, fitted from data with
  `fit_normalization` or set with `set_normalization` (or the constructor). Using the transform
  before that raises ``RuntimeError``.

Outside the box: ``inverse`` never clips. A bond or angle outside its interval maps to ``u``
outside ``[0, 1]``, where a prior on the unit box has zero density, so ``log q(x) = -inf`` for
that sample: the caller sees it and counts it (`out_of_bounds` flags such rows). ``forward`` with
``u`` outside ``[0, 1]`` applies the affine map's extension: it stays a smooth map with the
stated log-det as long as bonds stay positive and angles in ``(0, pi)``, but it is no longer the
inverse of ``inverse`` there.

Log-determinant: for the map ``u -> x`` on the canonical frame, completed by the 6 global
degrees of freedom (translation, and a rotation with Haar measure ``sin(beta) d alpha d beta
d gamma`` in ZYZ Euler angles), ``|det| = prod_bonds b^2 * prod_angles sin(theta) *
prod_coordinates (high - low)``: atom r1 contributes ``b1^2``, atom r2 ``b2^2 sin(theta2)``
and every other atom ``b^2 sin(theta)``. ``forward`` returns its log, ``inverse`` minus it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from boltzgen.flows.base import Flow
from boltzgen.flows.zmatrix import ZMatrix
from boltzgen.geometry import bond_angle, bond_length, dihedral_angle, place_atom

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

DEFAULT_MARGIN_STD = 5.0
"""`fit_normalization` widens the data range by this many data standard deviations per side."""
MIN_BOND_MARGIN_NM = 0.005
"""Smallest widening of a bond interval (nm), for data with (almost) no spread."""
MIN_ANGLE_MARGIN_RAD = 0.05
"""Smallest widening of an angle interval (rad)."""
ANGLE_BOUNDARY_RAD = 1e-3
"""Fitted angle intervals stay inside ``[ANGLE_BOUNDARY_RAD, pi - ANGLE_BOUNDARY_RAD]``."""


class InternalCoordinateTransform(Flow):
    """Normalised internal coordinates ``[B, 3N - 6]`` <-> Cartesian ``[B, 3N]`` (nm), exact log-det.

    Args:
        zmatrix: the `ZMatrix` (e.g. ``ZMatrix.from_topology(system.mdtraj_topology)``).
        bond_interval: optional ``[N - 1, 2]`` (low, high) per bond in nm (broadcastable).
        angle_interval: optional ``[N - 2, 2]`` (low, high) per angle in rad (broadcastable).
            Give both or neither; without them call `fit_normalization` before use.

    Attributes:
        zmatrix, n_atoms: the molecule; ``dim_internal = 3N - 6``, ``dim_cartesian = 3N``.
        bond_indices ``[N - 1]``, angle_indices ``[N - 2]``, torsion_indices ``[N - 3]``: long
            positions of each kind in the internal-coordinate vector.
        circular_mask: ``[3N - 6]`` bool, True on the torsions (periodic with period 1 in u).
        ic_low, ic_high: ``[3N - 6]`` normalisation intervals (nm / rad), saved in ``state_dict``.

    Computations run in the input's dtype (float32 or float64). ``context`` is accepted and
    ignored. Example::

        zmatrix = ZMatrix.from_topology(system.mdtraj_topology)
        ic = InternalCoordinateTransform(zmatrix).fit_normalization(x_md)   # x_md [B, 3N] nm
        u, logdet = ic.inverse(x_md)          # [B, 3N - 6] in [0, 1], [B]
        x, logdet = ic(u)                     # [B, 3N] canonical frame, [B]
        phi = ic.torsion_coordinate_index(phi_atoms)   # column of phi in u
    """

    def __init__(
        self,
        zmatrix: ZMatrix,
        bond_interval: Optional[ArrayLike] = None,
        angle_interval: Optional[ArrayLike] = None,
    ):
        super().__init__()
        if not isinstance(zmatrix, ZMatrix):
            raise TypeError(f"zmatrix must be a ZMatrix, got {type(zmatrix).__name__}")
        self.zmatrix = zmatrix
        self.n_atoms = zmatrix.n_atoms
        n = self.n_atoms
        self.dim_internal = 3 * n - 6
        self.dim_cartesian = 3 * n

        self.register_buffer("bond_indices", torch.arange(0, n - 1), persistent=False)
        self.register_buffer("angle_indices", torch.arange(n - 1, 2 * n - 3), persistent=False)
        self.register_buffer("torsion_indices", torch.arange(2 * n - 3, 3 * n - 6), persistent=False)
        circular = torch.zeros(self.dim_internal, dtype=torch.bool)
        circular[2 * n - 3 :] = True
        self.register_buffer("circular_mask", circular, persistent=False)

        self.register_buffer("_bond_atoms", torch.as_tensor(zmatrix.bond_atoms), persistent=False)
        self.register_buffer("_angle_atoms", torch.as_tensor(zmatrix.angle_atoms), persistent=False)
        self.register_buffer("_torsion_atoms", torch.as_tensor(zmatrix.torsion_atoms), persistent=False)
        self.register_buffer("_root", torch.as_tensor(zmatrix.root, dtype=torch.long), persistent=False)
        self._n_generations = 0
        for generation in _placement_generations(zmatrix):
            self.register_buffer(
                f"_generation_{self._n_generations}", torch.as_tensor(generation), persistent=False
            )
            self._n_generations += 1

        low = torch.full((self.dim_internal,), math.nan)
        high = torch.full((self.dim_internal,), math.nan)
        low[circular] = -math.pi
        high[circular] = math.pi
        self.register_buffer("ic_low", low)
        self.register_buffer("ic_high", high)
        self._normalization_set = False
        self.register_load_state_dict_post_hook(_refresh_normalization_flag)

        if (bond_interval is None) != (angle_interval is None):
            raise ValueError("give both bond_interval and angle_interval, or neither")
        if bond_interval is not None:
            self.set_normalization(bond_interval, angle_interval)

    # ---------------------------------------------------------------- normalisation
    @property
    def normalization_set(self) -> bool:
        """Whether the bond and angle intervals are set (by data fit, constructor or setter)."""
        return self._normalization_set

    def set_normalization(
        self, bond_interval: ArrayLike, angle_interval: ArrayLike
    ) -> "InternalCoordinateTransform":
        """Set the intervals: bonds ``[N - 1, 2]`` nm with ``0 < low < high``; angles
        ``[N - 2, 2]`` rad with ``0 <= low < high <= pi`` (both broadcastable). Returns ``self``."""
        n = self.n_atoms
        bonds = _interval_table(bond_interval, n - 1, "bond_interval")
        angles = _interval_table(angle_interval, n - 2, "angle_interval")
        if not bool((bonds[:, 0] > 0).all()):
            raise ValueError("bond_interval lows must be > 0 nm")
        if not bool(((angles[:, 0] >= 0) & (angles[:, 1] <= math.pi)).all()):
            raise ValueError("angle_interval must lie within [0, pi] rad")
        with torch.no_grad():
            for table, index in ((bonds, self.bond_indices), (angles, self.angle_indices)):
                self.ic_low[index] = table[:, 0].to(self.ic_low)
                self.ic_high[index] = table[:, 1].to(self.ic_high)
        self._normalization_set = True
        return self

    def fit_normalization(
        self, x: ArrayLike, margin: float = DEFAULT_MARGIN_STD
    ) -> "InternalCoordinateTransform":
        """Fit bond and angle intervals to Cartesian data ``x`` ``[B, 3N]`` or ``[B, N, 3]`` (nm).

        Each interval is the data range widened on both sides by ``margin`` data standard
        deviations (at least `MIN_BOND_MARGIN_NM` / `MIN_ANGLE_MARGIN_RAD`), so that held-out
        frames and flow samples fall inside; bond lows stay above half the smallest observed bond
        and angles inside ``[ANGLE_BOUNDARY_RAD, pi - ANGLE_BOUNDARY_RAD]``. Returns ``self``.
        Raises ``ValueError`` for non-finite data or angles outside that range (near-linear).
        """
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        positions = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        positions = positions.to(device=self.ic_low.device, dtype=torch.float64)
        positions = positions.reshape(positions.shape[0], -1) if positions.ndim == 3 else positions
        self._check_cartesian(positions)
        if positions.shape[0] == 0 or not bool(torch.isfinite(positions).all()):
            raise ValueError("fit_normalization needs at least one frame and finite positions")
        ic = self.physical_internal_coordinates(positions)

        def widened(values: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
            spread = (margin * values.std(dim=0, correction=0)).clamp_min(floor)
            return values.min(dim=0).values - spread, values.max(dim=0).values + spread

        bonds = ic[:, self.bond_indices]
        bond_low, bond_high = widened(bonds, MIN_BOND_MARGIN_NM)
        bond_low = torch.maximum(bond_low, 0.5 * bonds.min(dim=0).values)
        angles = ic[:, self.angle_indices]
        angle_low, angle_high = widened(angles, MIN_ANGLE_MARGIN_RAD)
        angle_low = angle_low.clamp_min(ANGLE_BOUNDARY_RAD)
        angle_high = angle_high.clamp_max(math.pi - ANGLE_BOUNDARY_RAD)
        bad = torch.nonzero((angles.min(dim=0).values < angle_low) | (angles.max(dim=0).values > angle_high))
        if len(bad):
            triples = self.zmatrix.angle_atoms[bad[:, 0].cpu().numpy()].tolist()
            raise ValueError(
                f"angles over atoms {triples} come within {ANGLE_BOUNDARY_RAD} rad of 0 or pi in the "
                "data: a Z-matrix with (nearly) linear reference angles cannot represent them"
            )
        return self.set_normalization(
            torch.stack([bond_low, bond_high], -1), torch.stack([angle_low, angle_high], -1)
        )

    def out_of_bounds(self, u: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: True where a bond or angle of ``u`` ``[B, 3N - 6]`` lies outside ``[0, 1]``
        or any coordinate is not finite (such samples have zero density under a unit-box prior)."""
        interval_part = u[:, ~self.circular_mask]
        outside = ((interval_part < 0) | (interval_part > 1)).any(dim=-1)
        return outside | ~torch.isfinite(u).all(dim=-1)

    # ---------------------------------------------------------------- lookup
    def torsion_coordinate_index(self, atoms: Sequence[int]) -> int:
        """Position in the internal-coordinate vector of the torsion over ``atoms`` (either
        direction), e.g. phi of alanine dipeptide; ``ValueError`` if there is none."""
        return int(self.torsion_indices[self.zmatrix.find_torsion(atoms)])

    def physical_internal_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Cartesian ``[B, 3N]`` nm -> internal coordinates ``[B, 3N - 6]`` in the IC layout:
        bonds in nm, angles in rad ``[0, pi]``, torsions in rad ``[-pi, pi]`` (not normalised)."""
        self._check_cartesian(x)
        positions = x.reshape(x.shape[0], self.n_atoms, 3)

        def atoms(table: torch.Tensor, column: int) -> torch.Tensor:
            return positions[:, table[:, column]]

        bonds = bond_length(atoms(self._bond_atoms, 0), atoms(self._bond_atoms, 1))
        angles = bond_angle(*(atoms(self._angle_atoms, k) for k in range(3)))
        torsions = dihedral_angle(*(atoms(self._torsion_atoms, k) for k in range(4)))
        return torch.cat([bonds, angles, torsions], dim=-1)

    # ---------------------------------------------------------------- the flow
    def _forward(self, u, context=None):
        self._check_ready()
        self._check_internal(u)
        low, width = self._low_and_width(u.dtype)
        ic = low + width * u
        bonds = ic[:, self.bond_indices]
        angles = ic[:, self.angle_indices]
        torsions = ic[:, self.torsion_indices]

        batch = u.shape[0]
        positions = u.new_zeros(batch, self.n_atoms, 3)  # root atom r0 stays at the origin
        zero = u.new_zeros(batch)
        r1 = torch.stack([bonds[:, 0], zero, zero], dim=-1)
        r2_x = bonds[:, 0] - bonds[:, 1] * torch.cos(angles[:, 0])
        r2_y = bonds[:, 1] * torch.sin(angles[:, 0])
        r2 = torch.stack([r2_x, r2_y, zero], dim=-1)
        positions = positions.index_copy(1, self._root[1:], torch.stack([r1, r2], dim=1))
        for k in range(self._n_generations):
            row, atom, a, b, c = getattr(self, f"_generation_{k}")
            placed = place_atom(
                positions[:, a], positions[:, b], positions[:, c],
                bonds[:, row + 2], angles[:, row + 1], torsions[:, row],
            )
            positions = positions.index_copy(1, atom, placed)
        logdet = self._log_volume(bonds, angles, width)
        return positions.reshape(batch, self.dim_cartesian), logdet

    def _inverse(self, x, context=None):
        self._check_ready()
        ic = self.physical_internal_coordinates(x)
        low, width = self._low_and_width(x.dtype)
        u = (ic - low) / width
        u = torch.where(self.circular_mask & (u >= 1), u - 1, u)
        logdet = -self._log_volume(ic[:, self.bond_indices], ic[:, self.angle_indices], width)
        return u, logdet

    # ---------------------------------------------------------------- helpers
    def _low_and_width(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[3N - 6]`` lows and widths in ``dtype``; torsions use -pi and 2 pi at full precision
        (not the buffers, which may be float32) so that the period is exact in float64."""
        low = self.ic_low.to(dtype)
        width = self.ic_high.to(dtype) - low
        low = torch.where(self.circular_mask, -math.pi, low)
        width = torch.where(self.circular_mask, 2 * math.pi, width)
        return low, width

    @staticmethod
    def _log_volume(bonds: torch.Tensor, angles: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """``[B]`` log of ``prod b^2 * prod |sin theta| * prod width``."""
        return (
            2.0 * torch.log(bonds.abs()).sum(-1)
            + torch.log(torch.sin(angles).abs()).sum(-1)
            + torch.log(width).sum()
        )

    def _check_ready(self) -> None:
        if not self._normalization_set:
            raise RuntimeError(
                "InternalCoordinateTransform has no bond/angle intervals yet: call "
                "fit_normalization(x_data) or set_normalization(bond_interval, angle_interval)"
            )

    def _check_internal(self, u: torch.Tensor) -> None:
        if u.ndim != 2 or u.shape[1] != self.dim_internal:
            raise ValueError(
                f"expected normalised internal coordinates of shape [B, {self.dim_internal}] "
                f"(3N - 6 for N = {self.n_atoms} atoms), got {tuple(u.shape)}"
            )

    def _check_cartesian(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim_cartesian:
            raise ValueError(
                f"expected Cartesian positions of shape [B, {self.dim_cartesian}] "
                f"(3N for N = {self.n_atoms} atoms, nm), got {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"n_atoms={self.n_atoms}, dim_internal={self.dim_internal}, "
            f"normalization_set={self._normalization_set}"
        )


def _refresh_normalization_flag(module: InternalCoordinateTransform, incompatible_keys) -> None:
    finite = torch.isfinite(module.ic_low).all() & torch.isfinite(module.ic_high).all()
    module._normalization_set = bool(finite)


def _interval_table(interval: ArrayLike, count: int, name: str) -> torch.Tensor:
    table = torch.as_tensor(
        interval.detach().cpu().numpy() if isinstance(interval, torch.Tensor) else np.asarray(interval),
        dtype=torch.float64,
    )
    try:
        table = torch.broadcast_to(table, (count, 2))
    except RuntimeError:
        raise ValueError(f"{name} must be broadcastable to [{count}, 2], got {tuple(table.shape)}") from None
    if not bool(torch.isfinite(table).all()) or not bool((table[:, 0] < table[:, 1]).all()):
        raise ValueError(f"{name} needs finite (low, high) pairs with low < high")
    return table


def _placement_generations(zmatrix: ZMatrix) -> list[np.ndarray]:
    """Rows grouped so that each group's references are placed by earlier groups.

    Returns a list of ``[5, k]`` int64 arrays (row number, i, a, b, c), one per generation, in
    placement order: all atoms of a generation are placed by one vectorised NeRF call.
    """
    depth = {atom: 0 for atom in zmatrix.root}
    row_depth = []
    for i, a, b, c in zmatrix.rows.tolist():
        depth[i] = 1 + max(depth[a], depth[b], depth[c])
        row_depth.append(depth[i])
    row_depth = np.asarray(row_depth, dtype=np.int64)
    generations = []
    for level in np.unique(row_depth):
        rows = np.flatnonzero(row_depth == level)
        generations.append(np.concatenate([rows[None], zmatrix.rows[rows].T]).astype(np.int64))
    return generations
