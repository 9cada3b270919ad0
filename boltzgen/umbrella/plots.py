"""``profile.png``: the phi free-energy profile per repeat and combined, and the per-window checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boltzgen.analysis.plots import _pyplot, _save
from boltzgen.umbrella.analysis import UmbrellaAnalysis
from boltzgen.umbrella.diagnostics import PSI_MIN_TRANSITIONS


def profile_plot(analysis: UmbrellaAnalysis, centers_rad: np.ndarray, path, title: str = "", psi_windows: int = 1) -> Path:
    """Top: F(phi) of every repeat (MBAR error bands) and their mean (band: standard error over
    repeats). Bottom: psi transitions per window and repeat, and the windows' phi offsets; for a
    2-D umbrella (``psi_windows > 1``, ``centers_rad`` the K phi centres), the largest phi and psi
    offsets (in restraint widths) over the psi windows of each phi centre."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    first = analysis.per_repeat[0]
    x = np.rad2deg(first.bin_centers)
    for r, result in enumerate(analysis.per_repeat):
        free = -result.log_density
        free = np.where(np.isfinite(free), free - np.nanmin(np.where(np.isfinite(free), free, np.nan)), np.nan)
        err = np.nan_to_num(result.log_density_err, nan=0.0)
        top.plot(x, free, lw=1, label=f"repeat {r} (dF {result.delta_f_kT:.2f} ± {result.delta_f_mbar_err_kT:.2f} MBAR)")
        top.fill_between(x, free - err, free + err, alpha=0.2)
    combined = analysis.combined
    f = combined["profile"]["free_energy_kT"]
    e = np.nan_to_num(combined["profile"]["free_energy_err_kT"], nan=0.0)
    err_text = "" if combined["delta_f_err_kT"] is None else f" ± {combined['delta_f_err_kT']:.2f} (repeats)"
    top.plot(x, f, color="black", lw=2, label=f"mean over repeats (dF {combined['delta_f_kT']:.2f}{err_text} kT)")
    top.fill_between(x, f - e, f + e, color="black", alpha=0.2)
    top.set_ylabel("F(phi) (kT)")
    top.legend(fontsize=8)
    if title:
        top.set_title(title, fontsize=10)

    centers = np.rad2deg(centers_rad)
    n_repeats = len(analysis.per_repeat)
    width = 0.8 * (centers[1] - centers[0]) / max(n_repeats, 1)
    has_psi = any("psi_transitions" in s for w in analysis.windows for s in w["repeats"])
    if psi_windows > 1:
        for r in range(n_repeats):
            for key, style, name in (("offset_widths", "-", "phi"), ("psi_offset_widths", ":", "psi")):
                values = np.array([w["repeats"][r][key] for w in analysis.windows]).reshape(len(centers), psi_windows)
                bottom.plot(centers, values.max(axis=1), ls=style, marker="o", ms=3, lw=1,
                            label=f"repeat {r}, {name}")
        bottom.axhline(1.0, color="grey", ls="--", lw=1)
        bottom.set_ylabel("largest |mean - centre| (widths)")
        bottom.legend(fontsize=7, ncol=2)
    elif has_psi:
        for r in range(n_repeats):
            counts = [w["repeats"][r]["psi_transitions"] for w in analysis.windows]
            bottom.bar(centers + (r - (n_repeats - 1) / 2) * width, counts, width=width, label=f"repeat {r}")
        bottom.axhline(PSI_MIN_TRANSITIONS, color="grey", ls="--", lw=1)
        bottom.set_ylabel("psi transitions / window")
        bottom.set_yscale("symlog", linthresh=10)
        slow = [w["center_deg"] for w in analysis.windows if w.get("psi_slow")]
        half = 0.5 * (centers[1] - centers[0])
        for c in slow:
            bottom.axvspan(c - half, c + half, color="red", alpha=0.08)
        bottom.legend(fontsize=8, title="shaded: psi_slow", title_fontsize=8)
    else:
        for r in range(n_repeats):
            offsets = [w["repeats"][r]["offset_widths"] for w in analysis.windows]
            bottom.plot(centers, offsets, marker="o", lw=1, label=f"repeat {r}")
        bottom.axhline(1.0, color="grey", ls="--", lw=1)
        bottom.set_ylabel("|mean phi - centre| (widths)")
        bottom.legend(fontsize=8)
    bottom.set_xlabel("phi (degrees)")
    bottom.set_xlim(-180, 180)
    return _save(fig, path)
