"""Converged reference free energies shipped with the package (umbrella sampling + MBAR).

``data/<system>_umbrella.json`` holds the result of ``boltzgen umbrella`` for a system: the free
energy difference between phi > 0 and phi < 0 with its error from independent repeats, and the
phi free-energy profile (see ``data/UMBRELLA.md`` for the protocol).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class UmbrellaReference:
    """dF(phi > 0 vs phi < 0) = F(phi > 0) - F(phi < 0) in kT, its error, and the phi profile."""

    system: str
    delta_f_kT: float
    delta_f_err_kT: float
    profile_bin_edges: np.ndarray
    profile_kT: np.ndarray
    profile_err_kT: np.ndarray
    raw: dict

    @property
    def population_phi_positive(self) -> float:
        """Equilibrium probability of phi > 0: ``1 / (1 + exp(dF))``."""
        return float(1.0 / (1.0 + np.exp(self.delta_f_kT)))


def _resource(system: str):
    return resources.files("boltzgen.systems") / "data" / f"{system}_umbrella.json"


def has_umbrella_reference(system: str) -> bool:
    """True when a shipped umbrella reference exists for ``system``."""
    return _resource(system).is_file()


def umbrella_reference(system: str) -> UmbrellaReference:
    """The shipped umbrella-sampling reference of ``system`` (ValueError if there is none)."""
    resource = _resource(system)
    if not resource.is_file():
        raise ValueError(f"no shipped umbrella reference for system {system!r}")
    raw = json.loads(resource.read_text(encoding="utf-8"))
    profile = raw["profile"]
    return UmbrellaReference(
        system=system,
        delta_f_kT=float(raw["delta_f_kT"]),
        # the larger of the spread over repeats and what the repeats' MBAR errors predict: with
        # few repeats the former is itself uncertain
        delta_f_err_kT=max(float(raw["delta_f_err_kT"]), float(raw.get("delta_f_err_from_mbar_kT", 0.0))),
        profile_bin_edges=np.asarray(profile["bin_edges_rad"], dtype=np.float64),
        profile_kT=np.asarray(profile["free_energy_kT"], dtype=np.float64),
        profile_err_kT=np.asarray(profile["free_energy_err_kT"], dtype=np.float64),
        raw=raw,
    )
