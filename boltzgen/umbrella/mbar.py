"""MBAR (pymbar 4) over the windows of one umbrella repeat: the unbiased phi distribution.

Given the phi samples of K windows (time series, one per window) with bias
``b_k(phi) = 0.5 k wrap(phi - c_k)^2``, MBAR solves for the window free energies and gives every
sample a weight in the unbiased ensemble. The unbiased potential u0 is common to all windows
and cancels, so only the bias enters (``u_kn = b_k(phi_n) / kT``). In a 2-D umbrella each window
restrains psi too, ``b_k(phi, psi) = 0.5 k wrap(phi - c_k)^2 + 0.5 k_psi wrap(psi - d_k)^2``, and
``u_kn`` holds both terms (:func:`reduced_bias_matrix`); everything below is unchanged. From the weights:

- ``dF = F(phi > 0) - F(phi < 0) = -ln(P(phi > 0) / P(phi < 0))`` in kT;
- the profile ``F_i = -ln(P_i / width_i)`` on bins over [-pi, pi), shifted to min 0.

Errors (per repeat):
- ``delta_f_mbar_err_kT``: a moving-block bootstrap of MBAR. Each bootstrap sample resamples every
  window's time series in contiguous blocks of ``ceil(g_k)`` frames (g_k the window's statistical
  inefficiency: the largest of those of phi, cos psi and sin psi, pymbar.timeseries), re-solves
  MBAR (warm start) and recomputes dF and the profile; the error is the standard deviation over the
  bootstrap samples. Blocks as long as the correlation keep correlated frames together, so the
  error sees the slow psi motions that the frames show, not only the fast phi ones.
- ``delta_f_naive_err_kT``: MBAR's asymptotic error treating every frame as independent, carried
  to dF with the delta method: what "fails quietly" in METHODS.md §0, reported for comparison.
Neither sees what the samples never did (a psi basin a window never left, a window stuck on one
side of a barrier): that is what repeats from other starting structures are for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.special import logsumexp

from boltzgen.umbrella.restraint import window_bias_kj_mol, wrap_angle

#: Default number of profile bins over [-pi, pi) (10 degrees).
DEFAULT_BINS = 36
#: Default number of block-bootstrap samples for the MBAR errors.
DEFAULT_BOOTSTRAP = 100


def _pymbar():
    """Import pymbar without its import-time chatter (JAX missing, timeseries caveats)."""
    for name in ("pymbar", "pymbar.mbar_solvers", "pymbar.timeseries", "pymbar.mbar"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import pymbar
    import pymbar.timeseries

    return pymbar


@dataclass
class PhiFreeEnergy:
    """MBAR result of one repeat (energies in kT, angles in rad).

    Attributes:
        delta_f_kT: F(phi > 0) - F(phi < 0).
        delta_f_mbar_err_kT: its MBAR block-bootstrap error (see the module docstring).
        delta_f_naive_err_kT: its MBAR error treating every frame as independent.
        p_phi_positive: P(phi > 0) in the unbiased ensemble.
        bin_edges: ``[B + 1]`` profile bin edges.
        profile_kT, profile_err_kT: ``[B]`` F_i shifted to min 0, and its (bootstrap) error relative
            to the minimum bin (0 for the minimum itself, NaN for empty bins).
        log_density: ``[B]`` ln(P_i / width_i) (normalised, unshifted; -inf for empty bins).
        log_density_err: ``[B]`` its (bootstrap) error.
        window_f_kT: ``[K]`` MBAR free energies of the biased windows (first = 0).
        neighbour_overlap: ``[K]`` MBAR overlap between window k and window k + 1 (mod K); in 2-D,
            between window k and the window with the same psi centre and the next phi centre.
        psi_neighbour_overlap: 2-D only (else None): ``[K]`` MBAR overlap between window k and the
            window with the same phi centre and the next psi centre.
        statistical_inefficiency: ``[K]`` g of each window (frames).
        n_frames: ``[K]`` frames per window.
        n_bootstrap: bootstrap samples behind the ``*_mbar_err`` errors.
        log_weights: per window, the unbiased log weight of each frame (normalised over all frames).
    """

    delta_f_kT: float
    delta_f_mbar_err_kT: float
    delta_f_naive_err_kT: float
    p_phi_positive: float
    bin_edges: np.ndarray
    profile_kT: np.ndarray
    profile_err_kT: np.ndarray
    log_density: np.ndarray
    log_density_err: np.ndarray
    window_f_kT: np.ndarray
    neighbour_overlap: np.ndarray
    statistical_inefficiency: np.ndarray
    n_frames: np.ndarray
    n_bootstrap: int
    log_weights: list = field(default_factory=list)
    psi_neighbour_overlap: np.ndarray | None = None

    @property
    def bin_centers(self) -> np.ndarray:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])


def statistical_inefficiency(series: Sequence[np.ndarray]) -> float:
    """Largest statistical inefficiency (>= 1, in frames) of the given time series of one window."""
    pymbar = _pymbar()
    g = 1.0
    for values in series:
        values = np.asarray(values, dtype=np.float64)
        if len(values) < 3 or not np.ptp(values) > 0:
            continue
        try:
            g = max(g, float(pymbar.timeseries.statistical_inefficiency(values, fast=False)))
        except Exception:  # noqa: BLE001 - a degenerate series says nothing about correlation
            continue
    return g


def _bin_indicators(phi: np.ndarray, bin_edges: np.ndarray) -> np.ndarray:
    """``[B, N]`` 0/1 indicators of the bin of each angle."""
    which = np.clip(np.searchsorted(bin_edges, wrap_angle(phi), side="right") - 1, 0, len(bin_edges) - 2)
    indicators = np.zeros((len(bin_edges) - 1, len(phi)))
    indicators[which, np.arange(len(phi))] = 1.0
    return indicators


def _expectations(mbar, observables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased-state averages ``[I]`` of 0/1 ``observables`` ``[I, N]`` and their covariance ``[I, I]``.

    Observables that are zero on every sample get average 0 and covariance 0 (pymbar cannot take
    their log); if MBAR's covariance matrix cannot be computed (windows that do not overlap), the
    covariance is NaN.
    """
    n_obs, n_samples = observables.shape
    present = np.flatnonzero(observables.any(axis=1))
    mu = np.zeros(n_obs)
    covariance = np.zeros((n_obs, n_obs))
    if len(present) == 0:
        return mu, covariance
    try:
        result = mbar.compute_multiple_expectations(
            observables[present], np.zeros(n_samples), compute_uncertainty=True, return_theta=True
        )
        theta = result["Theta"]
        i = len(present)
        sub = theta[:i, :i] + theta[i:, i:] - theta[:i, i:] - theta[i:, :i]
        mu[present] = np.asarray(result["mu"], dtype=np.float64)
    except np.linalg.LinAlgError:
        weights = np.exp(_unbiased_log_weights(mbar))
        mu[present] = observables[present] @ weights
        sub = np.full((len(present), len(present)), np.nan)
    covariance[np.ix_(present, present)] = sub
    return mu, covariance


def _unbiased_log_weights(mbar) -> np.ndarray:
    """Normalised log weights ``[N]`` of all samples in the unbiased ensemble (u0 cancels)."""
    f_k = np.asarray(mbar.f_k, dtype=np.float64)
    log_w = -logsumexp(f_k[None, :] - np.asarray(mbar.u_kn).T, b=np.asarray(mbar.N_k)[None, :], axis=1)
    return log_w - logsumexp(log_w)


def reduced_bias_matrix(
    phi: np.ndarray,
    psi: np.ndarray | None,
    centers_rad,
    force_constant: float,
    kt_kj_mol: float,
    psi_centers_rad=None,
    psi_force_constant: float = 0.0,
) -> np.ndarray:
    """``u_kn`` ``[L, N]``: the reduced bias (kT) of every sample n in every window l.

    ``b_l(phi_n) / kT`` with ``b_l`` the phi restraint of window l, plus the psi restraint's
    ``0.5 k_psi wrap(psi_n - d_l)^2 / kT`` when ``psi_centers_rad`` is given (2-D windows).
    """
    centers = np.asarray(centers_rad, dtype=np.float64).reshape(-1)
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    if psi_centers_rad is None:
        return window_bias_kj_mol(phi[None, :], None, centers[:, None], None, force_constant, 0.0) / kt_kj_mol
    psi_centers = np.asarray(psi_centers_rad, dtype=np.float64).reshape(-1)
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    return (
        window_bias_kj_mol(
            phi[None, :], psi[None, :], centers[:, None], psi_centers[:, None], force_constant, psi_force_constant
        )
        / kt_kj_mol
    )


def _solve(phi: np.ndarray, n_k: np.ndarray, u_kn: np.ndarray, bin_edges: np.ndarray):
    """MBAR on the given samples: (mbar, p [2 + B], covariance)."""
    pymbar = _pymbar()
    observables = np.concatenate(
        [np.stack([(phi > 0).astype(float), (phi < 0).astype(float)]), _bin_indicators(phi, bin_edges)]
    )
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) of the indicators inside pymbar
        mbar = pymbar.MBAR(u_kn, n_k)
        p, covariance = _expectations(mbar, observables)
    return mbar, p, covariance


def neighbour_windows(phi_centers: np.ndarray, psi_centers: np.ndarray, along_psi: bool) -> np.ndarray:
    """Index of each window's neighbour: same psi (phi) centre, next phi (psi) centre round the circle."""
    same = psi_centers if not along_psi else phi_centers
    moving = phi_centers if not along_psi else psi_centers
    result = np.arange(len(phi_centers))
    for i in range(len(phi_centers)):
        candidates = np.flatnonzero(np.abs(wrap_angle(same - same[i])) < 1e-9)
        candidates = candidates[candidates != i]
        if len(candidates):
            step = np.mod(moving[candidates] - moving[i], 2.0 * np.pi)
            step = np.where(step < 1e-12, np.inf, step)
            result[i] = candidates[int(np.argmin(step))]
    return result


def _delta_f(p: np.ndarray, covariance: np.ndarray) -> tuple[float, float]:
    """dF = -ln(p[0] / p[1]) and its delta-method error."""
    if not (p[0] > 0 and p[1] > 0):
        return (float("inf") if p[0] <= 0 else float("-inf")), float("nan")
    gradient = np.array([-1.0 / p[0], 1.0 / p[1]])
    variance = gradient @ covariance[:2, :2] @ gradient
    return float(-np.log(p[0] / p[1])), float(np.sqrt(max(variance, 0.0)))


def _profile(p_bins: np.ndarray, covariance: np.ndarray, widths: np.ndarray):
    """(shifted profile, its error vs the minimum bin, log density, its error)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_density = np.log(p_bins / widths)
        log_density_err = np.sqrt(np.clip(np.diag(covariance), 0.0, None)) / p_bins
    filled = p_bins > 0
    if not filled.any():
        nan = np.full(len(p_bins), np.nan)
        return nan, nan, log_density, nan
    free = np.where(filled, -log_density, np.inf)
    lowest = int(np.argmin(free))
    profile = free - free[lowest]
    error = np.full(len(p_bins), np.nan)
    for i in np.flatnonzero(filled):
        if i == lowest:
            continue
        variance = (
            covariance[i, i] / p_bins[i] ** 2
            + covariance[lowest, lowest] / p_bins[lowest] ** 2
            - 2.0 * covariance[i, lowest] / (p_bins[i] * p_bins[lowest])
        )
        error[i] = np.sqrt(max(variance, 0.0))
    return profile, error, np.where(filled, log_density, -np.inf), np.where(filled, log_density_err, np.nan)


def _block_indices(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices of a moving-block bootstrap sample of a series of length ``n``."""
    block = int(min(max(block, 1), max(n // 2, 1)))
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=n_blocks)
    return (starts[:, None] + np.arange(block)).reshape(-1)[:n]


def _block_bootstrap(mbar, phi_windows, g, bin_edges, profile, *, n_bootstrap: int, seed: int):
    """(dF error, profile error vs the estimate's minimum bin, log-density error) by block bootstrap."""
    pymbar = _pymbar()
    rng = np.random.default_rng(seed)
    n_k = np.array([len(x) for x in phi_windows])
    offsets = np.concatenate([[0], np.cumsum(n_k)[:-1]])
    phi = np.concatenate(phi_windows)
    u_kn = np.asarray(mbar.u_kn)
    f_k = np.asarray(mbar.f_k, dtype=np.float64)
    widths = np.diff(bin_edges)
    which = np.clip(np.searchsorted(bin_edges, wrap_angle(phi), side="right") - 1, 0, len(widths) - 1)
    finite = np.isfinite(profile)
    lowest = int(np.argmin(np.where(finite, profile, np.inf))) if finite.any() else 0
    delta_f, log_density = [], []
    for _ in range(n_bootstrap):
        idx = np.concatenate(
            [offsets[i] + _block_indices(int(n_k[i]), int(np.ceil(g[i])), rng) for i in range(len(n_k))]
        )
        u_b = u_kn[:, idx]
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                f_b = np.asarray(pymbar.MBAR(u_b, n_k, initial_f_k=f_k).f_k, dtype=np.float64)
        except Exception:  # noqa: BLE001 - a resample MBAR cannot solve is skipped
            continue
        log_w = -logsumexp(f_b[None, :] - u_b.T, b=n_k[None, :], axis=1)
        w = np.exp(log_w - logsumexp(log_w))
        phi_b = phi[idx]
        p_pos, p_neg = w[phi_b > 0].sum(), w[phi_b < 0].sum()
        with np.errstate(divide="ignore"):
            delta_f.append(-np.log(p_pos / p_neg) if p_pos > 0 and p_neg > 0 else np.nan)
            log_density.append(np.log(np.bincount(which[idx], weights=w, minlength=len(widths)) / widths))
    delta_f = np.asarray(delta_f)
    log_density = np.asarray(log_density).reshape(len(delta_f), len(widths))
    good = np.isfinite(delta_f)
    delta_f_err = float(np.std(delta_f[good], ddof=1)) if good.sum() > 1 else float("nan")
    with np.errstate(invalid="ignore"):
        relative = -(log_density - log_density[:, [lowest]])
        usable = np.isfinite(relative)
        profile_err = np.array(
            [np.std(relative[usable[:, i], i], ddof=1) if usable[:, i].sum() > 1 else np.nan for i in range(len(widths))]
        )
        usable = np.isfinite(log_density)
        log_density_err = np.array(
            [np.std(log_density[usable[:, i], i], ddof=1) if usable[:, i].sum() > 1 else np.nan for i in range(len(widths))]
        )
    profile_err = np.where(finite, profile_err, np.nan)
    log_density_err = np.where(finite, log_density_err, np.nan)
    return delta_f_err, profile_err, log_density_err


def mbar_phi_free_energy(
    phi_windows: Sequence[np.ndarray],
    centers_rad,
    force_constant: float,
    kt_kj_mol: float,
    *,
    psi_windows: Sequence[np.ndarray] | None = None,
    bins: int | np.ndarray = DEFAULT_BINS,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    psi_centers_rad=None,
    psi_force_constant: float = 0.0,
) -> PhiFreeEnergy:
    """The unbiased phi free energy (dF and profile) from umbrella windows by MBAR.

    Args:
        phi_windows: K time series of phi (rad), one per window (window k biased at ``centers_rad[k]``).
        centers_rad: ``[K]`` window centres (rad) (the phi centre of each window).
        force_constant: restraint force constant, kJ/mol/rad^2.
        kt_kj_mol: kT in kJ/mol.
        psi_windows: K time series of psi (rad) or None; used for the statistical inefficiency, and
            in the bias of 2-D windows.
        bins: number of profile bins over [-pi, pi), or the bin edges.
        n_bootstrap: block-bootstrap samples for the errors (>= 2).
        seed: seed of the bootstrap.
        psi_centers_rad: 2-D windows: ``[K]`` psi centre of each window (None: psi not restrained).
        psi_force_constant: 2-D windows: psi restraint force constant, kJ/mol/rad^2.
    """
    centers = np.asarray(centers_rad, dtype=np.float64).reshape(-1)
    phi_windows = [np.asarray(p, dtype=np.float64).reshape(-1) for p in phi_windows]
    if len(phi_windows) != len(centers):
        raise ValueError(f"{len(phi_windows)} windows of samples for {len(centers)} window centres")
    if any(len(p) < 2 for p in phi_windows):
        raise ValueError("every window needs at least 2 samples")
    if not all(np.isfinite(p).all() for p in phi_windows):
        raise ValueError("phi samples must be finite")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap!r}")
    if not (force_constant > 0 and kt_kj_mol > 0):
        raise ValueError("force constant and kT must be positive")
    two_d = psi_centers_rad is not None
    if two_d:
        psi_centers = np.asarray(psi_centers_rad, dtype=np.float64).reshape(-1)
        if len(psi_centers) != len(centers):
            raise ValueError(f"{len(psi_centers)} psi centres for {len(centers)} windows")
        if psi_windows is None or len(psi_windows) != len(centers):
            raise ValueError("2-D windows (psi centres given) need the psi time series of every window")
        if any(len(np.ravel(q)) != len(p) for q, p in zip(psi_windows, phi_windows)):
            raise ValueError("every window needs as many psi samples as phi samples")
        if not all(np.isfinite(np.asarray(q, dtype=np.float64)).all() for q in psi_windows):
            raise ValueError("psi samples must be finite")
        if not psi_force_constant > 0:
            raise ValueError("the psi force constant must be positive for 2-D windows")
    bin_edges = (
        np.linspace(-np.pi, np.pi, int(bins) + 1) if np.ndim(bins) == 0 else np.asarray(bins, dtype=np.float64)
    )
    widths = np.diff(bin_edges)

    n_k = np.array([len(x) for x in phi_windows])
    phi = np.concatenate(phi_windows)
    if two_d:
        psi = np.concatenate([np.asarray(q, dtype=np.float64).reshape(-1) for q in psi_windows])
        u_kn = reduced_bias_matrix(phi, psi, centers, force_constant, kt_kj_mol, psi_centers, psi_force_constant)
    else:
        u_kn = reduced_bias_matrix(phi, None, centers, force_constant, kt_kj_mol)
    mbar, p, covariance = _solve(phi, n_k, u_kn, bin_edges)
    delta_f, naive_err = _delta_f(p, covariance)
    profile, _, log_density, _ = _profile(p[2:], covariance[2:, 2:], widths)
    k = len(centers)
    try:
        overlap = np.asarray(mbar.compute_overlap()["matrix"])
    except np.linalg.LinAlgError:
        overlap = np.zeros((k, k))
    psi_neighbour_overlap = None
    if two_d:
        next_phi = neighbour_windows(centers, psi_centers, along_psi=False)
        next_psi = neighbour_windows(centers, psi_centers, along_psi=True)
        neighbour_overlap = np.array([overlap[i, next_phi[i]] for i in range(k)])
        psi_neighbour_overlap = np.array([overlap[i, next_psi[i]] for i in range(k)])
    else:
        neighbour_overlap = np.array([overlap[i, (i + 1) % k] for i in range(k)])
    window_f = np.asarray(mbar.f_k, dtype=np.float64) - float(mbar.f_k[0])

    # log weights of every frame in the unbiased ensemble (u0 cancels): -ln sum_k N_k exp(f_k - u_k)
    log_w = _unbiased_log_weights(mbar)
    splits = np.cumsum([len(x) for x in phi_windows])[:-1]

    # errors: moving-block bootstrap over each window's time series
    g = np.ones(k)
    for i, phi_k in enumerate(phi_windows):
        series = [wrap_angle(phi_k - centers[i])]
        if psi_windows is not None:
            psi_k = np.asarray(psi_windows[i], dtype=np.float64)
            series += [np.cos(psi_k), np.sin(psi_k)]
        g[i] = statistical_inefficiency(series)
    mbar_err, profile_err, log_density_err = _block_bootstrap(
        mbar, phi_windows, g, bin_edges, profile, n_bootstrap=n_bootstrap, seed=seed
    )
    if not np.isfinite(delta_f):
        mbar_err = float("nan")

    return PhiFreeEnergy(
        delta_f_kT=delta_f,
        delta_f_mbar_err_kT=mbar_err,
        delta_f_naive_err_kT=naive_err,
        p_phi_positive=float(p[0] / (p[0] + p[1])) if p[0] + p[1] > 0 else float("nan"),
        bin_edges=bin_edges,
        profile_kT=profile,
        profile_err_kT=profile_err,
        log_density=log_density,
        log_density_err=log_density_err,
        window_f_kT=window_f,
        neighbour_overlap=neighbour_overlap,
        statistical_inefficiency=g,
        n_frames=np.array([len(x) for x in phi_windows]),
        n_bootstrap=n_bootstrap,
        log_weights=np.split(log_w, splits),
        psi_neighbour_overlap=psi_neighbour_overlap,
    )
