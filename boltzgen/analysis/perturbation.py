"""Free-energy differences between two ensembles from (learned) perturbation works: LFEP and BAR.

Two ensembles A (the "base", e.g. MD at a high temperature) and B (the "target", a lower
temperature), with reduced energies ``u_A``, ``u_B`` (each in the kT of its own ensemble) and
reduced free energies ``F = -log Z``. A flow ``f`` maps A's configurations onto B's (the identity
is standard free-energy perturbation, FEP; a trained flow is "learned FEP", LFEP). Conventions,
all in kT (nats):

- forward work of ``x ~ p_A``: ``W_F = u_B(f(x)) - u_A(x) - log|det J_f(x)|``;
- reverse work of ``y ~ p_B``: ``W_R = u_A(f^-1(y)) - u_B(y) - log|det J_f^-1(y)|``;
- ``dF = F_B - F_A = -log(Z_B / Z_A)``, and the identities ``E_A[exp(-W_F)] = exp(-dF)``,
  ``E_B[exp(-W_R)] = exp(+dF)``; Crooks: ``p_F(W) / p_R(-W) = exp(W - dF)``.

So ``mean(W_F) >= dF >= -mean(W_R)``, and a perfect map has ``W_F = dF`` and ``W_R = -dF`` on
every sample. This is the convention of ``pymbar.other_estimators.bar(w_F, w_R)`` (its
``Delta_f`` is ``f_B - f_A``). `boltzgen.train.temperature_change` computes the works.

Errors are bootstrap standard deviations (samples resampled with replacement; pass
``block_size`` > 1 to resample contiguous blocks of time-correlated samples, as in
`boltzgen.analysis.free_energy`). Everything is in float64 and log space, so works of hundreds of
kT (ice: dF ~ -670 kT) neither overflow nor lose precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from boltzgen.analysis.free_energy import _bootstrap_indices, _logsumexp

#: Default number of bootstrap resamples.
DEFAULT_BOOTSTRAP = 200


class PerturbationEstimate(NamedTuple):
    """``dF = F_target - F_base`` in kT and its bootstrap standard error (kT); unpacks as ``(dF, err)``."""

    value: float
    error: float


def _as_float64(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _check_log_weights(log_w) -> np.ndarray:
    log_w = _as_float64(log_w)
    if log_w.size == 0:
        raise ValueError("lfep needs at least one log weight")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError("log weights must not contain NaN or +inf (use -inf for samples with zero weight)")
    return log_w


def _check_works(works, name: str) -> np.ndarray:
    works = _as_float64(works)
    if works.size == 0:
        raise ValueError(f"{name} is empty: BAR needs samples of both ensembles")
    if np.isnan(works).any() or np.isneginf(works).any():
        raise ValueError(f"{name} must not contain NaN or -inf (use +inf for samples with zero weight)")
    if not np.isfinite(works).any():
        raise ValueError(f"every entry of {name} is +inf: no sample has a usable weight")
    return works


def _std(replicates: np.ndarray) -> tuple[float, int]:
    replicates = replicates[np.isfinite(replicates)]
    return (float(np.std(replicates, ddof=1)) if replicates.size > 1 else math.nan), int(replicates.size)


def _bootstrap_error(estimate, log_w: np.ndarray, n_bootstrap: int, block_size: int, seed: int) -> float:
    """Standard deviation of ``estimate`` (a function of log weights ``[..., N]``) over bootstrap
    resamples of ``log_w`` ``[N]``; ``nan`` with fewer than 2 resamples."""
    if n_bootstrap < 2:
        return math.nan
    idx = _bootstrap_indices(log_w.size, n_bootstrap, block_size, np.random.default_rng(seed))
    return _std(estimate(log_w[idx]))[0]


def lfep(
    log_w_forward, *, n_bootstrap: int = DEFAULT_BOOTSTRAP, block_size: int = 1, seed: int = 0
) -> PerturbationEstimate:
    """(Learned) free-energy perturbation ``dF = -log mean(w)`` from base samples, with a bootstrap error.

    Args:
        log_w_forward: log weights ``log w = -W_F`` ``[N]`` of the base samples pushed through the
            flow (numpy or torch; ``-inf`` for a sample with zero weight, e.g. a failed energy; it
            still counts in the mean).
        n_bootstrap: bootstrap resamples (0: no error, ``nan``).
        block_size: resample blocks of this many consecutive samples (time-correlated MD data).
        seed: seed of the bootstrap.

    Returns:
        ``(dF, err)`` with ``dF = F_target - F_base`` in kT (``+inf`` and ``nan`` if every weight is 0).
    """
    log_w = _check_log_weights(log_w_forward)
    n = log_w.size

    def estimate(lw: np.ndarray) -> np.ndarray:
        return -(_logsumexp(lw, axis=-1) - math.log(n))

    value = float(estimate(log_w))
    if not np.isfinite(value):
        return PerturbationEstimate(value, math.nan)
    return PerturbationEstimate(value, _bootstrap_error(estimate, log_w, n_bootstrap, block_size, seed))


def ess_with_error(
    log_w, *, n_bootstrap: int = DEFAULT_BOOTSTRAP, block_size: int = 1, seed: int = 0
) -> PerturbationEstimate:
    """Normalised Kish ESS ``(sum w)^2 / (N sum w^2)`` of log weights ``[N]`` with a bootstrap error.

    The ESS of heavy-tailed weights fluctuates strongly between sample sets (a few large weights
    decide it), so a single value says little without its spread. Same bootstrap as `lfep`
    (``block_size`` > 1 for time-correlated samples); ``-inf`` weights count in ``N``.
    Returns ``(ess, err)``; ``(0, nan)`` if every weight is 0.
    """
    log_w = _check_log_weights(log_w)
    n = log_w.size

    def estimate(lw: np.ndarray) -> np.ndarray:
        return np.exp(2 * _logsumexp(lw, axis=-1) - _logsumexp(2 * lw, axis=-1) - math.log(n))

    if not np.isfinite(log_w).any():
        return PerturbationEstimate(0.0, math.nan)
    return PerturbationEstimate(float(estimate(log_w)), _bootstrap_error(estimate, log_w, n_bootstrap, block_size, seed))


def _bar_objective(
    delta_f: np.ndarray, w_f: np.ndarray, w_r: np.ndarray, log_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """The BAR equation in log space and its derivative, for ``R`` problems at once.

    ``g(dF) = log sum_i s(M + W_F,i - dF) - log sum_j s(-M + W_R,j + dF)``, ``s(a) = 1 / (1 + e^a)``,
    ``M = log(n_F / n_R)``: strictly increasing in dF, zero at the BAR estimate. Shapes:
    ``delta_f`` ``[R]``, ``w_f`` ``[R, n_F]``, ``w_r`` ``[R, n_R]``; returns ``g``, ``dg/d dF`` ``[R]``.
    """
    a = log_ratio + w_f - delta_f[:, None]
    b = -log_ratio + w_r + delta_f[:, None]
    log_s_f = -np.logaddexp(0.0, a)
    log_s_r = -np.logaddexp(0.0, b)
    sum_f = _logsumexp(log_s_f, axis=-1)
    sum_r = _logsumexp(log_s_r, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        # d/d dF of each log-sum: softmax-weighted logistic functions (0 * finite for +inf works)
        sig_a = np.exp(-np.logaddexp(0.0, -a))
        sig_b = np.exp(-np.logaddexp(0.0, -b))
        soft_f = np.exp(log_s_f - sum_f[:, None])
        soft_r = np.exp(log_s_r - sum_r[:, None])
        slope = np.nansum(soft_f * sig_a, axis=-1) + np.nansum(soft_r * sig_b, axis=-1)
    return sum_f - sum_r, slope


def _solve_bar(
    w_f: np.ndarray, w_r: np.ndarray, log_ratio: float, start: np.ndarray, tol: float = 1e-12, max_iter: int = 200
) -> np.ndarray:
    """Roots ``[R]`` of :func:`_bar_objective` by Newton's method safeguarded with bisection.

    A bracket ``[lo, hi]`` with ``g(lo) <= 0 <= g(hi)`` is found by doubling steps from ``start``
    (``g`` is monotone and goes from -inf to +inf, so it exists whenever both sets hold a finite
    work); Newton steps that leave the bracket are replaced by bisection. Problems without a
    finite work on either side get ``nan``.
    """
    n_problems = start.shape[0]
    ok = np.isfinite(w_f).any(axis=1) & np.isfinite(w_r).any(axis=1)
    lo, hi = start.astype(np.float64) - 1.0, start.astype(np.float64) + 1.0
    for bound, sign in ((lo, 1.0), (hi, -1.0)):
        width = np.full(n_problems, 2.0)
        for _ in range(200):
            g, _ = _bar_objective(bound, w_f, w_r, log_ratio)
            outside = ok & (sign * g > 0)  # lo must have g <= 0, hi g >= 0
            if not outside.any():
                break
            bound[outside] -= sign * width[outside]
            width[outside] *= 2.0
        else:
            raise RuntimeError("could not bracket the BAR equation (are the works finite?)")
    x = np.clip(start.astype(np.float64), lo, hi)
    for _ in range(max_iter):
        g, slope = _bar_objective(x, w_f, w_r, log_ratio)
        hi = np.where(g >= 0, x, hi)
        lo = np.where(g <= 0, x, lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - g / slope
        inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
        x_new = np.where(inside, newton, 0.5 * (lo + hi))
        x_new = np.where(g == 0, x, x_new)
        done = np.abs(x_new - x) <= tol * (1.0 + np.abs(x))
        x = x_new
        if np.all(done | ~ok):
            break
    return np.where(ok, x, np.nan)


def bar(
    w_forward_work,
    w_reverse_work,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    block_size: int = 1,
    seed: int = 0,
) -> PerturbationEstimate:
    """Bennett acceptance ratio ``dF = F_target - F_base`` from forward and reverse works.

    Solves ``sum_i 1 / (1 + (n_F/n_R) exp(W_F,i - dF)) = sum_j 1 / (1 + (n_R/n_F) exp(W_R,j + dF))``
    (the maximum-likelihood estimate given both work sets; Bennett 1976, Shirts et al. 2003) in
    float64 log space, and bootstraps the error by resampling both work sets independently.

    Args:
        w_forward_work: ``W_F = u_T(f(x)) - u_B(x) - log|det J_f(x)|`` ``[n_F]`` (kT) on base samples.
        w_reverse_work: ``W_R = u_B(f^-1(y)) - u_T(y) - log|det J_f^-1(y)|`` ``[n_R]`` (kT) on target
            samples. ``+inf`` marks a sample with zero weight (failed evaluation); NaN and -inf raise.
        n_bootstrap: bootstrap resamples (0: no error, ``nan``).
        block_size: resample blocks of consecutive samples (for time-correlated samples).
        seed: seed of the bootstrap.

    Returns:
        ``(dF, err)`` in kT. Agrees with ``pymbar.other_estimators.bar(w_F, w_R)["Delta_f"]``.
    """
    w_f = _check_works(w_forward_work, "w_forward_work")
    w_r = _check_works(w_reverse_work, "w_reverse_work")
    log_ratio = math.log(w_f.size / w_r.size)
    guess = 0.5 * (np.median(w_f[np.isfinite(w_f)]) - np.median(w_r[np.isfinite(w_r)]))
    value = float(_solve_bar(w_f[None], w_r[None], log_ratio, np.array([guess]))[0])
    if n_bootstrap < 2:
        return PerturbationEstimate(value, math.nan)
    rng = np.random.default_rng(seed)
    idx_f = _bootstrap_indices(w_f.size, n_bootstrap, block_size, rng)
    idx_r = _bootstrap_indices(w_r.size, n_bootstrap, block_size, rng)
    replicates = _solve_bar(w_f[idx_f], w_r[idx_r], log_ratio, np.full(n_bootstrap, value))
    error, _ = _std(replicates)
    return PerturbationEstimate(value, error)
