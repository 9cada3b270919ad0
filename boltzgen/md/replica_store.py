"""The work area of one running replica: frame chunks, an OpenMM checkpoint and a commit record.

Layout of ``DIR/replicas/rNNN/`` while a run is in progress (removed once the run is merged)::

    frames_<start>_<end>.npz   frames start..end-1 (8-digit numbers, end exclusive):
                               positions [n, N, 3] float32 nm, forces [n, N, 3] float32 kJ/mol/nm,
                               potential_energy [n] float64 kJ/mol (of the float32 positions)
    checkpoint_<frames>.chk    OpenMM Context checkpoint (positions, velocities, RNG state) taken
                               right after frame ``frames`` (0: after minimisation and warm-up)
    state.json                 the commit record: {"frames_done", "checkpoint", timings}
    lock                       flock'ed while a process works on this replica

Every file is written atomically, in the order chunk -> checkpoint -> state.json. ``state.json`` is
the commit point: on recovery, chunks past ``frames_done`` and checkpoints other than the one it
names are leftovers of an interrupted write and are deleted, so a replica killed at any moment
resumes exactly after its last committed frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from boltzgen.errors import BoltzgenError
from boltzgen.io import exclusive_lock, read_json, save_npz_atomic, write_bytes_atomic, write_json_atomic

_CHUNK_PATTERN = re.compile(r"^frames_(\d{8})_(\d{8})\.npz$")
_CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{8})\.chk$")

#: Arrays in every chunk file.
CHUNK_ARRAYS = ("positions", "forces", "potential_energy")


@dataclass
class ReplicaProgress:
    """Committed state of a replica.

    Attributes:
        frames_done: frames saved and committed (``None``: warm-up not finished yet).
        checkpoint: OpenMM checkpoint bytes of the state after the last committed frame, or None.
        checkpoint_name: its file name in the work area.
        production_wall_s: seconds spent in production steps (all sessions, committed work).
        production_steps: production integrator steps done (committed work).
    """

    frames_done: int | None = None
    checkpoint: bytes | None = None
    checkpoint_name: str | None = None
    production_wall_s: float = 0.0
    production_steps: int = 0


class ReplicaStore:
    """Chunks, checkpoint and commit record of one replica in ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    def lock(self, timeout_s: float = 10.0):
        """Context manager holding this replica's lock (raises BoltzgenError if another process has it)."""
        return exclusive_lock(self.directory / "lock", timeout_s=timeout_s, what=f"replica work area {self.directory}")

    def chunk_files(self) -> list[tuple[int, int, Path]]:
        """``(start, end, path)`` of the chunk files present, sorted by start frame."""
        if not self.directory.is_dir():
            return []
        chunks = []
        for path in self.directory.iterdir():
            match = _CHUNK_PATTERN.match(path.name)
            if match:
                chunks.append((int(match.group(1)), int(match.group(2)), path))
        return sorted(chunks)

    def read_progress(self, with_checkpoint: bool = True) -> ReplicaProgress:
        """The committed state (no ``state.json`` yet -> nothing committed).

        ``with_checkpoint=False`` skips reading the checkpoint, which is safe without holding the
        lock (``state.json`` is replaced atomically, checkpoints are deleted after a commit).
        """
        if not self.state_path.exists():
            return ReplicaProgress()
        state = read_json(self.state_path)
        checkpoint = None
        if with_checkpoint:
            checkpoint_path = self.directory / state["checkpoint"]
            if not checkpoint_path.exists():
                raise BoltzgenError(f"{self.state_path} names {checkpoint_path.name}, which is missing")
            checkpoint = checkpoint_path.read_bytes()
        return ReplicaProgress(
            frames_done=int(state["frames_done"]),
            checkpoint=checkpoint,
            checkpoint_name=state["checkpoint"],
            production_wall_s=float(state.get("production_wall_s", 0.0)),
            production_steps=int(state.get("production_steps", 0)),
        )

    def recover(self) -> ReplicaProgress:
        """Read the committed state and delete files of uncommitted work; check the chunks.

        Raises BoltzgenError if the committed chunks do not cover frames ``0 .. frames_done-1``
        contiguously (a damaged work area).
        """
        progress = self.read_progress()
        frames_done = progress.frames_done or 0
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                is_stale_checkpoint = _CHECKPOINT_PATTERN.match(path.name) and path.name != progress.checkpoint_name
                is_temporary = path.name.startswith(".") and ".tmp" in path.name
                if is_stale_checkpoint or is_temporary:
                    path.unlink(missing_ok=True)
        expected_start = 0
        for start, end, path in self.chunk_files():
            if start >= frames_done:
                path.unlink()
                continue
            if start != expected_start or end > frames_done:
                raise BoltzgenError(
                    f"damaged replica work area {self.directory}: chunk {path.name} does not continue "
                    f"frame {expected_start} (committed frames: {frames_done}); delete the directory to restart"
                )
            expected_start = end
        if expected_start != frames_done:
            raise BoltzgenError(
                f"damaged replica work area {self.directory}: chunks cover {expected_start} frames, "
                f"state.json records {frames_done}; delete the directory to restart"
            )
        return progress

    def write_chunk(self, start: int, positions: np.ndarray, forces: np.ndarray, potential_energy: np.ndarray) -> None:
        """Atomically write frames ``start .. start+n-1`` (positions/forces [n, N, 3], energies [n])."""
        end = start + len(positions)
        save_npz_atomic(
            self.directory / f"frames_{start:08d}_{end:08d}.npz",
            positions=np.asarray(positions, dtype=np.float32),
            forces=np.asarray(forces, dtype=np.float32),
            potential_energy=np.asarray(potential_energy, dtype=np.float64),
        )

    def commit(self, frames_done: int, checkpoint: bytes, production_wall_s: float, production_steps: int) -> None:
        """Record ``frames_done`` frames with the checkpoint after the last of them (atomic, in order)."""
        previous = read_json(self.state_path)["checkpoint"] if self.state_path.exists() else None
        name = f"checkpoint_{frames_done:08d}.chk"
        write_bytes_atomic(self.directory / name, checkpoint)
        write_json_atomic(
            self.state_path,
            {
                "frames_done": int(frames_done),
                "checkpoint": name,
                "production_wall_s": float(production_wall_s),
                "production_steps": int(production_steps),
            },
        )
        if previous is not None and previous != name:
            (self.directory / previous).unlink(missing_ok=True)

    def iter_frames(self, name: str) -> Iterator[np.ndarray]:
        """Yield array ``name`` (one of :data:`CHUNK_ARRAYS`) chunk by chunk, in frame order."""
        for _, _, path in self.chunk_files():
            with np.load(path) as chunk:
                yield chunk[name]
