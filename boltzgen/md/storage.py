"""On-disk format of a reference-MD run (``boltzgen md ... --out DIR``) and its loader.

Files in ``DIR`` (format version 1)::

    trajectory.npz     the data, one uncompressed numpy archive (``np.load(DIR/"trajectory.npz")``):
        positions          [R, F, N, 3] float32  nm
        forces             [R, F, N, 3] float32  kJ/mol/nm, of exactly the stored float32 positions
        potential_energy   [R, F]       float64  kJ/mol,    of exactly the stored float32 positions
        reduced_energy     [R, F]       float64  kT,        potential_energy / (k_B T)
        time_ps            [F]          float64  ps of production after the warm-up (1, 2, ..., F)
        metadata           []           str      the contents of metadata.json
    metadata.json      how the data was made (units in key names): system, description,
                       forcefield_files, n_atoms, start_structure (source, file, path, sha256 of
                       a --start file), temperature_K, integrator, timestep_fs,
                       friction_per_ps, frame_interval_ps, warmup_steps, minimisation, seed and
                       replica_seeds (integrator_seed, velocity_seed per replica), platform,
                       versions (boltzgen, openmm, torch, numpy, mdtraj, python), dates (UTC)
    topology.pdb       the starting structure (--start, or the system's): topology for viewers and mdtraj
    replica_000.dcd    one DCD per replica (Angstrom, as DCD requires):
                       ``mdtraj.load("DIR/replica_000.dcd", top="DIR/topology.pdb")``
    system.xml         the simulated ``openmm.System`` (``openmm.XmlSerializer``)
    summary.json       frame counts, speed, phi > 0 basin populations (see boltzgen.md.summary)
    run.json           the run's settings (`MDConfig`) and the metadata known at the start
    sessions.json      wall time and worker processes of each session (see boltzgen.md.sessions)
    .lock              flock'ed by the process writing into DIR

R replicas, F frames per replica, N atoms. Frame ``f`` of every replica is taken ``time_ps[f]``
after the warm-up. While the run is in progress, ``DIR/replicas/rNNN/`` holds each replica's
committed chunks and checkpoint (see `boltzgen.md.replica_store`); ``trajectory.npz``, the DCDs
and ``summary.json`` appear when all replicas are done, and the work areas are then removed.
Every file is written atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from boltzgen.io import atomic_path, write_json_atomic, write_npz_streamed
from boltzgen.md.replica_store import ReplicaStore

FORMAT_NAME = "boltzgen-md-trajectory"
FORMAT_VERSION = 1


class RunDirectory:
    """Paths of the files of one MD run in ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    run_json = property(lambda self: self.root / "run.json")
    system_xml = property(lambda self: self.root / "system.xml")
    topology_pdb = property(lambda self: self.root / "topology.pdb")
    trajectory_npz = property(lambda self: self.root / "trajectory.npz")
    metadata_json = property(lambda self: self.root / "metadata.json")
    summary_json = property(lambda self: self.root / "summary.json")
    sessions_json = property(lambda self: self.root / "sessions.json")
    lock_file = property(lambda self: self.root / ".lock")
    replicas_dir = property(lambda self: self.root / "replicas")

    def dcd(self, replica: int) -> Path:
        return self.root / f"replica_{replica:03d}.dcd"

    def replica_store(self, replica: int) -> ReplicaStore:
        return ReplicaStore(self.replicas_dir / f"r{replica:03d}")

    def is_finished(self) -> bool:
        """True once the merged data and the summary (written last) exist."""
        return self.trajectory_npz.exists() and self.summary_json.exists()


def write_topology_pdb(path: Path, topology, positions_nm: np.ndarray) -> None:
    """Write ``topology`` (OpenMM) with ``positions_nm`` ([N, 3] nm) as a PDB file, atomically."""
    from openmm import app, unit

    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        app.PDBFile.writeFile(topology, np.asarray(positions_nm) * unit.nanometer, handle, keepIds=True)


def write_merged(
    run: RunDirectory,
    n_replicas: int,
    n_frames: int,
    n_atoms: int,
    time_ps: np.ndarray,
    kt_kj_per_mol: float,
    metadata: dict[str, Any],
) -> None:
    """Merge the replicas' committed chunks into ``trajectory.npz``, ``metadata.json`` and the DCDs.

    Streams chunk by chunk (memory independent of the run length); the work areas are kept.
    """
    stores = [run.replica_store(r) for r in range(n_replicas)]

    def pieces(name: str, kt_divisor: float = 1.0) -> Iterator[np.ndarray]:
        for store in stores:
            for chunk in store.iter_frames(name):
                yield chunk / kt_divisor if kt_divisor != 1.0 else chunk

    metadata_text = json.dumps(metadata, indent=2)
    frames3 = (n_replicas, n_frames, n_atoms, 3)
    write_npz_streamed(
        run.trajectory_npz,
        {
            "positions": (frames3, np.float32, pieces("positions")),
            "forces": (frames3, np.float32, pieces("forces")),
            "potential_energy": ((n_replicas, n_frames), np.float64, pieces("potential_energy")),
            "reduced_energy": ((n_replicas, n_frames), np.float64, pieces("potential_energy", kt_kj_per_mol)),
            "time_ps": ((n_frames,), np.float64, [np.asarray(time_ps, dtype=np.float64)]),
            "metadata": ((), np.dtype(f"<U{max(len(metadata_text), 1)}"), [np.array(metadata_text)]),
        },
    )
    write_json_atomic(run.metadata_json, metadata)
    for replica, store in enumerate(stores):
        write_dcd(run.dcd(replica), store.iter_frames("positions"))


def write_dcd(path: Path, positions_nm: Iterator[np.ndarray]) -> None:
    """Write position chunks (each [n, N, 3] nm) as one DCD file (Angstrom), atomically."""
    from mdtraj.formats import DCDTrajectoryFile

    with atomic_path(path) as tmp:
        with DCDTrajectoryFile(str(tmp), "w", force_overwrite=True) as dcd:
            for chunk in positions_nm:
                dcd.write(np.asarray(chunk, dtype=np.float32) * np.float32(10.0))


def remove_work_areas(run: RunDirectory) -> None:
    """Delete ``DIR/replicas`` (after a successful merge)."""
    shutil.rmtree(run.replicas_dir, ignore_errors=True)


@dataclass
class MDTrajectory:
    """Reference-MD data loaded from a run directory (shapes and units as in the module docstring).

    Attributes:
        positions: [R, F, N, 3] float32 nm.
        forces: [R, F, N, 3] float32 kJ/mol/nm.
        potential_energy: [R, F] float64 kJ/mol.
        reduced_energy: [R, F] float64 kT.
        time_ps: [F] float64 ps.
        metadata: the run's metadata (``metadata.json``).
        directory: where it was loaded from.
    """

    positions: np.ndarray
    forces: np.ndarray
    potential_energy: np.ndarray
    reduced_energy: np.ndarray
    time_ps: np.ndarray
    metadata: dict[str, Any]
    directory: Path

    @property
    def n_replicas(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_frames(self) -> int:
        """Frames per replica."""
        return int(self.positions.shape[1])

    def mdtraj(self, replicas: int | Sequence[int] | None = None):
        """An ``mdtraj.Trajectory`` of one replica, several (concatenated) or all (``None``)."""
        import mdtraj

        topology = mdtraj.load_topology(str(self.directory / "topology.pdb"))
        if replicas is None:
            replicas = range(self.n_replicas)
        elif isinstance(replicas, (int, np.integer)):
            replicas = [int(replicas)]
        xyz = np.concatenate([self.positions[r] for r in replicas], axis=0)
        time = np.concatenate([self.time_ps for _ in replicas])
        return mdtraj.Trajectory(xyz, topology, time=time)


def load_trajectory(directory: str | Path) -> MDTrajectory:
    """Load the data of a finished ``boltzgen md`` run from ``directory``.

    Raises FileNotFoundError (with a hint) if the run is missing or not finished yet.
    """
    run = RunDirectory(directory)
    if not run.trajectory_npz.exists():
        hint = (
            "the run is not finished; run the same `boltzgen md` command again to resume it"
            if run.run_json.exists()
            else "no `boltzgen md` output there"
        )
        raise FileNotFoundError(f"{run.trajectory_npz} does not exist: {hint}")
    with np.load(run.trajectory_npz) as data:
        metadata = json.loads(str(data["metadata"]))
        if metadata.get("format") != FORMAT_NAME or metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{run.trajectory_npz} has format {metadata.get('format')!r} version "
                f"{metadata.get('format_version')!r}; this boltzgen reads {FORMAT_NAME!r} version {FORMAT_VERSION}"
            )
        return MDTrajectory(
            positions=data["positions"],
            forces=data["forces"],
            potential_energy=data["potential_energy"],
            reduced_energy=data["reduced_energy"],
            time_ps=data["time_ps"],
            metadata=metadata,
            directory=run.root,
        )
