"""``summary.json`` of an MD run: amount simulated, speed, and backbone-phi basin populations.

For peptides, every backbone phi angle (``mdtraj.compute_phi``) gets the number and fraction of
frames with phi > 0 (the alpha_L / C7ax basin of alanine dipeptide), in total and per replica, and
block averages over time (all replicas pooled per block) with their standard error, so a reader
can see whether the rare basin was visited and whether its population converged.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from boltzgen.md.config import MDConfig
from boltzgen.md.storage import RunDirectory

#: Number of time blocks for the block averages of the phi > 0 fraction.
N_BLOCKS = 10


def phi_angles(topology, positions_nm: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Backbone phi angles of a stream of position chunks.

    Args:
        topology: ``mdtraj.Topology``.
        positions_nm: chunks ``[n, N, 3]`` nm, in frame order.

    Returns:
        ``(indices, phi)``: atom indices ``[K, 4]`` of the K phi angles and the angles
        ``[F, K]`` in radians in (-pi, pi]. K is 0 for a molecule without a backbone phi.
    """
    import mdtraj

    indices = None
    angles = []
    for chunk in positions_nm:
        trajectory = mdtraj.Trajectory(np.asarray(chunk, dtype=np.float32), topology)
        if indices is None:
            indices, _ = mdtraj.compute_phi(trajectory[:1])
            indices = np.asarray(indices, dtype=np.int64).reshape(-1, 4)
        if len(indices):
            angles.append(mdtraj.compute_dihedrals(trajectory, indices))
    if indices is None:
        indices = np.zeros((0, 4), dtype=np.int64)
    if not angles:
        return indices, np.zeros((0, len(indices)))
    return indices, np.concatenate(angles, axis=0)


def _fraction_sem(values: np.ndarray) -> float | None:
    """Standard error of the mean of ``values`` (None for fewer than two)."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def phi_positive_statistics(
    topology, phi_per_replica: Sequence[np.ndarray], indices: np.ndarray, frame_interval_ps: float
) -> list[dict[str, Any]]:
    """Counts, fractions and block averages of phi > 0, one dict per phi angle.

    Args:
        topology: ``mdtraj.Topology`` (names the residue of each angle).
        phi_per_replica: R arrays ``[F, K]`` of phi in radians (same F for every replica).
        indices: ``[K, 4]`` atom indices of the angles.
        frame_interval_ps: time between frames (for the block length).
    """
    phi = np.stack(phi_per_replica)  # [R, F, K]
    n_replicas, n_frames = phi.shape[:2]
    n_blocks = min(N_BLOCKS, n_frames)
    blocks = np.array_split(np.arange(n_frames), n_blocks)
    statistics = []
    for k, atoms in enumerate(indices):
        positive = phi[:, :, k] > 0  # [R, F]
        per_replica = positive.sum(axis=1)
        block_fractions = np.array([positive[:, block].mean() for block in blocks])
        replica_fractions = positive.mean(axis=1)
        statistics.append(
            {
                "residue": str(topology.atom(int(atoms[1])).residue),
                "atom_indices": [int(a) for a in atoms],
                "n_frames_phi_positive": int(per_replica.sum()),
                "fraction_phi_positive": float(positive.mean()),
                "n_frames_phi_positive_per_replica": [int(n) for n in per_replica],
                "fraction_phi_positive_per_replica": [float(f) for f in replica_fractions],
                "fraction_phi_positive_replica_sem": _fraction_sem(replica_fractions),
                "block_length_ps": float(n_frames / n_blocks * frame_interval_ps),
                "fraction_phi_positive_blocks": [float(f) for f in block_fractions],
                "fraction_phi_positive_block_sem": _fraction_sem(block_fractions),
            }
        )
    return statistics


def speed_statistics(
    simulated_ns: float, wall_s: float, core_s: float, production_ns: float, production_s: float
) -> dict[str, float | None]:
    """Throughput in ns/day.

    Args:
        simulated_ns: production time simulated, all replicas.
        wall_s: wall time of all sessions (start-up, minimisation, warm-up and merging included).
        core_s: sum over sessions of wall time x worker processes (one core each).
        production_ns, production_s: production time and the seconds the workers spent on it
            (integration and frame evaluation only, summed over replicas).
    """

    def per_day(ns: float, seconds: float) -> float | None:
        return float(ns / seconds * 86400.0) if seconds > 0 else None

    return {
        "ns_per_day": per_day(simulated_ns, wall_s),
        "ns_per_day_per_core": per_day(simulated_ns, core_s),
        "production_ns_per_day_per_core": per_day(production_ns, production_s),
    }


def run_summary(
    run: RunDirectory, config: MDConfig, topology, wall_s: float, core_s: float, n_workers: int
) -> dict[str, Any]:
    """The contents of ``summary.json``, computed from the replicas' committed chunks.

    Args:
        run: the run directory (work areas still present).
        config: the run's settings.
        topology: ``mdtraj.Topology`` of the system.
        wall_s, core_s: wall seconds and core seconds of all sessions (`SessionRecord.totals`).
        n_workers: worker processes of this session.
    """
    stores = [run.replica_store(r) for r in range(config.n_replicas)]
    indices, phi_per_replica = np.zeros((0, 4), dtype=np.int64), []
    for store in stores:
        indices, phi = phi_angles(topology, store.iter_frames("positions"))
        phi_per_replica.append(phi)
    production_s = sum(store.read_progress(with_checkpoint=False).production_wall_s for store in stores)
    simulated_ns = config.ns * config.n_replicas
    summary: dict[str, Any] = {
        "system": config.system,
        "n_replicas": config.n_replicas,
        "n_frames": config.n_frames * config.n_replicas,
        "n_frames_per_replica": config.n_frames,
        "frame_interval_ps": config.frame_interval_ps,
        "simulated_ns": simulated_ns,
        "simulated_ns_per_replica": config.ns,
        "wall_s": wall_s,
        **speed_statistics(simulated_ns, wall_s, core_s, simulated_ns, production_s),
        "platform": config.platform,
        "n_workers": n_workers,
        "seed": config.seed,
    }
    if len(indices):
        summary["phi_positive"] = phi_positive_statistics(topology, phi_per_replica, indices, config.frame_interval_ps)
    return summary
