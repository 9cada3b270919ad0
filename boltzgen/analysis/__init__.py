"""Analysis: free energies with error bars (reweighting, LFEP/BAR, MBAR over temperature
ladders), sample-quality metrics, plots."""

from boltzgen.analysis.free_energy import (
    FreeEnergyEstimate,
    FreeEnergyProfile,
    free_energy_difference,
    free_energy_profile,
)
from boltzgen.analysis.metrics import energy_w2, resample_indices, torsion_w2, wasserstein2_1d
from boltzgen.analysis.perturbation import PerturbationEstimate, bar, ess_with_error, lfep
from boltzgen.analysis.temperature_ladder import (
    LadderFreeEnergies,
    LadderSamples,
    mbar_temperature_ladder,
    md_ladder_free_energies,
    reduced_potentials,
    run_temperature_ladder,
    temperature_ladder,
)

__all__ = [
    "FreeEnergyEstimate",
    "FreeEnergyProfile",
    "energy_w2",
    "free_energy_difference",
    "free_energy_profile",
    "resample_indices",
    "torsion_w2",
    "wasserstein2_1d",
    # free energy perturbation between two ensembles
    "PerturbationEstimate",
    "bar",
    "ess_with_error",
    "lfep",
    # temperature ladders + MBAR
    "LadderFreeEnergies",
    "LadderSamples",
    "mbar_temperature_ladder",
    "md_ladder_free_energies",
    "reduced_potentials",
    "run_temperature_ladder",
    "temperature_ladder",
]
