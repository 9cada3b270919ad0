"""Umbrella sampling along the backbone torsion phi, with MBAR, checks and errors from repeats.

``psi_windows > 1`` (``--psi-windows``) makes it a 2-D umbrella on (phi, psi): every phi window is
split into psi windows that restrain psi too (see `boltzgen.umbrella.config`).

- :func:`make_config` and :func:`run_umbrella` run (or resume) the windows of R independent repeats
  in parallel processes and analyse them (``boltzgen umbrella`` on the command line);
- :func:`mbar_phi_free_energy` is the MBAR analysis of one repeat (usable on any phi samples);
- `boltzgen.umbrella.diagnostics` holds the checks (drift, spread, overlap, psi mixing, repeats);
- `boltzgen.umbrella.storage` documents the files written.

Why the protocol looks like this (METHODS.md §0): windows narrow enough to stay unimodal over the
phi barriers, psi shown to relax inside the windows (or flagged), and an error bar from repeats
with other seeds and starting structures next to each repeat's own MBAR error.
"""

from boltzgen.umbrella.analysis import UmbrellaAnalysis, UmbrellaData, analyse
from boltzgen.umbrella.config import (
    DEFAULT_PS_PER_WINDOW,
    DEFAULT_REPEATS,
    UmbrellaConfig,
    default_psi_force_constant,
)
from boltzgen.umbrella.mbar import PhiFreeEnergy, mbar_phi_free_energy
from boltzgen.umbrella.restraint import backbone_torsions, bias_kj_mol, torsion_restraint, wrap_angle
from boltzgen.umbrella.runner import UmbrellaResult, make_config, run_umbrella

__all__ = [
    "DEFAULT_PS_PER_WINDOW",
    "DEFAULT_REPEATS",
    "PhiFreeEnergy",
    "UmbrellaAnalysis",
    "UmbrellaConfig",
    "UmbrellaData",
    "UmbrellaResult",
    "analyse",
    "backbone_torsions",
    "bias_kj_mol",
    "default_psi_force_constant",
    "make_config",
    "mbar_phi_free_energy",
    "run_umbrella",
    "torsion_restraint",
    "wrap_angle",
]
