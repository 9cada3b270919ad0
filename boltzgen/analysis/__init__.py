"""Analysis: free energies with error bars, sample-quality metrics, plots."""

from boltzgen.analysis.free_energy import (
    FreeEnergyEstimate,
    FreeEnergyProfile,
    free_energy_difference,
    free_energy_profile,
)
from boltzgen.analysis.metrics import energy_w2, resample_indices, torsion_w2, wasserstein2_1d

__all__ = [
    "FreeEnergyEstimate",
    "FreeEnergyProfile",
    "energy_w2",
    "free_energy_difference",
    "free_energy_profile",
    "resample_indices",
    "torsion_w2",
    "wasserstein2_1d",
]
