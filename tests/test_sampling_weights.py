"""ESS and log-weight helpers against cases with known answers."""

import math

import pytest
import torch

from boltzgen.sampling import (
    ess,
    ess_filtered,
    log_importance_weights,
    normalized_weights,
    summarize_weights,
    top_weight_mask,
)


def test_equal_weights_give_ess_one():
    assert ess(torch.full((1000,), -123.4)) == pytest.approx(1.0, abs=1e-12)


def test_single_dominant_weight_gives_one_over_n():
    log_w = torch.full((500,), -1e4)
    log_w[17] = 0.0
    assert ess(log_w) == pytest.approx(1 / 500, rel=1e-9)


def test_two_point_weights_closed_form():
    # weights (1, 3): (1+3)^2 / (2 * (1 + 9)) = 0.8
    assert ess(torch.log(torch.tensor([1.0, 3.0], dtype=torch.float64))) == pytest.approx(0.8, rel=1e-12)


def test_huge_log_weights_do_not_overflow():
    log_w = torch.tensor([1e5, 1e5 + math.log(3.0)], dtype=torch.float64)
    assert ess(log_w) == pytest.approx(0.8, rel=1e-9)


def test_gaussian_proposal_matches_analytic_ess():
    # proposal N(0, s^2), target N(0, 1) in d dims: ESS -> (sqrt(2 s^2 - 1) / s^2)^d
    gen = torch.Generator().manual_seed(0)
    s, d, n = 1.3, 2, 400_000
    x = s * torch.randn(n, d, generator=gen, dtype=torch.float64)
    log_p = -0.5 * (x**2).sum(1)
    log_q = -0.5 * (x**2).sum(1) / s**2
    expected = (math.sqrt(2 * s**2 - 1) / s**2) ** d
    assert ess(log_p - log_q) == pytest.approx(expected, rel=0.02)


def test_dropped_samples_count_as_zero_weight():
    log_w = torch.tensor([0.0, 0.0, -math.inf, -math.inf])
    assert ess(log_w) == pytest.approx(0.5)
    assert ess(torch.full((3,), -math.inf)) == 0.0
    summary = summarize_weights(log_w)
    assert summary.n_samples == 4 and summary.n_dropped == 2


def test_log_importance_weights_turns_nonfinite_energies_into_minus_inf():
    u = torch.tensor([1.0, math.inf, math.nan, 2.0])
    log_q = torch.tensor([-1.0, -1.0, -1.0, math.nan])
    log_w = log_importance_weights(u, log_q)
    assert log_w[0] == 0.0
    assert torch.isneginf(log_w[1:]).all()
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        log_importance_weights(u, log_q[:2])


def test_top_weight_filter_drops_exactly_the_largest():
    log_w = torch.arange(1000, dtype=torch.float64)
    keep = top_weight_mask(log_w, 0.002)
    assert (~keep).sum() == 2 and not keep[998] and not keep[999] and keep[:998].all()
    # an outlier dominates the raw ESS but not the filtered one
    log_w = torch.zeros(1000, dtype=torch.float64)
    log_w[0] = 50.0
    assert ess(log_w) < 0.01
    assert ess_filtered(log_w) == pytest.approx(1.0)


def test_invalid_log_weights_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ess(torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="at least one"):
        ess(torch.tensor([]))
    with pytest.raises(ValueError, match="all log weights"):
        normalized_weights(torch.full((2,), -math.inf))


def test_normalized_weights_sum_to_one():
    w = normalized_weights(torch.tensor([0.0, math.log(3.0), -math.inf]))
    assert torch.allclose(w, torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
