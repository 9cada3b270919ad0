"""Free energies from (weighted) samples: state differences and profiles along a collective variable.

Everything is in reduced units (kT). Weights enter as log weights (``-inf`` for dropped samples);
unweighted data (plain MD frames) pass ``log_w=None``. Error bars come from a bootstrap over
samples; for time-correlated data (MD) pass ``block_size`` to resample contiguous blocks instead of
single frames, otherwise the error is underestimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FreeEnergyEstimate:
    """A free-energy value with its bootstrap standard error, both in kT."""

    value: float
    error: float
    n_bootstrap: int

    def as_dict(self, prefix: str = "delta_f") -> dict:
        return {f"{prefix}_kT": self.value, f"{prefix}_err_kT": self.error}


def _log_weights(log_w, n: int) -> np.ndarray:
    if log_w is None:
        return np.zeros(n)
    log_w = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if log_w.shape[0] != n:
        raise ValueError(f"log_w has {log_w.shape[0]} entries for {n} samples")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError("log weights must not contain NaN or +inf (use -inf for dropped samples)")
    return log_w


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _bootstrap_indices(n: int, n_bootstrap: int, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_bootstrap, n]`` resampled indices (moving blocks of ``block_size`` when > 1)."""
    if block_size <= 1:
        return rng.integers(0, n, size=(n_bootstrap, n))
    block_size = min(block_size, n)
    n_blocks = math.ceil(n / block_size)
    starts = rng.integers(0, n - block_size + 1, size=(n_bootstrap, n_blocks))
    idx = (starts[:, :, None] + np.arange(block_size)).reshape(n_bootstrap, -1)
    return idx[:, :n]


def free_energy_difference(
    log_w, in_a, in_b, *, n_bootstrap: int = 200, block_size: int = 1, seed: int = 0
) -> FreeEnergyEstimate:
    """``dF = F_B - F_A = -ln( sum_{x in B} w / sum_{x in A} w )`` in kT, with a bootstrap error.

    Args:
        log_w: log weights ``[B]`` or None for unweighted samples.
        in_a, in_b: boolean masks ``[B]`` of the two states (need not cover every sample).
        n_bootstrap: bootstrap resamples for the error (standard deviation of the replicates).
        block_size: resample blocks of this many consecutive samples (for correlated MD data).
        seed: seed of the bootstrap.

    Returns ``value = +inf`` (or ``-inf``) when state B (or A) holds no weight; the error is then
    ``nan``: no finite estimate exists from these samples.
    """
    in_a = np.asarray(in_a, dtype=bool).reshape(-1)
    in_b = np.asarray(in_b, dtype=bool).reshape(-1)
    if in_a.shape != in_b.shape:
        raise ValueError(f"state masks differ in length: {in_a.shape[0]} vs {in_b.shape[0]}")
    n = in_a.shape[0]
    log_w = _log_weights(log_w, n)

    def delta_f(lw_a: np.ndarray, lw_b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return -(_logsumexp(lw_b) - _logsumexp(lw_a))

    lw_a = np.where(in_a, log_w, -np.inf)
    lw_b = np.where(in_b, log_w, -np.inf)
    value = float(delta_f(lw_a, lw_b))
    if not np.isfinite(value):
        return FreeEnergyEstimate(value, float("nan"), 0)
    rng = np.random.default_rng(seed)
    idx = _bootstrap_indices(n, n_bootstrap, block_size, rng)
    replicates = delta_f(lw_a[idx], lw_b[idx])
    replicates = replicates[np.isfinite(replicates)]
    error = float(np.std(replicates, ddof=1)) if replicates.size > 1 else float("nan")
    return FreeEnergyEstimate(value, error, int(replicates.size))


@dataclass(frozen=True)
class FreeEnergyProfile:
    """A free-energy profile F(cv) = -ln p(bin) shifted to min 0, with bootstrap errors (kT)."""

    bin_edges: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray

    @property
    def bin_centers(self) -> np.ndarray:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])


def free_energy_profile(
    cv, log_w=None, *, bins=60, range=None, n_bootstrap: int = 100, block_size: int = 1, seed: int = 0
) -> FreeEnergyProfile:
    """Profile ``F = -ln(p_bin / width)`` along a 1-D collective variable, min shifted to 0.

    Args:
        cv: values ``[B]`` of the collective variable.
        log_w: log weights ``[B]`` or None.
        bins, range: as for ``numpy.histogram`` (bin edges or a count with a range).

    Empty bins get ``+inf`` free energy and ``nan`` error.
    """
    cv = np.asarray(cv, dtype=np.float64).reshape(-1)
    log_w = _log_weights(log_w, cv.shape[0])
    edges = np.histogram_bin_edges(cv, bins=bins, range=range)
    which = np.digitize(cv, edges[1:-1])
    inside = (cv >= edges[0]) & (cv <= edges[-1])
    widths = np.diff(edges)

    def profile(lw: np.ndarray, which_: np.ndarray, inside_: np.ndarray) -> np.ndarray:
        lw = np.where(inside_, lw, -np.inf)
        top = np.max(lw)
        if not np.isfinite(top):
            return np.full(len(widths), np.inf)
        mass = np.bincount(which_, weights=np.exp(lw - top), minlength=len(widths))
        with np.errstate(divide="ignore"):
            return -np.log(mass / mass.sum() / widths)

    f = profile(log_w, which, inside)
    shift = np.min(f[np.isfinite(f)]) if np.isfinite(f).any() else 0.0
    rng = np.random.default_rng(seed)
    idx = _bootstrap_indices(cv.shape[0], n_bootstrap, block_size, rng)
    replicates = np.stack([profile(log_w[i], which[i], inside[i]) - shift for i in idx])
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(replicates)
        count = finite.sum(0)
        mean = np.where(finite, replicates, 0.0).sum(0) / np.maximum(count, 1)
        var = np.where(finite, (replicates - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    error = np.where(count > 1, np.sqrt(var), np.nan)
    return FreeEnergyProfile(edges, f - shift, np.where(np.isfinite(f), error, np.nan))
