"""Reference free energies between temperatures: MD on a temperature ladder + MBAR.

The flow's temperature-change estimate (`boltzgen.analysis.perturbation`) needs an independent
reference (METHODS.md §4): the reduced free energies ``F_k = -log Z_k``,
``Z_k = int exp(-U(x) / kT_k) dx`` (configurational; the same U at every temperature), of a
ladder of temperatures, from MD at each temperature and MBAR (pymbar 4) with
``u_kn = U(x_n) / kT_k``. The published ice XI (N = 16) value dF(250 -> 100 K) = -669.711 kT is
``F_100 - F_250`` in this convention: :func:`mbar_temperature_ladder` returns
``F_k - F_0`` with the first temperature as the reference, so a ladder that starts at 250 K and
ends at 100 K (:func:`temperature_ladder`) gives it as its last entry.

MD protocol of :func:`run_temperature_ladder` (OpenMM ``LangevinMiddleIntegrator``, one
temperature after the other in this process, seeded): minimise the system's positions once;
then for each temperature start from the minimised positions with velocities drawn at that
temperature, integrate ``equilibration_steps`` (discarded), and save the potential energy
(kJ/mol) every ``stride_steps`` steps. Samples are decorrelated by the stride only; the
statistical inefficiency ``g`` (in saved samples, `pymbar.timeseries`) of each temperature's
energy series is returned so that the stride can be checked: MBAR's analytical errors assume
independent samples, so they are trustworthy when ``g`` is close to 1 and too small by about
``sqrt(g)`` otherwise (lengthen the stride, or pass ``uncertainty="bootstrap"`` after subsampling).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from boltzgen.progress import progress_bar
from boltzgen.units import kt_kj_per_mol


def _pymbar():
    """pymbar without its import-time chatter (JAX missing, timeseries caveats), as in `boltzgen.umbrella.mbar`."""
    for name in ("pymbar", "pymbar.mbar_solvers", "pymbar.timeseries", "pymbar.mbar"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import pymbar
    import pymbar.timeseries

    return pymbar


def temperature_ladder(n: int, t_high: float, t_low: float) -> np.ndarray:
    """``[n]`` temperatures (K) from ``t_high`` down to ``t_low`` with a constant ratio.

    ``T_k = t_high * (t_low / t_high)^(k / (n - 1))``: for a constant heat capacity, neighbouring
    temperatures then overlap equally (the reduced energy difference ``U (1/kT_k+1 - 1/kT_k)``
    scales like ``1 / T``). The first entry is ``t_high`` (the base ensemble of a
    temperature-change flow), the last ``t_low``.
    """
    if int(n) < 2:
        raise ValueError(f"a temperature ladder needs n >= 2 temperatures, got {n!r}")
    if not (t_high > 0 and t_low > 0):
        raise ValueError(f"temperatures must be positive (K), got {t_high!r} and {t_low!r}")
    return float(t_high) * (float(t_low) / float(t_high)) ** (np.arange(int(n)) / (int(n) - 1))


@dataclass(frozen=True)
class LadderFreeEnergies:
    """MBAR free energies of a temperature ladder.

    Attributes:
        temperatures: ``[K]`` K.
        free_energies: ``[K]`` reduced free energies ``F_k - F_0`` (kT; ``F = -log Z`` of each
            temperature's own reduced ensemble); the first entry is 0.
        errors: ``[K]`` standard errors of ``F_k - F_0`` (kT; MBAR's analytical estimate, or its
            bootstrap), 0 for the first entry.
        neighbour_overlap: ``[K - 1]`` MBAR overlap ``O[k, k + 1]`` of neighbouring temperatures
            (0: no overlap, errors meaningless; above ~0.03 is usually fine).
        sample_counts: ``[K]`` samples per temperature.
    """

    temperatures: np.ndarray
    free_energies: np.ndarray
    errors: np.ndarray
    neighbour_overlap: np.ndarray
    sample_counts: np.ndarray

    def difference(self, i: int, j: int) -> tuple[float, float]:
        """``(F_j - F_i, error)`` in kT; the error treats the two entries as independent only when
        neither is the reference (use ``i = 0`` for MBAR's own error)."""
        value = float(self.free_energies[j] - self.free_energies[i])
        if i == 0 or j == 0:
            return value, float(self.errors[j] if i == 0 else self.errors[i])
        return value, float(math.hypot(self.errors[i], self.errors[j]))


def reduced_potentials(potential_energies_kj, temperatures) -> np.ndarray:
    """``u_kn = U_n / kT_k`` ``[K, N]`` (kT) from potential energies ``[N]`` (kJ/mol) and ``[K]`` K."""
    energies = np.asarray(potential_energies_kj, dtype=np.float64).reshape(-1)
    kt = np.array([kt_kj_per_mol(t) for t in np.asarray(temperatures, dtype=np.float64).reshape(-1)])
    return energies[None, :] / kt[:, None]


def mbar_temperature_ladder(
    potential_energies_kj,
    temperatures: Sequence[float],
    sample_counts: Sequence[int],
    *,
    uncertainty: str = "analytical",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> LadderFreeEnergies:
    """MBAR over samples of several temperatures of one potential.

    Args:
        potential_energies_kj: ``[N]`` potential energies U (kJ/mol) of all samples, grouped by
            temperature in the order of ``temperatures`` (``sample_counts[0]`` samples of the
            first temperature, then the second's, ...).
        temperatures: ``[K]`` K.
        sample_counts: ``[K]`` samples per temperature (summing to N; 0 allowed for a state
            without samples whose free energy is still wanted).
        uncertainty: ``"analytical"`` (MBAR's asymptotic covariance; assumes independent samples)
            or ``"bootstrap"`` (pymbar's bootstrap over samples, ``n_bootstrap`` resamples, seeded).

    Returns:
        `LadderFreeEnergies` with ``F_k - F_0`` (kT) and errors.
    """
    energies = np.asarray(potential_energies_kj, dtype=np.float64).reshape(-1)
    temperatures = np.asarray(temperatures, dtype=np.float64).reshape(-1)
    counts = np.asarray(sample_counts, dtype=np.int64).reshape(-1)
    if temperatures.size < 2 or counts.shape != temperatures.shape:
        raise ValueError(
            f"need K >= 2 temperatures and one sample count each, got {temperatures.size} and {counts.size}"
        )
    if (counts < 0).any() or counts.sum() != energies.size:
        raise ValueError(f"sample_counts {counts.tolist()} must be >= 0 and sum to the {energies.size} energies")
    if not np.isfinite(energies).all():
        raise ValueError("potential energies must be finite")
    if uncertainty not in ("analytical", "bootstrap"):
        raise ValueError(f"uncertainty must be 'analytical' or 'bootstrap', got {uncertainty!r}")
    pymbar = _pymbar()
    # pymbar starts its solver from f_k = 0 and fails to converge when the reduced free energies
    # differ by hundreds of kT (ice XI from 250 to 100 K: ~670). Shifting U by a constant U0 shifts
    # each reduced free energy exactly by -U0 / kT_k; with U0 = mean(U) the differences are a few
    # kT. The shift is added back below (it carries no uncertainty).
    shift = float(energies.mean())
    u_kn = reduced_potentials(energies - shift, temperatures)
    bootstrap = uncertainty == "bootstrap"
    mbar = pymbar.MBAR(
        u_kn, counts, n_bootstraps=int(n_bootstrap) if bootstrap else 0, rseed=int(seed) if bootstrap else None
    )
    result = mbar.compute_free_energy_differences(uncertainty_method="bootstrap" if bootstrap else None)
    delta, d_delta = np.asarray(result["Delta_f"]), np.asarray(result["dDelta_f"])
    beta = 1.0 / np.array([kt_kj_per_mol(t) for t in temperatures])
    delta = delta + shift * (beta[None, :] - beta[:, None])
    overlap = np.asarray(mbar.compute_overlap()["matrix"])
    k = np.arange(temperatures.size - 1)
    return LadderFreeEnergies(
        temperatures=temperatures,
        free_energies=delta[0].copy(),
        errors=d_delta[0].copy(),
        neighbour_overlap=overlap[k, k + 1].copy(),
        sample_counts=counts,
    )


@dataclass(frozen=True)
class LadderSamples:
    """MD samples of a temperature ladder (what :func:`mbar_temperature_ladder` takes).

    Attributes:
        temperatures: ``[K]`` K.
        potential_energies_kj: ``[K * n]`` kJ/mol, grouped by temperature.
        sample_counts: ``[K]`` samples per temperature.
        statistical_inefficiency: ``[K]`` g (>= 1, in saved samples) of each temperature's
            energy series: ~1 when the stride decorrelates the samples.
        positions_nm: ``[K * n, N_atoms, 3]`` float32 nm if kept, else None.
    """

    temperatures: np.ndarray
    potential_energies_kj: np.ndarray
    sample_counts: np.ndarray
    statistical_inefficiency: np.ndarray
    positions_nm: Optional[np.ndarray] = None


def _statistical_inefficiency(series: np.ndarray) -> float:
    if series.size < 3 or not np.ptp(series) > 0:
        return 1.0
    try:
        return max(1.0, float(_pymbar().timeseries.statistical_inefficiency(series, fast=False)))
    except Exception:  # noqa: BLE001 - a degenerate series says nothing about correlation
        return 1.0


def run_temperature_ladder(
    system,
    temperatures: Sequence[float],
    n_samples: int,
    *,
    stride_steps: int = 500,
    equilibration_steps: int = 10_000,
    timestep_fs: float = 1.0,
    friction_per_ps: Optional[float] = None,
    platform: str = "Reference",
    seed: int = 0,
    keep_positions: bool = False,
    quiet: bool = False,
) -> LadderSamples:
    """Langevin MD of ``system`` at each temperature, saving potential energies (see the module docstring).

    Args:
        system: a `boltzgen.systems.MolecularSystem` (its ``openmm_system`` and ``positions``; its
            own ``temperature`` is not used).
        temperatures: ``[K]`` K, e.g. :func:`temperature_ladder`.
        n_samples: saved samples per temperature.
        stride_steps: integrator steps between saved samples (the decorrelation).
        equilibration_steps: discarded steps at each temperature before the first sample.
        timestep_fs: integration step, fs.
        friction_per_ps: Langevin friction, 1/ps; None: the system's ``friction_per_ps``.
        platform: OpenMM platform (``"Reference"`` or ``"CPU"``; CPU runs with one thread).
        seed: run seed; temperature k gets the seeds of replica k of `boltzgen.md.config.replica_seeds`.
        keep_positions: also return the sampled positions (float32 nm).
        quiet: no progress bar.

    Raises:
        BoltzgenError: the dynamics produced non-finite energies or positions.
    """
    import openmm
    from openmm import unit

    from boltzgen.errors import BoltzgenError
    from boltzgen.md.config import replica_seeds
    from boltzgen.md.platforms import platform_properties
    from boltzgen.md.replica import MINIMISATION_TOLERANCE_KJ_PER_MOL_NM
    from boltzgen.energy.openmm_platforms import canonical_platform_name, get_platform

    temperatures = np.asarray(temperatures, dtype=np.float64).reshape(-1)
    if temperatures.size == 0 or not (temperatures > 0).all():
        raise ValueError(f"temperatures must be positive (K), got {temperatures.tolist()}")
    if n_samples < 1 or stride_steps < 1 or equilibration_steps < 0 or not timestep_fs > 0:
        raise ValueError("need n_samples >= 1, stride_steps >= 1, equilibration_steps >= 0 and timestep_fs > 0")
    platform = canonical_platform_name(platform)
    friction = float(system.friction_per_ps if friction_per_ps is None else friction_per_ps)
    seeds = replica_seeds(int(seed), temperatures.size)
    properties = platform_properties(platform)

    minimiser = openmm.Context(system.openmm_system, openmm.VerletIntegrator(1.0 * unit.femtosecond),
                               get_platform(platform), properties)
    minimiser.setPositions(np.asarray(system.positions, dtype=np.float64))
    openmm.LocalEnergyMinimizer.minimize(minimiser, MINIMISATION_TOLERANCE_KJ_PER_MOL_NM, 0)
    start_state = minimiser.getState(getPositions=True)
    del minimiser

    energies = np.empty((temperatures.size, n_samples))
    positions = np.empty((temperatures.size, n_samples, system.n_atoms, 3), np.float32) if keep_positions else None
    g = np.ones(temperatures.size)
    with progress_bar(temperatures.size * n_samples, desc="MD ladder", unit="sample", quiet=quiet) as bar:
        for k, temperature in enumerate(temperatures):
            integrator = openmm.LangevinMiddleIntegrator(
                temperature * unit.kelvin, friction / unit.picosecond, timestep_fs * unit.femtosecond
            )
            integrator.setRandomNumberSeed(seeds[k].integrator_seed)
            context = openmm.Context(system.openmm_system, integrator, get_platform(platform), properties)
            context.setPeriodicBoxVectors(*start_state.getPeriodicBoxVectors())
            context.setPositions(start_state.getPositions())
            context.setVelocitiesToTemperature(temperature * unit.kelvin, seeds[k].velocity_seed)
            try:
                if equilibration_steps:
                    integrator.step(equilibration_steps)
                for n in range(n_samples):
                    integrator.step(stride_steps)
                    state = context.getState(getEnergy=True, getPositions=keep_positions)
                    energies[k, n] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                    if positions is not None:
                        positions[k, n] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                    bar.update(1)
            except Exception as error:  # noqa: BLE001 - OpenMM raises a bare Exception
                raise BoltzgenError(f"the MD at {temperature:g} K failed ({error}); try a smaller time step") from None
            finally:
                del context, integrator
            if not np.isfinite(energies[k]).all():
                raise BoltzgenError(f"the MD at {temperature:g} K blew up (non-finite energy); try a smaller time step")
            g[k] = _statistical_inefficiency(energies[k])
    return LadderSamples(
        temperatures=temperatures,
        potential_energies_kj=energies.reshape(-1),
        sample_counts=np.full(temperatures.size, n_samples, dtype=np.int64),
        statistical_inefficiency=g,
        positions_nm=None if positions is None else positions.reshape(-1, system.n_atoms, 3),
    )


def md_ladder_free_energies(
    system, temperatures: Sequence[float], n_samples: int, **md_options
) -> tuple[LadderFreeEnergies, LadderSamples]:
    """:func:`run_temperature_ladder` then :func:`mbar_temperature_ladder` (analytical errors)."""
    samples = run_temperature_ladder(system, temperatures, n_samples, **md_options)
    result = mbar_temperature_ladder(samples.potential_energies_kj, samples.temperatures, samples.sample_counts)
    return result, samples
