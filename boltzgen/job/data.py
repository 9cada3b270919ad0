"""Training and reference data of the job: the shipped reference set or a `boltzgen md` run.

Frames are split by contiguous blocks (seeded) into a training set (at most ``max_train_frames``)
and a held-out set used for the validation NLL and as the reference ensemble of the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from boltzgen.equivalent_hydrogens import (
    HydrogenGroup,
    apply_hydrogen_permutation,
    count_relabelled_frames,
    hydrogen_permutations,
)
from boltzgen.units import kt_kj_per_mol


@dataclass(frozen=True)
class MolecularData:
    """Configurations with their energies.

    Attributes:
        positions: ``[F, 3N]`` float32, nm.
        reduced_energy: ``[F]`` float64, kT.
        source: where the frames came from (for summary.json).
        forces: ``[F, 3N]`` float32 target forces ``-du/dx`` in kT/nm, or None.
    """

    positions: np.ndarray
    reduced_energy: np.ndarray
    source: str
    forces: Optional[np.ndarray] = None

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    def subset(self, index: np.ndarray) -> "MolecularData":
        forces = None if self.forces is None else self.forces[index]
        return MolecularData(self.positions[index], self.reduced_energy[index], self.source, forces)

    def with_canonical_hydrogens(
        self, groups: list[HydrogenGroup], reference: np.ndarray | None = None
    ) -> tuple["MolecularData", int]:
        """The frames with each group of equivalent hydrogens in its canonical labelling (the
        orientation of ``reference`` ``[N, 3]`` nm when given; positions and forces permuted alike;
        see `boltzgen.equivalent_hydrogens`), and the number of frames that changed."""
        permutation = hydrogen_permutations(self.positions, groups, reference)  # [F, N]
        changed = count_relabelled_frames(permutation)
        positions = apply_hydrogen_permutation(self.positions, permutation)
        forces = None if self.forces is None else apply_hydrogen_permutation(self.forces, permutation)
        return MolecularData(positions, self.reduced_energy, self.source, forces), changed


def load_data(system_name: str, n_atoms: int, data_dir: Optional[str | Path] = None) -> MolecularData:
    """Frames of ``system_name``: from ``data_dir`` (a `boltzgen md` output) or the shipped reference.

    Raises ValueError naming the problem when the data do not belong to the system.
    """
    if data_dir is not None:
        from boltzgen.md import load_trajectory

        trajectory = load_trajectory(data_dir)
        positions = np.asarray(trajectory.positions, dtype=np.float32)
        if positions.shape[-2] != n_atoms:
            raise ValueError(f"{data_dir} holds {positions.shape[-2]} atoms, {system_name} has {n_atoms}")
        system_in_file = trajectory.metadata.get("system")
        if system_in_file not in (None, system_name):
            raise ValueError(f"{data_dir} was simulated for system {system_in_file!r}, not {system_name!r}")
        kt = kt_kj_per_mol(float(trajectory.metadata["temperature_K"]))
        forces = np.asarray(trajectory.forces, dtype=np.float64).reshape(-1, 3 * n_atoms) / kt
        return MolecularData(
            positions.reshape(-1, 3 * n_atoms),
            np.asarray(trajectory.reduced_energy, dtype=np.float64).reshape(-1),
            f"boltzgen md run in {Path(data_dir)}",
            forces.astype(np.float32),
        )
    from boltzgen.systems import reference_data

    reference = reference_data(system_name)
    return MolecularData(
        np.asarray(reference.positions_flat(), dtype=np.float32),
        np.asarray(reference.reduced_energy, dtype=np.float64),
        f"shipped reference data of {system_name}",
        reference.forces_flat_kT_per_nm(),
    )


#: Frames per contiguous block of the train / held-out split (the shipped data: 1 ps per frame).
SPLIT_BLOCK_FRAMES = 200
#: Fraction of the frames held out.
HELD_OUT_FRACTION = 0.2


def split_frames(
    n_frames: int, max_train_frames: int, seed: int, block_frames: int = SPLIT_BLOCK_FRAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out split by contiguous blocks of frames.

    Frames of MD data are stored in time order, and neighbouring frames are nearly copies of each
    other; a frame-by-frame random split would hold out near-duplicates of training frames and
    flatter every held-out number. So the frames are cut into consecutive blocks of
    ``block_frames`` (at least 50 blocks: smaller blocks for small data sets), a random 20% of the
    blocks (at least one) is held out, and at most ``max_train_frames`` of the remaining frames
    (a random subset) are used for training. Returns sorted index arrays ``(train, held_out)``.
    """
    if n_frames < 10:
        raise ValueError(f"need at least 10 frames of data, got {n_frames}")
    block_frames = max(1, min(int(block_frames), n_frames // 50))
    n_blocks = -(-n_frames // block_frames)
    rng = np.random.default_rng(seed)
    n_held_out_blocks = max(1, round(HELD_OUT_FRACTION * n_blocks))
    held_out_blocks = rng.permutation(n_blocks)[:n_held_out_blocks]
    is_held_out = np.isin(np.arange(n_frames) // block_frames, held_out_blocks)
    held_out, train = np.flatnonzero(is_held_out), np.flatnonzero(~is_held_out)
    if len(train) > max_train_frames:
        train = np.sort(rng.choice(train, size=max_train_frames, replace=False))
    return train, held_out
