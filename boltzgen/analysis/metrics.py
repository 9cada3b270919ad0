"""Sample-quality metrics exactly as BENCHMARKS.md defines them: E-W2 and T-W2.

- E-W2: sqrt of the 1-D squared Wasserstein-2 distance between reduced energies (kT) of generated
  samples (resampled by weight) and reference frames.
- T-W2: exact optimal transport with uniform weights between vectors of backbone torsions, ground
  cost ``sum_dims min(|d|, 2 pi - |d|)^2``, then the square root.
"""

from __future__ import annotations

import numpy as np


def resample_indices(log_w, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices drawn with replacement with probabilities proportional to ``exp(log_w)``."""
    log_w = np.asarray(log_w, dtype=np.float64).reshape(-1)
    finite = np.isfinite(log_w)
    if not finite.any():
        raise ValueError("cannot resample: no sample has a finite log weight")
    p = np.where(finite, np.exp(log_w - np.max(log_w[finite])), 0.0)
    return np.random.default_rng(seed).choice(log_w.shape[0], size=n, replace=True, p=p / p.sum())


def representative_indices(log_w, size: int, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` samples that represent the (weighted) ensemble.

    Weighted samples (``log_w`` given) are resampled with replacement by weight; unweighted ones
    are used as they are, or subsampled without replacement when there are more than ``n``.
    """
    if log_w is not None:
        return resample_indices(log_w, n, seed)
    if size <= n:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, n, replace=False))


def wasserstein2_1d(a, b) -> float:
    """Exact W2 distance between two 1-D empirical distributions with uniform weights.

    Uses the quantile functions: ``W2^2 = int_0^1 (F_a^-1(t) - F_b^-1(t))^2 dt``, evaluated exactly
    on the union of both samples' quantile breakpoints (sizes may differ).
    """
    a = np.sort(np.asarray(a, dtype=np.float64).reshape(-1))
    b = np.sort(np.asarray(b, dtype=np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein2_1d needs non-empty samples")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("wasserstein2_1d needs finite values")
    t = np.union1d(np.arange(1, a.size + 1) / a.size, np.arange(1, b.size + 1) / b.size)
    dt = np.diff(np.concatenate([[0.0], t]))
    mid = t - dt / 2
    qa = a[np.minimum((mid * a.size).astype(int), a.size - 1)]
    qb = b[np.minimum((mid * b.size).astype(int), b.size - 1)]
    return float(np.sqrt(np.sum(dt * (qa - qb) ** 2)))


def energy_w2(
    u_generated, u_reference, log_w=None, n: int = 10_000, seed: int = 0, reference_log_w=None
) -> float:
    """E-W2 (kT): generated energies resampled by ``log_w`` to ``n`` samples vs up to ``n`` reference.

    Non-finite generated energies carry no weight (pass their log weights as -inf). Weighted
    reference frames (``reference_log_w``) are resampled by weight in the same way.
    """
    u_generated = np.asarray(u_generated, dtype=np.float64).reshape(-1)
    u_reference = np.asarray(u_reference, dtype=np.float64).reshape(-1)
    if log_w is None and not np.isfinite(u_generated).all():
        log_w = np.where(np.isfinite(u_generated), 0.0, -np.inf)
    gen = u_generated[representative_indices(log_w, u_generated.size, n, seed)]
    ref = u_reference[representative_indices(reference_log_w, u_reference.size, n, seed + 1)]
    return wasserstein2_1d(gen, ref)


def torus_cost_matrix(a, b) -> np.ndarray:
    """``[n, m]`` cost ``sum_dims min(|d|, 2 pi - |d|)^2`` between angle vectors (radians)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"angle arrays must be [n, k] and [m, k], got {a.shape} and {b.shape}")
    cost = np.zeros((a.shape[0], b.shape[0]))
    for k in range(a.shape[1]):
        d = np.abs(a[:, k, None] - b[None, :, k]) % (2 * np.pi)
        cost += np.minimum(d, 2 * np.pi - d) ** 2
    return cost


def torsion_w2(
    angles_generated, angles_reference, log_w=None, n: int = 10_000, seed: int = 0, reference_log_w=None
) -> float:
    """T-W2 (radians): exact OT (POT's network simplex) between resampled generated and reference torsions.

    Args:
        angles_generated: ``[B, k]`` backbone torsions (radians) of generated samples.
        angles_reference: ``[M, k]`` reference torsions; up to ``n`` are used.
        log_w: log weights of the generated samples (resampled to ``n``), or None (then up
            to ``n`` samples are used as they are).
        reference_log_w: log weights of the reference frames (resampled to ``n``), or None.
    """
    import ot

    gen = np.asarray(angles_generated, dtype=np.float64)
    ref = np.asarray(angles_reference, dtype=np.float64)
    gen = gen[representative_indices(log_w, gen.shape[0], n, seed)]
    ref = ref[representative_indices(reference_log_w, ref.shape[0], n, seed + 1)]
    cost = torus_cost_matrix(gen, ref)
    a = np.full(gen.shape[0], 1.0 / gen.shape[0])
    b = np.full(ref.shape[0], 1.0 / ref.shape[0])
    return float(np.sqrt(ot.emd2(a, b, cost, numItermax=10_000_000)))
