"""Nonbonded torch force terms against OpenMM's Reference platform: energies and forces, float64 and float32.

`NonbondedTerm` (NonbondedForce) and `CustomNonbondedTerm` (CustomNonbondedForce), each force copied
on its own into a System and evaluated by OpenMM (Reference platform, double precision) and by its
`ForceTerm` (forces by autograd): alanine dipeptide (as is and with cutoffs imposed) and synthetic
systems with random charges and LJ parameters, exceptions, cutoffs with pairs on both sides,
switching, periodic cubic and triclinic boxes, dispersion / long-range corrections, offsets.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import openmm
import pytest
import torch

from boltzgen import systems
from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.nonbonded import NonbondedTerm, dispersion_correction_coefficient
from force_term_checks import (  # noqa: F401  (single_torch_thread: autouse fixture)
    check_term,
    openmm_reference,
    perturbed,
    single_force_system,
    single_torch_thread,
)

RTOL64 = 1e-6
RTOL32 = 1e-4
NB = openmm.NonbondedForce
CUBIC_BOX = np.diag([3.0, 3.0, 3.0])
TRICLINIC_BOX = np.array([[3.0, 0.0, 0.0], [0.9, 2.9, 0.0], [-1.1, 1.2, 3.1]])
RECTANGULAR_BOX = np.diag([3.0, 2.4, 2.2])
BOXES = {"none": None, "cubic": CUBIC_BOX, "triclinic": TRICLINIC_BOX, "rectangular": RECTANGULAR_BOX}


# ----------------------------------------------------------------------------- helpers


def with_close_contacts(frames: np.ndarray, seed: int, box=None, count: int = 6) -> np.ndarray:
    """Frames 1.. get ``count`` particles moved to 0.1-0.2 nm from another one (high LJ energies).

    With a box the partner is placed across the periodic boundary (shifted by a box vector).
    """
    rng = np.random.default_rng(seed)
    frames = frames.copy()
    n = frames.shape[1]
    for frame in frames[1:]:
        for _ in range(count):
            mover, partner = rng.choice(n, size=2, replace=False)
            direction = rng.normal(size=3)
            frame[mover] = frame[partner] + rng.uniform(0.1, 0.2) * direction / np.linalg.norm(direction)
            if box is not None:
                frame[mover] += box[rng.integers(3)] * rng.choice([-1, 1])
    return frames


def pair_distances(frame: np.ndarray, box=None) -> np.ndarray:
    """All pair distances ``i < j`` of one frame, OpenMM's minimum image if ``box``."""
    i, j = np.triu_indices(len(frame), 1)
    delta = frame[j] - frame[i]
    if box is not None:
        for k in (2, 1, 0):
            delta -= np.floor(delta[:, k] / box[k, k] + 0.5)[:, None] * box[k]
    return np.linalg.norm(delta, axis=-1)


def lattice_positions(n: int, box, seed: int, jitter: float = 0.05) -> np.ndarray:
    """``n`` particles on a jittered lattice filling ``box`` (or a 3 nm cube), no close contacts."""
    rng = np.random.default_rng(seed)
    cells = math.ceil(n ** (1 / 3))
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[rng.permutation(len(grid))[:n]]
    fractional = (grid + 0.5 + rng.normal(scale=jitter * cells / 3.0, size=(n, 3))) / cells
    return fractional @ (np.diag([3.0, 3.0, 3.0]) if box is None else box)


# ----------------------------------------------------------------------------- NonbondedForce


@pytest.fixture(scope="module")
def alanine():
    out = {}
    for name in ("alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"):
        molecule = systems.load(name)
        system = molecule.openmm_system
        masses = [system.getParticleMass(i) for i in range(system.getNumParticles())]
        # A standalone copy: a Force obtained from a System dies with that System.
        (force,) = [copy.deepcopy(f) for f in system.getForces() if isinstance(f, NB)]
        out[name] = force, masses, np.asarray(molecule.positions, dtype=np.float64)
    return out


@pytest.mark.parametrize("name", ["alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"])
@pytest.mark.parametrize("sigma", [0.01, 0.05], ids=["noise0.01", "noise0.05"])
def test_alanine_dipeptide_nonbonded(alanine, name, sigma):
    force, masses, positions = alanine[name]
    frames = perturbed(positions, 8, sigma, seed=21)
    check_term(NonbondedTerm, force, masses, frames)


def test_alanine_dipeptide_nonbonded_float32(alanine):
    force, masses, positions = alanine["alanine_dipeptide_vacuum"]
    frames = perturbed(positions, 8, 0.02, seed=22)
    check_term(NonbondedTerm, force, masses, frames, rtol=RTOL32, dtype=torch.float32)


@pytest.mark.parametrize("switch", [False, True], ids=["hard", "switched"])
@pytest.mark.parametrize("dielectric", [1.0, 78.3])
def test_alanine_dipeptide_with_nonperiodic_cutoff(alanine, switch, dielectric):
    force, masses, positions = alanine["alanine_dipeptide_vacuum"]
    force = copy.deepcopy(force)
    force.setNonbondedMethod(NB.CutoffNonPeriodic)
    force.setCutoffDistance(0.5)
    force.setReactionFieldDielectric(dielectric)
    force.setUseSwitchingFunction(switch)
    force.setSwitchingDistance(0.35)
    frames = perturbed(positions, 8, 0.01, seed=23)
    distances = pair_distances(frames[0])
    assert (distances < 0.5).any() and (distances > 0.5).any()
    check_term(NonbondedTerm, force, masses, frames)


def synthetic_nonbonded(n: int, seed: int, method, *, cutoff=1.0, switch=None, dispersion=False,
                        periodic_exceptions=False, dielectric=78.3, tolerance=None) -> NB:
    """Random charges and LJ parameters (a few zero), ordinary exceptions and pure exclusions.
    With ``method`` Ewald the charges are shifted to a neutral total (``tolerance``: Ewald's)."""
    rng = np.random.default_rng(seed)
    force = NB()
    force.setNonbondedMethod(method)
    force.setCutoffDistance(cutoff)
    force.setReactionFieldDielectric(dielectric)
    force.setUseDispersionCorrection(dispersion)
    force.setExceptionsUsePeriodicBoundaryConditions(periodic_exceptions)
    if switch is not None:
        force.setUseSwitchingFunction(True)
        force.setSwitchingDistance(switch)
    for index in range(n):
        charge = rng.normal(scale=0.5)
        sigma = rng.uniform(0.2, 0.4)
        epsilon = rng.uniform(0.1, 1.0)
        if index % 7 == 3:
            epsilon = 0.0  # charge only
        if index % 11 == 5:
            charge = 0.0  # LJ only
        if index == n - 1:
            charge, epsilon = 0.0, 0.0  # no interactions at all
        force.addParticle(charge, sigma, epsilon)
    if method == NB.Ewald:
        charges = np.array([force.getParticleParameters(i)[0].value_in_unit(openmm.unit.elementary_charge) for i in range(n)])
        charged = np.flatnonzero(charges)
        charges[charged] -= charges.sum() / len(charged)
        for i in charged:
            _, sigma, epsilon = force.getParticleParameters(int(i))
            force.setParticleParameters(int(i), float(charges[i]), sigma, epsilon)
        if tolerance is not None:
            force.setEwaldErrorTolerance(tolerance)
    pairs = rng.choice(n * (n - 1) // 2, size=3 * n // 2, replace=False)
    i_all, j_all = np.triu_indices(n, 1)
    for k, p in enumerate(pairs):
        i, j = int(i_all[p]), int(j_all[p])
        if k % 3 == 0:
            force.addException(i, j, 0.0, 0.3, 0.0)  # pure exclusion
        else:
            force.addException(i, j, rng.normal(scale=0.2), rng.uniform(0.2, 0.4), rng.uniform(0.0, 0.6))
    return force


SYNTHETIC_CASES = {
    "nocutoff": dict(method=NB.NoCutoff, box="none"),
    "cutoff_nonperiodic": dict(method=NB.CutoffNonPeriodic, box="none"),
    "cutoff_nonperiodic_switch": dict(method=NB.CutoffNonPeriodic, box="none", switch=0.8),
    "periodic_cubic": dict(method=NB.CutoffPeriodic, box="cubic", dispersion=True),
    "periodic_cubic_switch_dispersion": dict(method=NB.CutoffPeriodic, box="cubic", switch=0.7, dispersion=True),
    "periodic_cubic_periodic_exceptions": dict(method=NB.CutoffPeriodic, box="cubic", periodic_exceptions=True),
    "periodic_triclinic": dict(method=NB.CutoffPeriodic, box="triclinic", dispersion=True, dielectric=1.0),
    "periodic_triclinic_switch_periodic_exceptions": dict(
        method=NB.CutoffPeriodic, box="triclinic", switch=0.9, dispersion=True, periodic_exceptions=True),
    "ewald_cubic": dict(method=NB.Ewald, box="cubic"),
    "ewald_rectangular_switch_dispersion": dict(method=NB.Ewald, box="rectangular", switch=0.8, dispersion=True,
                                                tolerance=1e-5),
    "ewald_rectangular_periodic_exceptions": dict(method=NB.Ewald, box="rectangular", periodic_exceptions=True,
                                                  tolerance=1e-3),
}


@pytest.mark.parametrize("case", list(SYNTHETIC_CASES))
@pytest.mark.parametrize("sigma", [0.01, 0.1], ids=["noise0.01", "noise0.1+contacts"])
def test_synthetic_nonbonded(case, sigma):
    options = dict(SYNTHETIC_CASES[case])
    box = BOXES[options.pop("box")]
    n = 40
    force = synthetic_nonbonded(n, seed=31, **options)
    frames = perturbed(lattice_positions(n, box, seed=32), 6, sigma, seed=33)
    if sigma > 0.05:
        frames = with_close_contacts(frames, seed=37, box=box)
    if options["method"] != NB.NoCutoff:
        distances = pair_distances(frames[0], box)
        assert (distances < 1.0).sum() > 20 and (distances > 1.0).sum() > 20  # both sides of the cutoff
    if sigma > 0.1:
        assert pair_distances(frames[-1], box).min() < 0.2  # close contacts: high energies
    check_term(NonbondedTerm, force, [1.0] * n, frames, box)


@pytest.mark.parametrize("case", ["cutoff_nonperiodic_switch", "periodic_triclinic_switch_periodic_exceptions",
                                  "ewald_rectangular_switch_dispersion"])
def test_synthetic_nonbonded_float32(case):
    options = dict(SYNTHETIC_CASES[case])
    box = BOXES[options.pop("box")]
    n = 40
    force = synthetic_nonbonded(n, seed=34, **options)
    frames = perturbed(lattice_positions(n, box, seed=35), 6, 0.01, seed=36)
    check_term(NonbondedTerm, force, [1.0] * n, frames, box, rtol=RTOL32, dtype=torch.float32)


@pytest.mark.parametrize("switch", [None, 0.75])
def test_dispersion_correction_matches_openmm(switch):
    n = 30
    force = synthetic_nonbonded(n, seed=41, method=NB.CutoffPeriodic, switch=switch, dispersion=True)
    # A few particles share (sigma, epsilon), so OpenMM's class counting is exercised.
    for index in range(0, n, 5):
        force.setParticleParameters(index, 0.1, 0.3, 0.5)
    frame = lattice_positions(n, CUBIC_BOX, seed=42)[None]
    with_correction, _ = openmm_reference(single_force_system(force, [1.0] * n, CUBIC_BOX), frame, CUBIC_BOX)
    force.setUseDispersionCorrection(False)
    without, _ = openmm_reference(single_force_system(force, [1.0] * n, CUBIC_BOX), frame, CUBIC_BOX)
    sigma = np.array([force.getParticleParameters(i)[1].value_in_unit(openmm.unit.nanometer) for i in range(n)])
    epsilon = np.array([force.getParticleParameters(i)[2].value_in_unit(openmm.unit.kilojoule_per_mole) for i in range(n)])
    coefficient = dispersion_correction_coefficient(sigma, epsilon, 1.0, switch, n)
    assert coefficient < 0
    np.testing.assert_allclose(coefficient / 27.0, with_correction - without, rtol=1e-8)


def test_parameter_offsets_at_default_global_values():
    n = 30
    force = synthetic_nonbonded(n, seed=51, method=NB.CutoffPeriodic, switch=0.8, dispersion=True)
    force.addGlobalParameter("lambda_q", 0.6)
    force.addGlobalParameter("lambda_lj", 0.3)
    force.addParticleParameterOffset("lambda_q", 2, 0.5, 0.0, 0.0)
    force.addParticleParameterOffset("lambda_lj", 4, 0.0, 0.1, 0.4)
    force.addParticleParameterOffset("lambda_lj", n - 1, 0.3, 0.05, 0.2)  # was a non-interacting particle
    force.addExceptionParameterOffset("lambda_q", 1, 0.4, 0.0, 0.2)
    force.addExceptionParameterOffset("lambda_lj", 0, 0.1, 0.02, 0.3)  # exception 0 is a pure exclusion
    frames = perturbed(lattice_positions(n, CUBIC_BOX, seed=52), 6, 0.02, seed=53)
    check_term(NonbondedTerm, force, [1.0] * n, frames, CUBIC_BOX)


def test_cutoff_masking_gives_finite_gradients_and_zero_beyond_cutoff():
    force = NB()
    force.setNonbondedMethod(NB.CutoffNonPeriodic)
    force.setCutoffDistance(1.0)
    force.addParticle(1.0, 0.3, 1.0)
    force.addParticle(-1.0, 0.3, 1.0)
    term = NonbondedTerm.from_openmm(force, None)
    positions = torch.tensor([[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]],
                             dtype=torch.float64, requires_grad=True)
    energy = term(positions, None)
    (gradient,) = torch.autograd.grad(energy.sum(), positions)
    assert energy[0] == 0 and energy[1] != 0
    assert torch.isfinite(gradient).all() and torch.all(gradient[0] == 0)


@pytest.mark.parametrize("method", [NB.PME, NB.LJPME], ids=["PME", "LJPME"])
def test_unsupported_nonbonded_methods_raise(method):
    force = synthetic_nonbonded(5, seed=1, method=method)
    name = {NB.PME: "PME", NB.LJPME: "LJPME"}[method]
    with pytest.raises(UnsupportedForceError, match=f"{name} is not supported.*CutoffPeriodic or Ewald"):
        NonbondedTerm.from_openmm(force, None)


def test_ewald_refuses_a_charged_system_and_a_triclinic_box():
    force = synthetic_nonbonded(12, seed=3, method=NB.Ewald)
    force.setParticleParameters(0, 1.0, 0.3, 0.5)  # no longer neutral
    with pytest.raises(UnsupportedForceError, match="net charge"):
        NonbondedTerm.from_openmm(force, single_force_system(force, [1.0] * 12, CUBIC_BOX))
    neutral = synthetic_nonbonded(12, seed=3, method=NB.Ewald)
    with pytest.raises(UnsupportedForceError, match="triclinic"):
        NonbondedTerm.from_openmm(neutral, single_force_system(neutral, [1.0] * 12, TRICLINIC_BOX))


def test_ewald_parameters_follow_openmm_error_estimate():
    """alpha = sqrt(-ln(2 tol)) / r_c; kmax the smallest odd count whose error estimate is below tol."""
    from boltzgen.energy.torch_forces.ewald import _kmax_error, ewald_parameters

    alpha, kmax = ewald_parameters(0.9, 5e-4, (3.0, 2.4, 2.2))
    assert alpha == pytest.approx(math.sqrt(-math.log(1e-3)) / 0.9, rel=1e-14)
    for k, length in zip(kmax, (3.0, 2.4, 2.2)):
        assert k % 2 == 1 and _kmax_error(length, alpha, 5e-4, k) > 0
        below = k - 1 if _kmax_error(length, alpha, 5e-4, k - 1) <= 0 else k - 2
        assert _kmax_error(length, alpha, 5e-4, below) <= 0
    # A tighter tolerance needs more wave vectors.
    assert all(a >= b for a, b in zip(ewald_parameters(0.9, 1e-6, (3.0, 2.4, 2.2))[1], kmax))


def test_pure_exclusions_and_non_interacting_pairs_are_dropped():
    force = synthetic_nonbonded(12, seed=2, method=NB.CutoffNonPeriodic)
    term = NonbondedTerm.from_openmm(force, None)
    n_exceptions = force.getNumExceptions()
    n_exclusions = sum(
        1 for k in range(n_exceptions)
        if force.getExceptionParameters(k)[2].value_in_unit(openmm.unit.elementary_charge**2) == 0
        and force.getExceptionParameters(k)[4].value_in_unit(openmm.unit.kilojoule_per_mole) == 0
    )
    assert term.exceptions.shape[0] == n_exceptions - n_exclusions
    assert term.pairs.shape[0] < 12 * 11 // 2 - n_exceptions  # the particle without q and epsilon
    assert not ((term.pairs == 11).any())
    # Without a cutoff the interacting exceptions join the ordinary pairs (one pass, same formula).
    force.setNonbondedMethod(NB.NoCutoff)
    merged = NonbondedTerm.from_openmm(force, None)
    assert merged.exceptions.shape[0] == 0
    assert merged.pairs.shape[0] == term.pairs.shape[0] + term.exceptions.shape[0]


# ----------------------------------------------------------------------------- CustomNonbondedForce

CNB = openmm.CustomNonbondedForce
LJ_COULOMB = (
    "4*eps*((sig/r)^12 - (sig/r)^6) + 138.935456*q1*q2/r;"
    " sig = 0.5*(sig1 + sig2); eps = sqrt(eps1*eps2)"
)


def custom_from_nonbonded(force: NB, expression: str = LJ_COULOMB) -> CNB:
    """A CustomNonbondedForce with ``q, sig, eps`` per particle and every exception as an exclusion."""
    custom = CNB(expression)
    for name in ("q", "sig", "eps"):
        custom.addPerParticleParameter(name)
    for index in range(force.getNumParticles()):
        q, s, e = force.getParticleParameters(index)
        custom.addParticle([q.value_in_unit(openmm.unit.elementary_charge), s.value_in_unit(openmm.unit.nanometer),
                            e.value_in_unit(openmm.unit.kilojoule_per_mole)])
    for index in range(force.getNumExceptions()):
        i, j, *_ = force.getExceptionParameters(index)
        custom.addExclusion(i, j)
    return custom


def synthetic_custom(n: int, seed: int, method, *, expression: str = LJ_COULOMB, cutoff: float = 1.0,
                     switch=None, long_range=False) -> CNB:
    custom = custom_from_nonbonded(synthetic_nonbonded(n, seed, NB.NoCutoff), expression)
    custom.setNonbondedMethod(method)
    custom.setCutoffDistance(cutoff)
    custom.setUseLongRangeCorrection(long_range)
    if switch is not None:
        custom.setUseSwitchingFunction(True)
        custom.setSwitchingDistance(switch)
    return custom


def check_custom(force, n, frames, box=None, rtol=RTOL64, dtype=torch.float64):
    from boltzgen.energy.torch_forces.custom_nonbonded import CustomNonbondedTerm

    return check_term(CustomNonbondedTerm, force, [1.0] * n, frames, box, rtol=rtol, dtype=dtype)


@pytest.mark.parametrize("method", [CNB.NoCutoff, CNB.CutoffNonPeriodic], ids=["NoCutoff", "CutoffNonPeriodic"])
@pytest.mark.parametrize("sigma", [0.01, 0.05], ids=["noise0.01", "noise0.05"])
def test_custom_nonbonded_alanine_dipeptide(alanine, method, sigma):
    force, masses, positions = alanine["alanine_dipeptide_vacuum"]
    custom = custom_from_nonbonded(force)
    custom.setNonbondedMethod(method)
    custom.setCutoffDistance(0.5)
    custom.setUseSwitchingFunction(True)
    custom.setSwitchingDistance(0.4)
    frames = perturbed(positions, 8, sigma, seed=61)
    from boltzgen.energy.torch_forces.custom_nonbonded import CustomNonbondedTerm

    check_term(CustomNonbondedTerm, custom, masses, frames)


CUSTOM_CASES = {
    "nocutoff": dict(method=CNB.NoCutoff, box="none"),
    "cutoff_nonperiodic_switch": dict(method=CNB.CutoffNonPeriodic, box="none", switch=0.8),
    "periodic_cubic": dict(method=CNB.CutoffPeriodic, box="cubic"),
    "periodic_cubic_switch_lrc": dict(method=CNB.CutoffPeriodic, box="cubic", switch=0.7, long_range=True),
    "periodic_triclinic_lrc": dict(method=CNB.CutoffPeriodic, box="triclinic", long_range=True),
    "periodic_triclinic_switch_lrc": dict(method=CNB.CutoffPeriodic, box="triclinic", switch=0.9, long_range=True),
}
SOFT_LJ = "4*eps*((sig/r)^12 - (sig/r)^6); sig = 0.5*(sig1 + sig2); eps = sqrt(eps1*eps2) + 0*q1*q2"


@pytest.mark.parametrize("case", list(CUSTOM_CASES))
@pytest.mark.parametrize("sigma", [0.01, 0.1], ids=["noise0.01", "noise0.1+contacts"])
def test_custom_nonbonded_synthetic(case, sigma):
    options = dict(CUSTOM_CASES[case])
    box = BOXES[options.pop("box")]
    n = 40
    # The long-range correction needs an energy decaying faster than 1/r^2: LJ only then.
    expression = SOFT_LJ if options.get("long_range") else LJ_COULOMB
    force = synthetic_custom(n, seed=62, expression=expression, **options)
    frames = perturbed(lattice_positions(n, box, seed=63), 6, sigma, seed=64)
    if sigma > 0.05:
        frames = with_close_contacts(frames, seed=65, box=box)
    check_custom(force, n, frames, box)


def test_custom_nonbonded_float32():
    n = 40
    force = synthetic_custom(n, seed=66, method=CNB.CutoffPeriodic, switch=0.8)
    frames = perturbed(lattice_positions(n, TRICLINIC_BOX, seed=67), 6, 0.01, seed=68)
    check_custom(force, n, frames, TRICLINIC_BOX, rtol=RTOL32, dtype=torch.float32)


def test_custom_nonbonded_long_range_correction_matches_openmm():
    """The correction alone (energy with minus without) to 1e-6, with classes shared by several particles."""
    from boltzgen.energy.torch_forces.custom_nonbonded import CustomNonbondedTerm

    n = 30
    for switch in (None, 0.75):
        force = synthetic_custom(n, seed=69, method=CNB.CutoffPeriodic, expression=SOFT_LJ, switch=switch, long_range=True)
        for index in range(0, n, 4):
            force.setParticleParameters(index, [0.0, 0.3, 0.5])
        frame = lattice_positions(n, CUBIC_BOX, seed=70)[None]
        with_lrc, _ = openmm_reference(single_force_system(force, [1.0] * n, CUBIC_BOX), frame, CUBIC_BOX)
        force.setUseLongRangeCorrection(False)
        without, _ = openmm_reference(single_force_system(force, [1.0] * n, CUBIC_BOX), frame, CUBIC_BOX)
        force.setUseLongRangeCorrection(True)
        term = CustomNonbondedTerm.from_openmm(force, None)
        assert term.long_range_coefficient < 0
        np.testing.assert_allclose(term.long_range_coefficient / 27.0, with_lrc - without, rtol=1e-6)


def test_custom_nonbonded_interaction_groups_and_orientation():
    """Overlapping groups, a pair listed in two groups, exclusions, cutoff, long-range correction, and an
    expression that is not symmetric in particles 1 and 2 (so OpenMM's pair orientation must be matched)."""
    n = 24
    expression = "a1*b2*exp(-3*r) + 4*eps*((0.3/r)^12 - (0.3/r)^6); eps = sqrt(eps1*eps2)"
    rng = np.random.default_rng(71)
    for method, box in ((CNB.NoCutoff, None), (CNB.CutoffNonPeriodic, None), (CNB.CutoffPeriodic, CUBIC_BOX)):
        for groups in ([], [(range(0, 12), range(6, 20)), (range(15, 24), range(0, 24)), ([3], [16])]):
            force = CNB(expression)
            for name in ("a", "b", "eps"):
                force.addPerParticleParameter(name)
            for _ in range(n):
                force.addParticle([rng.normal(), rng.normal(), rng.uniform(0.1, 1.0)])
            for i, j in ((0, 1), (7, 3), (16, 3), (20, 21), (5, 17)):
                force.addExclusion(i, j)
            for set1, set2 in groups:
                force.addInteractionGroup(list(set1), list(set2))
            force.setNonbondedMethod(method)
            force.setCutoffDistance(1.0)
            force.setUseLongRangeCorrection(method == CNB.CutoffPeriodic)
            frames = perturbed(lattice_positions(n, box, seed=72), 4, 0.02, seed=73)
            check_custom(force, n, frames, box)


def test_custom_nonbonded_tabulated_function_globals_and_computed_values():
    n = 30
    expression = "scale*(table(r) + 4*eps*((sig/r)^12 - (sig/r)^6)); sig = 0.5*(s1 + s2); eps = sqrt(eps1*eps2)"
    force = CNB(expression)
    force.addGlobalParameter("scale", 1.7)
    force.addPerParticleParameter("sig")
    force.addPerParticleParameter("eps")
    force.addComputedValue("s", "sig*shrink")
    force.addGlobalParameter("shrink", 0.9)
    grid = np.linspace(0.0, 1.2, 61)
    force.addTabulatedFunction("table", openmm.Continuous1DFunction(np.cos(4 * grid) * (1.2 - grid) ** 2, 0.0, 1.2))
    rng = np.random.default_rng(74)
    for _ in range(n):
        force.addParticle([rng.uniform(0.25, 0.4), rng.uniform(0.1, 1.0)])
    force.setNonbondedMethod(CNB.CutoffPeriodic)
    force.setCutoffDistance(1.0)
    force.setUseSwitchingFunction(True)
    force.setSwitchingDistance(0.85)
    frames = perturbed(lattice_positions(n, TRICLINIC_BOX, seed=75), 6, 0.03, seed=76)
    check_custom(force, n, frames, TRICLINIC_BOX)


def test_custom_nonbonded_expression_undefined_beyond_cutoff_has_finite_gradients():
    """``log(1.1 - r)`` is NaN beyond 1.1 nm; masked pairs must not leak NaN into energies or forces."""
    n = 20
    force = CNB("-log(1.1 - r)*q1*q2")
    force.addPerParticleParameter("q")
    rng = np.random.default_rng(77)
    for _ in range(n):
        force.addParticle([rng.normal()])
    force.setNonbondedMethod(CNB.CutoffNonPeriodic)
    force.setCutoffDistance(1.0)
    frames = perturbed(lattice_positions(n, None, seed=78), 4, 0.02, seed=79)
    assert pair_distances(frames[0]).max() > 1.1
    check_custom(force, n, frames)


def test_custom_nonbonded_long_range_correction_needs_r():
    from boltzgen.energy.torch_forces.custom_nonbonded import CustomNonbondedTerm

    force = CNB("eps1*eps2")
    force.addPerParticleParameter("eps")
    for _ in range(4):
        force.addParticle([1.0])
    force.setNonbondedMethod(CNB.CutoffPeriodic)
    force.setUseLongRangeCorrection(True)
    with pytest.raises(UnsupportedForceError, match="does not depend on r"):
        CustomNonbondedTerm.from_openmm(force, None)


def test_custom_nonbonded_unknown_variable_raises():
    from boltzgen.energy.torch_forces.custom_nonbonded import CustomNonbondedTerm

    force = CNB("k*r")
    for _ in range(3):
        force.addParticle([])
    with pytest.raises(UnsupportedForceError, match="unknown variable.*k"):
        CustomNonbondedTerm.from_openmm(force, None)


def test_exceptions_ignore_cutoff_and_reaction_field():
    """OpenMM evaluates exceptions as plain Coulomb + LJ at any distance; ordinary pairs get the reaction field."""
    eps_rf, one_4pi_eps0 = 78.3, 138.93545764438198
    krf = (eps_rf - 1) / (2 * eps_rf + 1)  # cutoff 1 nm
    crf = 3 * eps_rf / (2 * eps_rf + 1)
    force = NB()
    force.setNonbondedMethod(NB.CutoffNonPeriodic)
    force.setCutoffDistance(1.0)
    force.setReactionFieldDielectric(eps_rf)
    for _ in range(3):
        force.addParticle(0.5, 0.3, 0.0)
    force.addException(0, 1, -0.4, 0.35, 0.8)  # at 1.5 nm: beyond the cutoff, still interacts
    frames = np.array([[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # pair 0-2 at 0.5, 1-2 at 1.58
    exception = one_4pi_eps0 * -0.4 / 1.5 + 4 * 0.8 * ((0.35 / 1.5) ** 12 - (0.35 / 1.5) ** 6)
    reaction_field = one_4pi_eps0 * 0.25 * (1 / 0.5 + krf * 0.25 - crf)
    ref_energy, _ = openmm_reference(single_force_system(force, [1.0] * 3), frames)
    np.testing.assert_allclose(ref_energy[0], exception + reaction_field, rtol=1e-12)
    check_term(NonbondedTerm, force, [1.0] * 3, frames)
    # Turning the pair 0-2 into a pure exclusion removes it entirely (no reaction-field remnant).
    force.addException(0, 2, 0.0, 0.3, 0.0)
    ref_energy, _ = openmm_reference(single_force_system(force, [1.0] * 3), frames)
    np.testing.assert_allclose(ref_energy[0], exception, rtol=1e-12)
    check_term(NonbondedTerm, force, [1.0] * 3, frames)
