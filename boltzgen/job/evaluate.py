"""Evaluate a trained molecular generator: weights, ESS, dF(phi), profile, E-W2, T-W2, plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from boltzgen.analysis import energy_w2, free_energy_difference, free_energy_profile, torsion_w2
from boltzgen.analysis import plots
from boltzgen.analysis.free_energy import FreeEnergyProfile
from boltzgen.geometry import dihedrals
from boltzgen.job.data import MolecularData
from boltzgen.job.model import in_support
from boltzgen.job.samplers import SampleSet


def backbone_torsion_atoms(mdtraj_topology) -> tuple[np.ndarray, np.ndarray]:
    """Atom quadruples ``[k, 4]`` of the backbone phi and psi torsions (mdtraj's definitions)."""
    import mdtraj

    frame = mdtraj.Trajectory(np.zeros((1, mdtraj_topology.n_atoms, 3)), mdtraj_topology)
    phi, _ = mdtraj.compute_phi(frame)
    psi, _ = mdtraj.compute_psi(frame)
    if len(phi) == 0 or len(psi) == 0:
        raise ValueError("the molecule has no backbone phi/psi torsions")
    return np.asarray(phi), np.asarray(psi)


def phi_psi(x, phi_atoms: np.ndarray, psi_atoms: np.ndarray) -> np.ndarray:
    """Backbone torsions ``[B, 2k]`` (radians; all phi, then all psi) of configurations ``[B, 3N]`` nm."""
    x = torch.as_tensor(x).detach().cpu().double()
    xyz = x.reshape(x.shape[0], -1, 3)
    quadruples = torch.as_tensor(np.concatenate([phi_atoms, psi_atoms]), dtype=torch.long)
    return dihedrals(xyz, quadruples).numpy()


def basin_log_weights(phi: np.ndarray, delta_f_kT: float) -> np.ndarray:
    """Log weights that give frames the equilibrium basin populations ``P(phi>0) = 1/(1+e^dF)``.

    Within each basin the frames keep equal weights (plain MD equilibrates within a basin); the
    basins' total weights are set from the reference free-energy difference.
    """
    positive = phi > 0
    p_positive = 1.0 / (1.0 + math.exp(delta_f_kT))
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"reference frames must cover both basins (phi>0: {n_pos}, phi<0: {n_neg})")
    return np.where(positive, math.log(p_positive / n_pos), math.log((1 - p_positive) / n_neg))


def held_out_nll_per_dim(generator, positions: np.ndarray, device, batch_size: int = 4096) -> tuple[float, int]:
    """Mean NLL per internal dimension (nats) on held-out frames inside the model's support, and
    the number of frames outside it (zero density, excluded)."""
    x = torch.as_tensor(positions, dtype=torch.get_default_dtype())
    inside = in_support(generator, x)
    x = x[inside]
    total = 0.0
    n_dims = generator.prior.dim
    with torch.no_grad():
        for batch in torch.split(x, batch_size):
            total += float(-generator.log_prob(batch.to(device)).sum())
    return total / max(len(x), 1) / n_dims, int((~inside).sum())


def evaluate(
    generator,
    held_out: MolecularData,
    mdtraj_topology,
    *,
    samples: SampleSet,
    n_metric_samples: int,
    n_bootstrap: int,
    reference_delta_f: Optional[tuple[float, float]],
    reference_profile: Optional[FreeEnergyProfile],
    out_dir: Path,
    device,
    seed: int = 0,
) -> dict:
    """Analyse ``samples`` (from `boltzgen.job.samplers.draw_samples`); write plots into
    ``out_dir``; return summary numbers.

    ``reference_delta_f`` = (dF, error) in kT for phi > 0 vs phi < 0 (umbrella sampling), used to
    give the held-out reference frames their equilibrium basin populations in E-W2 / T-W2.
    """
    generator.eval()
    x, log_w, u = samples.x, samples.log_w, samples.u
    weights = samples.proposal_weights
    phi_atoms, psi_atoms = backbone_torsion_atoms(mdtraj_topology)
    angles = phi_psi(x, phi_atoms[:1], psi_atoms[:1])
    delta_f = free_energy_difference(log_w, angles[:, 0] < 0, angles[:, 0] > 0, n_bootstrap=n_bootstrap, seed=seed)

    ref_angles = phi_psi(held_out.positions, phi_atoms[:1], psi_atoms[:1])
    ref_log_w = None
    both_basins = bool((ref_angles[:, 0] > 0).any() and (ref_angles[:, 0] < 0).any())
    if reference_delta_f is not None and both_basins:
        ref_log_w = basin_log_weights(ref_angles[:, 0], reference_delta_f[0])
    all_angles = phi_psi(x, phi_atoms, psi_atoms)
    all_ref_angles = phi_psi(held_out.positions, phi_atoms, psi_atoms)
    e_w2 = energy_w2(u, held_out.reduced_energy, log_w, n=n_metric_samples, seed=seed, reference_log_w=ref_log_w)
    t_w2 = torsion_w2(all_angles, all_ref_angles, log_w, n=n_metric_samples, seed=seed, reference_log_w=ref_log_w)
    nll, n_outside = held_out_nll_per_dim(generator, held_out.positions, device)

    edges = reference_profile.bin_edges if reference_profile is not None else np.linspace(-np.pi, np.pi, 37)
    bg_profile = free_energy_profile(angles[:, 0], log_w, bins=edges, n_bootstrap=min(n_bootstrap, 100), seed=seed)
    profiles = {"Boltzmann generator (reweighted)": bg_profile}
    if reference_profile is not None:
        profiles = {"reference (umbrella + MBAR)": reference_profile, **profiles}
    plots.free_energy_profiles(profiles, out_dir / "phi_free_energy.png")
    plots.ramachandran(ref_angles, angles, log_w, out_dir / "ramachandran.png")
    plots.energy_histograms(held_out.reduced_energy, u, log_w, out_dir / "energy_histogram.png")

    summary = {
        **weights.as_dict(),
        "n_final_samples": int(len(log_w)),
        "n_final_dropped": int((~np.isfinite(log_w)).sum()),
        "delta_f_kT": delta_f.value,
        "delta_f_err_kT": delta_f.error,
        "reference_delta_f_kT": None if reference_delta_f is None else reference_delta_f[0],
        "reference_delta_f_err_kT": None if reference_delta_f is None else reference_delta_f[1],
        "delta_f_error_vs_reference_kT": None if reference_delta_f is None else delta_f.value - reference_delta_f[0],
        "e_w2": e_w2,
        "t_w2": t_w2,
        "held_out_nll_per_dim": nll,
        "held_out_frames_outside_support": n_outside,
        "n_samples_phi_positive": int((angles[:, 0] > 0).sum()),
        "n_held_out_phi_positive": int((ref_angles[:, 0] > 0).sum()),
        # True when the held-out frames were given the reference basin populations for E-W2/T-W2
        "reference_basin_weighting": ref_log_w is not None,
        "phi_profile": {
            "bin_edges_rad": bg_profile.bin_edges.tolist(),
            "free_energy_kT": bg_profile.free_energy.tolist(),
            "free_energy_err_kT": bg_profile.error.tolist(),
        },
    }
    return summary
