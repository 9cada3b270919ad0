"""Reference MD data shipped with the package: compact training/test sets that cover every basin.

``data/<system>_reference.npz`` holds MD frames made with ``boltzgen md`` from several starting
structures (see ``data/README.md``: fields, units, commands, seeds). The frames cover the
metastable basins; their basin populations are NOT equilibrium populations (the starts were
chosen to reach rare basins), so estimates of populations from them need reweighting or an
independent reference (e.g. `boltzgen.systems.umbrella_reference`).

>>> from boltzgen.systems import reference_data
>>> data = reference_data("alanine_dipeptide_implicit")   # doctest: +SKIP
>>> x = data.positions_flat()                              # [F, 66] float32 nm  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from boltzgen.units import kt_kj_per_mol

#: System name -> file in ``boltzgen.systems/data`` with its reference data.
REFERENCE_DATA_FILES: dict[str, str] = {
    "alanine_dipeptide_implicit": "alanine_dipeptide_implicit_reference.npz",
}

#: Arrays of a reference-data file with their dtype and shape (F frames, N atoms).
ARRAY_SPECS: dict[str, tuple[type, str]] = {
    "positions": (np.float32, "[F, N, 3] nm"),
    "forces": (np.float32, "[F, N, 3] kJ/mol/nm"),
    "reduced_energy": (np.float64, "[F] kT"),
    "phi": (np.float32, "[F] rad"),
    "psi": (np.float32, "[F] rad"),
    "start_id": (np.int16, "[F]"),
    "replica": (np.int16, "[F]"),
    "time_ps": (np.float32, "[F] ps"),
}


@dataclass(frozen=True)
class ReferenceData:
    """MD frames of one system from several starts (all arrays read-only).

    Attributes:
        system: registry name (``boltzgen.systems.load(system)`` builds the system).
        positions: ``[F, N, 3]`` float32, nm.
        forces: ``[F, N, 3]`` float32, kJ/mol/nm (of exactly the stored float32 positions).
        reduced_energy: ``[F]`` float64, kT (potential energy / k_B T of the stored positions).
        phi, psi: ``[F]`` float32, radians in (-pi, pi] (mdtraj's backbone dihedrals).
        start_id: ``[F]`` int16, which starting structure the frame's trajectory began from
            (``metadata["starts"][i]`` describes start ``i``; for alanine dipeptide 0 = C7eq,
            1 = alpha_L).
        replica: ``[F]`` int16, replica number within its start.
        time_ps: ``[F]`` float32, ps of production after the warm-up of that replica.
        metadata: provenance (commands, seeds, protocol, versions, basin counts).
    """

    system: str
    positions: np.ndarray
    forces: np.ndarray
    reduced_energy: np.ndarray
    phi: np.ndarray
    psi: np.ndarray
    start_id: np.ndarray
    replica: np.ndarray
    time_ps: np.ndarray
    metadata: dict[str, Any]

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    @property
    def temperature_K(self) -> float:
        """Temperature that defines kT for ``reduced_energy``, K."""
        return float(self.metadata["temperature_K"])

    def positions_flat(self) -> np.ndarray:
        """Positions as a flat batch ``[F, 3N]`` float32, nm (boltzgen's tensor layout)."""
        return self.positions.reshape(self.n_frames, -1)

    def forces_flat_kT_per_nm(self) -> np.ndarray:
        """Forces as a flat batch ``[F, 3N]`` float32 in kT/nm (the unit of `Energy.force`)."""
        return (self.forces.reshape(self.n_frames, -1) / np.float32(kt_kj_per_mol(self.temperature_K))).astype(np.float32)


def systems_with_reference_data() -> list[str]:
    """Names of the systems that have shipped reference data, sorted."""
    return sorted(REFERENCE_DATA_FILES)


def reference_data_resource(name: str):
    """The packaged file (an ``importlib.resources`` Traversable) with the reference data of ``name``."""
    if name not in REFERENCE_DATA_FILES:
        raise ValueError(
            f"no shipped reference data for system {name!r}; systems with reference data: "
            f"{', '.join(systems_with_reference_data())}"
        )
    return resources.files("boltzgen.systems") / "data" / REFERENCE_DATA_FILES[name]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=2)
def reference_data(name: str) -> ReferenceData:
    """The shipped reference MD data of system ``name`` (cached; arrays are read-only).

    Raises:
        ValueError: ``name`` has no shipped reference data (the message lists those that have).
        FileNotFoundError: the package was installed without its data file.
    """
    resource = reference_data_resource(name)
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the reference data of {name!r} is missing from the package ({path})")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: _read_only(np.asarray(archive[key], dtype=dtype)) for key, (dtype, _) in ARRAY_SPECS.items()}
            metadata = json.loads(str(archive["metadata"]))
    return ReferenceData(system=name, metadata=metadata, **arrays)
