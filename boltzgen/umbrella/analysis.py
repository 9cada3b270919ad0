"""From the finished windows of all repeats to the results: MBAR per repeat, checks, the combination.

dF and the profile are computed for every repeat on its own (`mbar_phi_free_energy`); the
reported value is the mean over repeats and its error the standard error over repeats
(std / sqrt(R), ddof 1), because repeats started from other structures with other seeds are the
only estimate of the error that sees slow motions the samples of one run never made (METHODS.md
§0). Each repeat's own MBAR error is reported next to it, and their disagreement is tested
(`diagnostics.repeat_consistency`). A pooled MBAR over all repeats' frames is given as a cross-check.

2-D runs (``config.psi_windows > 1``): the windows are the (phi, psi) windows ``w = j * M + m``;
MBAR uses both restraints' bias, and the window checks add psi drift/spread and the overlap along psi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from boltzgen.umbrella import diagnostics
from boltzgen.umbrella.config import UmbrellaConfig
from boltzgen.umbrella.mbar import PhiFreeEnergy, mbar_phi_free_energy, neighbour_windows
from boltzgen.umbrella.restraint import restraint_width


#: Bootstrap samples of the pooled MBAR (a cross-check; fewer than per repeat to save time).
POOLED_BOOTSTRAP = 30


@dataclass
class UmbrellaData:
    """Time series of all windows: ``phi``, ``psi`` (or None), ``reduced_potential`` ``[R, K, T]``."""

    phi: np.ndarray
    psi: np.ndarray | None
    reduced_potential: np.ndarray


@dataclass
class UmbrellaAnalysis:
    """Per-repeat MBAR results, the combined numbers, window statistics and flags."""

    per_repeat: list[PhiFreeEnergy]
    pooled: PhiFreeEnergy | None
    combined: dict[str, Any]
    windows: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    repeat_consistency: dict[str, Any]


def _mean_and_sem(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    mean = np.mean(values, axis=axis)
    n = values.shape[axis]
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    with np.errstate(invalid="ignore"):
        return mean, np.std(values, axis=axis, ddof=1) / np.sqrt(n)


def combine_profiles(per_repeat: list[PhiFreeEnergy]) -> dict[str, Any]:
    """Mean over repeats of F_i = -ln(P_i / width) (each repeat normalised), shifted to min 0, with the SEM."""
    free = np.stack([-r.log_density for r in per_repeat])  # +inf for empty bins
    finite = np.all(np.isfinite(free), axis=0)
    mean, sem = _mean_and_sem(np.where(finite, free, 0.0))
    mean = np.where(finite, mean, np.nan)
    sem = np.where(finite, sem, np.nan)
    if np.isfinite(mean).any():
        mean = mean - np.nanmin(mean)
    return {"free_energy_kT": mean, "free_energy_err_kT": sem}


def analyse(data: UmbrellaData, config: UmbrellaConfig, kt_kj_mol: float, *, pooled: bool = True) -> UmbrellaAnalysis:
    """MBAR per repeat (and pooled), window checks and the combination over repeats."""
    two_d = config.two_dimensional
    if two_d and data.psi is None:
        raise ValueError("a 2-D umbrella (psi windows) needs the psi time series")
    centers = config.window_phi_centers_rad
    psi_centers = config.window_psi_centers_rad if two_d else None
    bias = {"psi_centers_rad": psi_centers, "psi_force_constant": config.psi_force_constant} if two_d else {}
    width = restraint_width(config.force_constant, kt_kj_mol)
    psi_width = restraint_width(config.psi_force_constant, kt_kj_mol) if two_d else None
    n_repeats, n_windows, _ = data.phi.shape
    per_repeat = [
        mbar_phi_free_energy(
            list(data.phi[r]),
            centers,
            config.force_constant,
            kt_kj_mol,
            psi_windows=None if data.psi is None else list(data.psi[r]),
            **bias,
        )
        for r in range(n_repeats)
    ]
    pooled_result = None
    if pooled and n_repeats > 1:
        pooled_result = mbar_phi_free_energy(
            [data.phi[:, k].reshape(-1) for k in range(n_windows)],
            centers,
            config.force_constant,
            kt_kj_mol,
            psi_windows=[data.psi[:, k].reshape(-1) for k in range(n_windows)] if two_d else None,
            n_bootstrap=POOLED_BOOTSTRAP,
            **bias,
        )

    flags: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    for k in range(n_windows):
        psi_center = None if not two_d else float(psi_centers[k])
        entry: dict[str, Any] = {"window": k, "center_deg": float(np.rad2deg(centers[k])), "repeats": []}
        if two_d:
            entry["psi_center_deg"] = float(np.rad2deg(psi_center))
        psi_stats = []
        for r in range(n_repeats):
            stats, window_flags = diagnostics.window_phi_checks(
                data.phi[r, k], centers[k], width, window=k, repeat=r, force_constant=config.force_constant,
                psi_center=psi_center,
            )
            if two_d:
                psi_check, psi_check_flags = diagnostics.window_psi_checks(
                    data.psi[r, k], centers[k], psi_center, psi_width, window=k, repeat=r,
                    force_constant=config.psi_force_constant,
                )
                stats.update({key: value for key, value in psi_check.items() if key.startswith("psi_")})
                window_flags += psi_check_flags
                stats.pop("psi_center_deg")
            stats.pop("window"), stats.pop("center_deg")
            stats["statistical_inefficiency"] = float(per_repeat[r].statistical_inefficiency[k])
            stats["neighbour_overlap"] = float(per_repeat[r].neighbour_overlap[k])
            if two_d:
                stats["psi_neighbour_overlap"] = float(per_repeat[r].psi_neighbour_overlap[k])
            if data.psi is not None:
                psi_stat = diagnostics.psi_statistics(data.psi[r, k], config.frame_interval_ps)
                psi_stats.append(psi_stat)
                stats.update(psi_stat)
            entry["repeats"].append(stats)
            flags += window_flags
        if psi_stats:
            cores = diagnostics.psi_cores(data.psi[:, k].reshape(-1))
            pooled_beta = float(np.mean(cores[cores >= 0] == 1)) if np.any(cores >= 0) else float("nan")
            entry["psi_beta_fraction_pooled"] = pooled_beta
            window_psi_flags = diagnostics.psi_flags(
                psi_stats, pooled_beta, window=k, center=centers[k], psi_center=psi_center
            )
            entry["psi_slow"] = bool(window_psi_flags)
            flags += window_psi_flags
        windows.append(entry)
    if two_d:
        next_phi = neighbour_windows(centers, psi_centers, along_psi=False)
        next_psi = neighbour_windows(centers, psi_centers, along_psi=True)
    for r, result in enumerate(per_repeat):
        if two_d:
            flags += diagnostics.overlap_flags(
                result.neighbour_overlap, centers, repeat=r, psi_centers=psi_centers, neighbours=next_phi
            )
            flags += diagnostics.overlap_flags(
                result.psi_neighbour_overlap, centers, repeat=r, psi_centers=psi_centers, neighbours=next_psi,
                along="psi",
            )
        else:
            flags += diagnostics.overlap_flags(result.neighbour_overlap, centers, repeat=r)

    values = np.array([r.delta_f_kT for r in per_repeat])
    mbar_errors = np.array([r.delta_f_mbar_err_kT for r in per_repeat])
    consistency, consistency_flags = diagnostics.repeat_consistency(values, mbar_errors)
    flags += consistency_flags
    mean, sem = _mean_and_sem(values)
    p_mean, p_sem = _mean_and_sem(np.array([r.p_phi_positive for r in per_repeat]))
    with np.errstate(invalid="ignore"):
        from_mbar = float(np.sqrt(np.sum(mbar_errors**2)) / n_repeats)
    combined = {
        "delta_f_kT": float(mean),
        "delta_f_err_kT": float(sem) if np.isfinite(sem) else None,
        "delta_f_err_from_mbar_kT": from_mbar if np.isfinite(from_mbar) else None,
        "delta_f_repeats_std_kT": float(np.std(values, ddof=1)) if n_repeats > 1 else None,
        "p_phi_positive": float(p_mean),
        "p_phi_positive_err": float(p_sem) if np.isfinite(p_sem) else None,
        "profile": combine_profiles(per_repeat),
    }
    return UmbrellaAnalysis(per_repeat, pooled_result, combined, windows, flags, consistency)
