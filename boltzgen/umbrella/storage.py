"""Files of an umbrella run directory, written atomically (``boltzgen.io``) so a killed run resumes.

``DIR/``
- ``run.json``: the `UmbrellaConfig` and metadata (versions, torsion atoms, system); written first,
  it marks the directory as an umbrella run and fixes its settings for resuming;
- ``system.xml``, ``topology.pdb``: the unbiased OpenMM system and the topology with the
  shipped positions;
- ``seeds/repeat_RR.npz``: the seeding chain of repeat RR: ``positions`` ``[K, N, 3]`` nm, one
  starting point per window, and ``start`` (JSON: the starting structure);
- ``windows/rRR_wKKK.npz``: one finished window: ``phi``, ``psi`` (rad), ``reduced_potential``
  (kT, unbiased), ``bias_kT`` (the window's own restraint, kT; in 2-D runs phi + psi restraints),
  ``positions`` ``[T, N, 3]``
  float32 nm, ``time_ps``, ``info`` (JSON: centre, seeds, wall time). A window is written only when
  complete; an interrupted run redoes only the windows without a file. In 2-D runs (psi windows)
  KKK is ``w = j * M + m`` (phi centre j, psi centre m of M), so 1-D runs keep their names (w = j);
- ``umbrella.npz``: everything MBAR needs, for all repeats (see :func:`write_umbrella_npz`);
- ``frames.npz``: all positions ``[R, K, T, N, 3]`` float32 and their MBAR log weights for the
  unbiased ensemble, per repeat (for training on umbrella frames);
- ``summary.json``, ``profile.png``: the results (written last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from boltzgen.io import read_json, save_npz_atomic

FORMAT_NAME = "boltzgen-umbrella"
FORMAT_VERSION = 1


class UmbrellaDirectory:
    """Paths inside an umbrella run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def system_xml(self) -> Path:
        return self.root / "system.xml"

    @property
    def topology_pdb(self) -> Path:
        return self.root / "topology.pdb"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def seeds_dir(self) -> Path:
        return self.root / "seeds"

    @property
    def windows_dir(self) -> Path:
        return self.root / "windows"

    @property
    def umbrella_npz(self) -> Path:
        return self.root / "umbrella.npz"

    @property
    def frames_npz(self) -> Path:
        return self.root / "frames.npz"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def profile_png(self) -> Path:
        return self.root / "profile.png"

    def seeds_file(self, repeat: int) -> Path:
        return self.seeds_dir / f"repeat_{repeat:02d}.npz"

    def window_file(self, repeat: int, window: int) -> Path:
        return self.windows_dir / f"r{repeat:02d}_w{window:03d}.npz"

    def own_names(self) -> set[str]:
        """Names this module writes at the top level of the directory."""
        return {
            p.name
            for p in (
                self.run_json, self.system_xml, self.topology_pdb, self.lock_file, self.seeds_dir,
                self.windows_dir, self.umbrella_npz, self.frames_npz, self.summary_json, self.profile_png,
            )
        }

    def read_config_dict(self) -> dict[str, Any] | None:
        return read_json(self.run_json)["config"] if self.run_json.exists() else None


def write_seeds(path: Path, positions_nm: np.ndarray, start: dict[str, Any]) -> None:
    save_npz_atomic(path, positions=np.asarray(positions_nm, dtype=np.float64), start=np.array(json.dumps(start)))


def read_seeds(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with np.load(path) as data:
        return data["positions"], json.loads(str(data["start"]))


def write_window(path: Path, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    save_npz_atomic(path, **arrays, info=np.array(json.dumps(info)))


def read_window(path: Path, with_positions: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files if name != "info" and (with_positions or name != "positions")}
        return arrays, json.loads(str(data["info"]))


def write_umbrella_npz(
    path: Path,
    *,
    phi: np.ndarray,
    psi: np.ndarray | None,
    reduced_potential: np.ndarray,
    centers_rad: np.ndarray,
    force_constant: float,
    kt_kj_mol: float,
    time_ps: np.ndarray,
    metadata: dict[str, Any],
    psi_centers_rad: np.ndarray | None = None,
    psi_force_constant: float = 0.0,
) -> None:
    """Write everything needed to redo the MBAR analysis without boltzgen.

    Arrays (R repeats, K windows, T frames per window):
    - ``phi``, ``psi``: ``[R, K, T]`` rad (psi absent for molecules without one);
    - ``reduced_potential``: ``[R, K, T]`` unbiased reduced potential u0 = U / kT of each frame;
    - ``u_kln``: ``[R, K, K, T]``: ``u_kln[r, k, l, t]`` = reduced potential of frame t of window k
      (repeat r) in the biased ensemble of window l: u0 + 0.5 k wrap(phi - centre_l)^2 / kT;
      feed ``pymbar.MBAR(u_kln[r], N_k=[T] * K)`` per repeat;
    - ``centers_rad`` ``[K]``, ``force_constant_kj_mol_rad2``, ``kt_kj_mol``, ``time_ps`` ``[T]``;
    - ``metadata``: JSON string (config, versions).

    2-D runs (``psi_centers_rad`` given): K counts the (phi, psi) windows, ``centers_rad`` and
    ``psi_centers_rad`` ``[K]`` are each window's phi and psi centre, ``psi_force_constant_kj_mol_rad2``
    is stored, and ``u_kln`` adds the psi restraint 0.5 k_psi wrap(psi - psi_centre_l)^2 / kT; redo
    the analysis with ``mbar_phi_free_energy(phi[r], centers_rad, k, kT, psi_windows=psi[r],
    psi_centers_rad=psi_centers_rad, psi_force_constant=k_psi)``.
    """
    from boltzgen.umbrella.restraint import window_bias_kj_mol

    phi = np.asarray(phi, dtype=np.float64)
    two_d = psi_centers_rad is not None
    reduced = np.asarray(reduced_potential, dtype=np.float64)
    u_kln = np.empty(phi.shape[:2] + phi.shape[1:2] + phi.shape[2:])
    for r in range(phi.shape[0]):  # one repeat at a time: 2-D runs have many windows
        u_kln[r] = reduced[r][:, None, :] + (
            window_bias_kj_mol(
                phi[r][:, None, :],
                None if not two_d else np.asarray(psi, dtype=np.float64)[r][:, None, :],
                np.asarray(centers_rad)[None, :, None],
                None if not two_d else np.asarray(psi_centers_rad)[None, :, None],
                force_constant,
                psi_force_constant if two_d else 0.0,
            )
            / kt_kj_mol
        )
    arrays = {
        "phi": phi,
        "reduced_potential": np.asarray(reduced_potential, dtype=np.float64),
        "u_kln": u_kln,
        "centers_rad": np.asarray(centers_rad, dtype=np.float64),
        "force_constant_kj_mol_rad2": np.array(float(force_constant)),
        "kt_kj_mol": np.array(float(kt_kj_mol)),
        "time_ps": np.asarray(time_ps, dtype=np.float64),
        "metadata": np.array(json.dumps(metadata)),
    }
    if psi is not None:
        arrays["psi"] = np.asarray(psi, dtype=np.float64)
    if two_d:
        arrays["psi_centers_rad"] = np.asarray(psi_centers_rad, dtype=np.float64)
        arrays["psi_force_constant_kj_mol_rad2"] = np.array(float(psi_force_constant))
    save_npz_atomic(path, **arrays)
