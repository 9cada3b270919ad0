"""Free-energy estimators and W2 metrics against exact answers."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate

from boltzgen.analysis import (
    energy_w2,
    free_energy_difference,
    free_energy_profile,
    torsion_w2,
    wasserstein2_1d,
)
from boltzgen.analysis.metrics import torus_cost_matrix


def double_well_u(x):
    return x[:, 0] ** 4 - 6 * x[:, 0] ** 2 - 0.5 * x[:, 0] + 0.5 * x[:, 1] ** 2


def exact_double_well_delta_f():
    u1 = lambda t: np.exp(-(t**4 - 6 * t**2 - 0.5 * t))
    z_neg = integrate.quad(u1, -10, 0)[0]
    z_pos = integrate.quad(u1, 0, 10)[0]
    return -math.log(z_pos / z_neg)


def test_unweighted_counts_give_log_ratio():
    in_b = np.zeros(100, dtype=bool)
    in_b[:30] = True
    est = free_energy_difference(None, ~in_b, in_b)
    assert est.value == pytest.approx(-math.log(30 / 70), rel=1e-12)
    # binomial error of a log odds: sqrt(1/30 + 1/70)
    assert est.error == pytest.approx(math.sqrt(1 / 30 + 1 / 70), rel=0.25)


def test_reweighted_double_well_matches_quadrature_and_error_is_calibrated():
    exact = exact_double_well_delta_f()
    assert -math.log(0.8443 / 0.1557) == pytest.approx(exact, abs=1e-3)  # METHODS.md's P(x1 > 0)
    rng = np.random.default_rng(1)
    values, errors = [], []
    for _ in range(12):
        x = rng.normal(size=(20_000, 2)) * np.array([1.5, 1.0])
        log_q = -0.5 * (x[:, 0] / 1.5) ** 2 - 0.5 * x[:, 1] ** 2
        log_w = -double_well_u(x) - log_q
        est = free_energy_difference(log_w, x[:, 0] < 0, x[:, 0] > 0, n_bootstrap=100)
        values.append(est.value)
        errors.append(est.error)
    values = np.array(values)
    assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / math.sqrt(len(values))
    # the bootstrap error bar describes the run-to-run spread (within sampling error of a std)
    assert 0.6 < np.mean(errors) / values.std(ddof=1) < 1.6


def test_empty_state_gives_infinite_value_and_no_error():
    est = free_energy_difference(np.zeros(5), np.ones(5, bool), np.zeros(5, bool))
    assert est.value == math.inf and math.isnan(est.error)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        free_energy_difference(None, np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        free_energy_difference(np.array([0.0, np.nan]), np.ones(2, bool), np.ones(2, bool))


def test_profile_of_gaussian_samples_is_a_parabola():
    rng = np.random.default_rng(2)
    x = rng.normal(size=400_000)
    prof = free_energy_profile(x, bins=20, range=(-2, 2), n_bootstrap=20)
    c = prof.bin_centers
    expected = 0.5 * c**2 - np.min(0.5 * c**2)
    # bin averaging shifts -ln p by O(width^2) only
    assert np.max(np.abs(prof.free_energy - expected)) < 0.05
    assert np.all(prof.error < 0.05) and np.all(prof.error > 0)


def test_weighted_profile_equals_target_profile():
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, size=400_000)  # proposal: uniform; target: N(0, 1)
    prof = free_energy_profile(x, -0.5 * x**2, bins=12, range=(-3, 3), n_bootstrap=10)
    centers = prof.bin_centers
    # exact -ln of bin probabilities / width for N(0,1)
    from scipy.stats import norm

    p = norm.cdf(prof.bin_edges[1:]) - norm.cdf(prof.bin_edges[:-1])
    exact = -np.log(p / np.diff(prof.bin_edges))
    exact -= exact.min()
    assert np.allclose(prof.free_energy, exact, atol=0.05), centers


def test_w2_1d_against_closed_forms_and_pot():
    import ot

    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, 200_000)
    b = rng.normal(0.5, 2.0, 200_000)
    # W2^2 between Gaussians = (m1 - m2)^2 + (s1 - s2)^2
    assert wasserstein2_1d(a, b) == pytest.approx(math.sqrt(0.25 + 1.0), rel=0.01)
    small_a, small_b = rng.normal(size=37), rng.normal(1.0, 0.5, size=53)
    pot = ot.emd2(np.full(37, 1 / 37), np.full(53, 1 / 53), (small_a[:, None] - small_b[None]) ** 2)
    assert wasserstein2_1d(small_a, small_b) == pytest.approx(math.sqrt(pot), rel=1e-9)


def test_energy_w2_uses_weights():
    rng = np.random.default_rng(5)
    u_gen = rng.normal(0.0, 1.0, 50_000)
    u_ref = rng.normal(1.0, 1.0, 10_000)
    # reweighting N(0,1) by exp(u) tilts it to N(1,1): the weighted E-W2 is small, the raw one ~1
    assert energy_w2(u_gen, u_ref) == pytest.approx(1.0, abs=0.05)
    assert energy_w2(u_gen, u_ref, log_w=u_gen) < 0.1


def test_torsion_w2_is_periodic_and_exact_on_small_sets():
    rng = np.random.default_rng(6)
    a = rng.uniform(-np.pi, np.pi, size=(6, 2))
    b = rng.uniform(-np.pi, np.pi, size=(6, 2))
    assert torsion_w2(a, a + 2 * np.pi, n=6, log_w=None) == pytest.approx(0.0, abs=1e-12)
    cost = torus_cost_matrix(a, b)
    best = min(sum(cost[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
    import ot

    assert torsion_w2(a, b, n=6) == pytest.approx(math.sqrt(best / 6), rel=1e-9)

    assert math.sqrt(ot.emd2(np.full(6, 1 / 6), np.full(6, 1 / 6), cost)) == pytest.approx(
        math.sqrt(best / 6), rel=1e-9
    )
    # wrap-around: angles just either side of +-pi are close
    assert torus_cost_matrix(np.array([[np.pi - 0.1]]), np.array([[-np.pi + 0.1]]))[0, 0] == pytest.approx(0.04)


def test_plots_are_written(tmp_path):
    from boltzgen.analysis import plots

    rng = np.random.default_rng(7)
    ref = rng.uniform(-np.pi, np.pi, size=(500, 2))
    gen = rng.uniform(-np.pi, np.pi, size=(400, 2))
    log_w = rng.normal(size=400)
    paths = [
        plots.ramachandran(ref, gen, log_w, tmp_path / "rama.png"),
        plots.free_energy_profiles(
            {"ref": free_energy_profile(ref[:, 0], bins=10, n_bootstrap=5),
             "bg": free_energy_profile(gen[:, 0], log_w, bins=10, n_bootstrap=5)},
            tmp_path / "profile.png",
        ),
        plots.energy_histograms(rng.normal(size=500), rng.normal(size=400), log_w, tmp_path / "u.png"),
    ]
    for path in paths:
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
