"""Checks that catch the quiet failures of umbrella sampling along phi (METHODS.md §0), as flags.

Every check returns plain dicts (JSON-ready); a flag has ``kind``, ``window`` (or None),
``repeat`` (or None), ``center_deg`` and a one-line ``reason`` with the numbers behind it.

- drift: a window's circular mean phi sits more than one restraint width sqrt(kT/k) from its
  centre. On a steep free-energy flank the harmonic bias is pushed by F'(phi)/k even when all is
  well (the window stays unimodal); a window split into the basins beside it is pushed further
  and is broad too (see ``spread``), and one that escaped to a neighbouring basin sits several
  widths away. The reason states which: offset and spread in widths (and the slope k * offset).
- spread: the circular standard deviation of phi exceeds ``SPREAD_LIMIT`` widths: the window is
  broad or bimodal (its bias is weaker than the barrier's curvature there).
- overlap: MBAR overlap between neighbouring windows below ``OVERLAP_LIMIT`` (pymbar's rule of thumb).
- psi_slow: psi is not restrained, so it must relax inside every window. psi is split into the
  backbone's two basins, "alpha" (psi in [-80, 80] degrees) and "beta" (psi >= 110 or <= -130;
  the gaps in between are transition regions and count for neither), and the transitions between
  them are counted (a visit to one core after the other). A window is flagged when the minority
  basin matters (>= ``PSI_MINORITY_MIN`` of its frames pooled over repeats) and a repeat saw fewer
  than ``PSI_MIN_TRANSITIONS`` transitions, or the repeats' basin fractions differ by more than
  ``PSI_FRACTION_SPREAD`` (the window remembers where it started).
- repeats_disagree: the repeats' dF scatter more than their own MBAR errors allow
  (chi^2 / dof above the 99th percentile of chi^2 for R - 1 degrees of freedom).

2-D umbrella (psi restrained too): drift and spread are checked for phi as above and for psi
against the psi restraint's width (kinds ``psi_drift`` and ``psi_spread``); overlap is checked
between neighbours along phi (same psi centre) and along psi (``psi_overlap``, same phi centre);
psi_slow does not count transitions (a restrained psi is not expected to cross between basins
inside a window) and flags only repeats that disagree on a window's psi beta fraction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from boltzgen.umbrella.restraint import wrap_angle

#: Flag a window whose phi spread exceeds this many restraint widths.
SPREAD_LIMIT = 2.0
#: A drifting window whose offset is at most this many widths (and whose spread is normal) is
#: described as pushed by the free-energy slope; beyond, as escaped or split.
PUSHED_LIMIT = 3.0
#: Flag neighbouring windows whose MBAR overlap is below this.
OVERLAP_LIMIT = 0.03
#: psi basin cores (degrees): alpha = [-80, 80]; beta = [110, 180] and [-180, -130].
PSI_ALPHA_CORE_DEG = (-80.0, 80.0)
PSI_BETA_CORE_DEG = (110.0, -130.0)
#: psi mixing thresholds (see the module docstring).
PSI_MIN_TRANSITIONS = 10
PSI_MINORITY_MIN = 0.05
PSI_FRACTION_SPREAD = 0.25
#: chi^2 percentile beyond which repeats are said to disagree.
REPEATS_CHI2_PERCENTILE = 0.99


def circular_offset_and_spread(phi: np.ndarray, center: float) -> tuple[float, float]:
    """Circular mean of ``wrap(phi - center)`` and the circular standard deviation (rad)."""
    z = np.mean(np.exp(1j * wrap_angle(np.asarray(phi, dtype=np.float64) - center)))
    r = min(abs(z), 1.0)
    spread = float(np.sqrt(-2.0 * np.log(r))) if r > 0 else float("inf")
    return float(np.angle(z)), spread


def window_phi_checks(
    phi: np.ndarray,
    center: float,
    width: float,
    *,
    window: int,
    repeat: int | None,
    force_constant: float | None = None,
    psi_center: float | None = None,
) -> tuple[dict, list[dict]]:
    """Statistics of one window's phi and its drift/spread flags.

    ``width`` is the restraint width sqrt(kT/k) (rad); ``force_constant`` (kJ/mol/rad^2), when
    given, turns the offset of a pushed window into the free-energy slope k * offset that pushes it.
    ``psi_center`` (2-D windows) only enters the flags' text.
    """
    return window_angle_checks(
        phi, center, width, window=window, repeat=repeat, force_constant=force_constant, psi_center=psi_center
    )


def window_psi_checks(
    psi: np.ndarray,
    center: float,
    psi_center: float,
    width: float,
    *,
    window: int,
    repeat: int | None,
    force_constant: float | None = None,
) -> tuple[dict, list[dict]]:
    """The drift/spread checks of :func:`window_phi_checks` for the restrained psi of a 2-D window.

    ``center`` is the window's phi centre (for the text), ``psi_center`` and ``width`` the psi
    restraint's centre and width. Stats keys and flag kinds carry a ``psi_`` prefix.
    """
    return window_angle_checks(
        psi, center, width, window=window, repeat=repeat, force_constant=force_constant,
        psi_center=psi_center, angle="psi",
    )


def window_angle_checks(
    values: np.ndarray,
    center: float,
    width: float,
    *,
    window: int,
    repeat: int | None,
    force_constant: float | None = None,
    psi_center: float | None = None,
    angle: str = "phi",
) -> tuple[dict, list[dict]]:
    """Drift/spread statistics and flags of one restrained angle (``phi``, or ``psi`` in 2-D windows)."""
    restrained_center = psi_center if angle == "psi" else center
    offset, spread = circular_offset_and_spread(values, restrained_center)
    prefix = "" if angle == "phi" else f"{angle}_"
    stats = {
        "window": window,
        "repeat": repeat,
        "center_deg": float(np.rad2deg(center)),
        f"{prefix}mean_offset_deg": float(np.rad2deg(offset)),
        f"{prefix}spread_deg": float(np.rad2deg(spread)),
        f"{prefix}offset_widths": float(abs(offset) / width),
        f"{prefix}spread_widths": float(spread / width),
    }
    if psi_center is not None:
        stats["psi_center_deg"] = float(np.rad2deg(psi_center))
    flags = []
    centre_text = (
        f"centre {np.rad2deg(center):.0f} deg"
        if psi_center is None
        else f"centre phi {np.rad2deg(center):.0f}, psi {np.rad2deg(psi_center):.0f} deg"
    )
    where = f"window {window} ({centre_text})" + ("" if repeat is None else f", repeat {repeat}")
    if abs(offset) > width:
        if abs(offset) <= PUSHED_LIMIT * width and spread <= SPREAD_LIMIT * width:
            kind_of_drift = (
                f"unimodal: pushed along a free-energy slope of about {force_constant * abs(offset):.0f} kJ/mol/rad"
                if force_constant
                else "unimodal: pushed along a steep free-energy slope"
            )
        else:
            kind_of_drift = "escaped from its centre or split between basins: the restraint is too weak here"
        flags.append(
            {
                "kind": f"{prefix}drift",
                "window": window,
                "repeat": repeat,
                "center_deg": stats["center_deg"],
                **({} if psi_center is None else {"psi_center_deg": stats["psi_center_deg"]}),
                "reason": (
                    f"{where}: mean {angle} {np.rad2deg(offset):+.1f} deg from the centre = "
                    f"{abs(offset) / width:.1f} restraint widths ({np.rad2deg(width):.1f} deg); spread "
                    f"{np.rad2deg(spread):.1f} deg ({kind_of_drift})"
                ),
            }
        )
    if spread > SPREAD_LIMIT * width:
        flags.append(
            {
                "kind": f"{prefix}spread",
                "window": window,
                "repeat": repeat,
                "center_deg": stats["center_deg"],
                **({} if psi_center is None else {"psi_center_deg": stats["psi_center_deg"]}),
                "reason": (
                    f"{where}: {angle} spread {np.rad2deg(spread):.1f} deg = {spread / width:.1f} restraint widths "
                    f"(limit {SPREAD_LIMIT:g}): broad or bimodal window; raise the force constant"
                ),
            }
        )
    return stats, flags


def psi_cores(psi: np.ndarray) -> np.ndarray:
    """Core of each psi (rad): 0 alpha, 1 beta, -1 transition region."""
    deg = np.rad2deg(wrap_angle(np.asarray(psi, dtype=np.float64)))
    alpha = (deg >= PSI_ALPHA_CORE_DEG[0]) & (deg <= PSI_ALPHA_CORE_DEG[1])
    beta = (deg >= PSI_BETA_CORE_DEG[0]) | (deg <= PSI_BETA_CORE_DEG[1])
    return np.where(alpha, 0, np.where(beta, 1, -1))


def psi_transitions(psi: np.ndarray) -> int:
    """Number of transitions between the psi cores (entering one core after having been in the other)."""
    cores = psi_cores(psi)
    cores = cores[cores >= 0]
    return int(np.count_nonzero(cores[1:] != cores[:-1])) if len(cores) > 1 else 0


def psi_statistics(psi: np.ndarray, frame_interval_ps: float) -> dict:
    """Transitions, beta fraction and autocorrelation time of one window's psi series."""
    from boltzgen.umbrella.mbar import statistical_inefficiency

    cores = psi_cores(psi)
    in_core = cores >= 0
    g = statistical_inefficiency([np.cos(psi), np.sin(psi)])
    return {
        "psi_transitions": psi_transitions(psi),
        "psi_beta_fraction": float(np.mean(cores[in_core] == 1)) if in_core.any() else float("nan"),
        "psi_autocorrelation_ps": float((g - 1.0) / 2.0 * frame_interval_ps),
        "window_ps": float(len(psi) * frame_interval_ps),
    }


def psi_flags(
    per_repeat: Sequence[dict],
    pooled_beta_fraction: float,
    *,
    window: int,
    center: float,
    psi_center: float | None = None,
) -> list[dict]:
    """psi_slow flag of one window from its per-repeat `psi_statistics` (empty list if fine).

    ``psi_center`` given (2-D windows, psi restrained): transitions are not counted; only
    repeats that disagree on the psi beta fraction are flagged.
    """
    minority = min(pooled_beta_fraction, 1.0 - pooled_beta_fraction)
    if not np.isfinite(minority) or minority < PSI_MINORITY_MIN:
        return []
    reasons = []
    few = [
        (r, s["psi_transitions"])
        for r, s in enumerate(per_repeat)
        if psi_center is None and s["psi_transitions"] < PSI_MIN_TRANSITIONS
    ]
    if few:
        listed = ", ".join(f"repeat {r}: {n}" for r, n in few)
        reasons.append(
            f"fewer than {PSI_MIN_TRANSITIONS} psi alpha/beta transitions in {per_repeat[0]['window_ps']:.0f} ps ({listed})"
        )
    fractions = [s["psi_beta_fraction"] for s in per_repeat if np.isfinite(s["psi_beta_fraction"])]
    if len(fractions) > 1 and max(fractions) - min(fractions) > PSI_FRACTION_SPREAD:
        reasons.append(
            "repeats disagree on the psi beta fraction (" + ", ".join(f"{f:.2f}" for f in fractions) + ")"
        )
    if not reasons:
        return []
    centre_text = (
        f"centre {np.rad2deg(center):.0f} deg"
        if psi_center is None
        else f"centre phi {np.rad2deg(center):.0f}, psi {np.rad2deg(psi_center):.0f} deg"
    )
    return [
        {
            "kind": "psi_slow",
            "window": window,
            "repeat": None,
            "center_deg": float(np.rad2deg(center)),
            **({} if psi_center is None else {"psi_center_deg": float(np.rad2deg(psi_center))}),
            "reason": (
                f"window {window} ({centre_text}): psi not relaxed: "
                + "; ".join(reasons)
                + f"; pooled psi beta fraction {pooled_beta_fraction:.2f}"
            ),
        }
    ]


def overlap_flags(
    neighbour_overlap: np.ndarray,
    centers: np.ndarray,
    *,
    repeat: int,
    psi_centers: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
    along: str = "phi",
) -> list[dict]:
    """Flags for neighbouring windows whose MBAR overlap is below ``OVERLAP_LIMIT``.

    1-D: window i and i + 1 (mod K). 2-D (``psi_centers`` given): window i and ``neighbours[i]``,
    its next window along ``along`` (``"phi"`` or ``"psi"``; kind ``overlap`` or ``psi_overlap``).
    """
    if psi_centers is not None:
        return _overlap_flags_2d(neighbour_overlap, centers, psi_centers, neighbours, repeat=repeat, along=along)
    flags = []
    k = len(centers)
    for i, value in enumerate(np.asarray(neighbour_overlap)):
        if value < OVERLAP_LIMIT:
            flags.append(
                {
                    "kind": "overlap",
                    "window": i,
                    "repeat": repeat,
                    "center_deg": float(np.rad2deg(centers[i])),
                    "reason": (
                        f"repeat {repeat}: MBAR overlap between windows {i} and {(i + 1) % k} "
                        f"(centres {np.rad2deg(centers[i]):.0f}, {np.rad2deg(centers[(i + 1) % k]):.0f} deg) is "
                        f"{value:.3f} < {OVERLAP_LIMIT}: add windows or lower the force constant"
                    ),
                }
            )
    return flags


def _overlap_flags_2d(neighbour_overlap, centers, psi_centers, neighbours, *, repeat: int, along: str) -> list[dict]:
    flags = []
    phi_deg, psi_deg = np.rad2deg(centers), np.rad2deg(psi_centers)
    for i, value in enumerate(np.asarray(neighbour_overlap)):
        if value < OVERLAP_LIMIT:
            j = int(neighbours[i])
            flags.append(
                {
                    "kind": "overlap" if along == "phi" else "psi_overlap",
                    "window": i,
                    "repeat": repeat,
                    "center_deg": float(phi_deg[i]),
                    "psi_center_deg": float(psi_deg[i]),
                    "reason": (
                        f"repeat {repeat}: MBAR overlap between windows {i} and {j} along {along} (centres phi "
                        f"{phi_deg[i]:.0f}, psi {psi_deg[i]:.0f} and phi {phi_deg[j]:.0f}, psi {psi_deg[j]:.0f} deg) is "
                        f"{value:.3f} < {OVERLAP_LIMIT}: add {along} windows or lower the {along} force constant"
                    ),
                }
            )
    return flags


def repeat_consistency(values: Sequence[float], errors: Sequence[float]) -> tuple[dict, list[dict]]:
    """chi^2 of the repeats' dF about their mean with their MBAR errors; a flag if implausible."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    result = {"chi2": None, "dof": int(len(values) - 1), "chi2_limit": None, "p_value": None}
    if len(values) < 2 or not (np.all(np.isfinite(values)) and np.all(np.isfinite(errors)) and np.all(errors > 0)):
        return result, []
    mean = np.mean(values)
    chi2 = float(np.sum(((values - mean) / errors) ** 2))
    dof = len(values) - 1
    limit = float(stats.chi2.ppf(REPEATS_CHI2_PERCENTILE, dof))
    result.update(chi2=chi2, chi2_limit=limit, p_value=float(stats.chi2.sf(chi2, dof)))
    if chi2 <= limit:
        return result, []
    return result, [
        {
            "kind": "repeats_disagree",
            "window": None,
            "repeat": None,
            "center_deg": None,
            "reason": (
                f"the repeats' dF ({', '.join(f'{v:.2f}' for v in values)} kT) scatter more than their MBAR errors "
                f"({', '.join(f'{e:.2f}' for e in errors)} kT) allow: chi2 = {chi2:.1f} for {dof} dof "
                f"(p = {result['p_value']:.2g}); the MBAR error misses slow motions: trust the error from repeats"
            ),
        }
    ]
