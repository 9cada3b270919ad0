"""PNG plots of a Boltzmann generator's results against reference data (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boltzgen.analysis.free_energy import FreeEnergyProfile


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _weights(log_w, n: int) -> np.ndarray:
    if log_w is None:
        return np.full(n, 1.0 / n)
    log_w = np.asarray(log_w, dtype=np.float64)
    finite = np.isfinite(log_w)
    w = np.where(finite, np.exp(log_w - np.max(log_w[finite])), 0.0)
    return w / w.sum()


def ramachandran(phi_psi_reference, phi_psi_generated, log_w, path, bins: int = 60) -> Path:
    """Side-by-side Ramachandran histograms (reference | reweighted samples), -ln p in kT.

    Args:
        phi_psi_reference, phi_psi_generated: ``[n, 2]`` (phi, psi) in radians.
        log_w: log weights of the generated samples or None.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    panels = [
        ("reference", np.asarray(phi_psi_reference), None),
        ("Boltzmann generator (reweighted)", np.asarray(phi_psi_generated), log_w),
    ]
    for ax, (title, angles, lw) in zip(axes, panels):
        hist, _, _ = np.histogram2d(
            angles[:, 0], angles[:, 1], bins=[edges, edges], weights=_weights(lw, len(angles))
        )
        with np.errstate(divide="ignore"):
            free = -np.log(hist / hist.sum())
        free -= np.min(free[np.isfinite(free)])
        image = ax.pcolormesh(edges, edges, free.T, cmap="viridis", vmax=10)
        ax.set_title(title)
        ax.set_xlabel("phi (rad)")
    axes[0].set_ylabel("psi (rad)")
    fig.colorbar(image, ax=axes, label="free energy (kT)")
    return _save(fig, path)


def free_energy_profiles(profiles: dict[str, FreeEnergyProfile], path, xlabel: str = "phi (rad)") -> Path:
    """Free-energy profiles with their error bands, one line per labelled profile."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, profile in profiles.items():
        x = profile.bin_centers
        f = np.where(np.isfinite(profile.free_energy), profile.free_energy, np.nan)
        err = np.nan_to_num(profile.error, nan=0.0)
        ax.plot(x, f, label=label)
        ax.fill_between(x, f - err, f + err, alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("free energy (kT)")
    ax.legend()
    return _save(fig, path)


def energy_histograms(u_reference, u_generated, log_w, path, bins: int = 80) -> Path:
    """Histograms of reduced energies (kT): reference, generated (raw), generated (reweighted)."""
    plt = _pyplot()
    u_reference = np.asarray(u_reference, dtype=np.float64)
    u_generated = np.asarray(u_generated, dtype=np.float64)
    finite = np.isfinite(u_generated)
    lo, hi = np.percentile(u_reference, [0.1, 99.9])
    span = hi - lo
    edges = np.linspace(lo - 0.2 * span, hi + 0.5 * span, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(u_reference, bins=edges, density=True, histtype="step", label="reference MD")
    shown = finite & (u_generated >= edges[0]) & (u_generated <= edges[-1])
    # density=True divides by the mass inside the range: plot only what has mass there
    if shown.any():
        ax.hist(u_generated[shown], bins=edges, density=True, histtype="step", label="generator")
    if log_w is not None and shown.any():
        w = _weights(log_w, len(u_generated))
        if w[shown].sum() > 0:
            ax.hist(u_generated[shown], bins=edges, weights=w[shown], density=True, histtype="step",
                    label="generator, reweighted")
    ax.set_xlabel("reduced energy (kT)")
    ax.set_ylabel("density")
    ax.legend()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path
