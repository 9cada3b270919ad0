"""Starting structures read from a file (``boltzgen md ... --start FILE``), checked against the system.

The file is anything mdtraj reads that holds exactly one frame: a PDB (or another format with its
own topology: the atoms must have the system's elements and names, in the system's order) or a
coordinate-only format such as DCD or XYZ (read with the system's topology: only the atom count
can be checked). Its SHA-256 identifies the start in the run's settings, so a different start into
an existing output directory is refused like any other changed setting.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StartStructure:
    """Starting positions from a file.

    Attributes:
        path: the file, absolute.
        sha256: SHA-256 of the file's bytes (hex).
        positions_nm: ``[N, 3]`` float64, nm.
    """

    path: Path
    sha256: str
    positions_nm: np.ndarray

    def to_metadata(self) -> dict[str, Any]:
        """What ``metadata.json`` records about the start: file name, path and hash."""
        return {"source": "file", "file": self.path.name, "path": str(self.path), "sha256": self.sha256}


#: Metadata of a run that starts from the system's own positions.
SYSTEM_START_METADATA: dict[str, Any] = {"source": "system", "file": None, "path": None, "sha256": None}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_single_frame(path: Path, system_topology):
    """The file as an ``mdtraj.Trajectory``: with its own topology if it has one, else the system's."""
    import mdtraj

    try:
        return mdtraj.load(str(path))
    except Exception:  # noqa: BLE001 - e.g. DCD/XYZ: no topology in the file; try the system's below
        pass
    try:
        return mdtraj.load(str(path), top=system_topology)
    except Exception as error:  # noqa: BLE001 - mdtraj raises many types for unreadable files
        raise ValueError(f"cannot read start structure {path} with mdtraj ({type(error).__name__}: {error})") from None


def _describe(atom) -> str:
    return f"{atom.element.symbol if atom.element is not None else '?'} {atom.name!r} in {atom.residue}"


def _check_same_atoms(path: Path, file_topology, system_topology, system_name: str) -> None:
    """ValueError unless both topologies have the same atoms (count, element, name) in the same order."""
    if file_topology.n_atoms != system_topology.n_atoms:
        raise ValueError(
            f"start structure {path} has {file_topology.n_atoms} atoms; system {system_name!r} has "
            f"{system_topology.n_atoms}"
        )
    for index, (mine, theirs) in enumerate(zip(file_topology.atoms, system_topology.atoms)):
        same_element = (mine.element is None) == (theirs.element is None) and (
            mine.element is None or mine.element.symbol == theirs.element.symbol
        )
        if not same_element or mine.name != theirs.name:
            raise ValueError(
                f"start structure {path} does not match system {system_name!r}: atom {index} is "
                f"{_describe(mine)} in the file but {_describe(theirs)} in the system "
                "(the file needs the same atoms in the same order)"
            )


def read_start_structure(path: str | os.PathLike, system) -> StartStructure:
    """Read and check the starting positions in ``path`` for ``system`` (a `MolecularSystem`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: mdtraj cannot read it, it holds other than one frame, its atoms differ from
            the system's (count, or element/name/order where the file names them), or its
            coordinates are not finite.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"start structure {path} does not exist")
    system_topology = system.mdtraj_topology
    trajectory = _load_single_frame(path, system_topology)
    if trajectory.n_frames != 1:
        raise ValueError(f"start structure {path} holds {trajectory.n_frames} frames; --start needs exactly one")
    _check_same_atoms(path, trajectory.topology, system_topology, system.name)
    positions = np.asarray(trajectory.xyz[0], dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"start structure {path} has non-finite coordinates")
    return StartStructure(path=path, sha256=file_sha256(path), positions_nm=positions)
