"""End-to-end `boltzgen run` with the smoke profile: complete, finite summary; resume; bad input."""

import json
import math

import numpy as np

import pytest
import torch

from boltzgen.cli import main
from boltzgen.job.profiles import get_profile
from boltzgen.md import run_md

REQUIRED_KEYS = [
    "ess", "ess_filtered", "delta_f_kT", "delta_f_err_kT", "reference_delta_f_kT", "e_w2", "t_w2",
    "n_samples", "n_dropped", "n_energy_evals", "wall_s", "device",
]


@pytest.fixture(scope="module")
def tiny_md(tmp_path_factory):
    """A 2 x 15 ps reference-MD run of alanine dipeptide (30 frames)."""
    out = tmp_path_factory.mktemp("md")
    run_md("alanine_dipeptide_implicit", out, ns=0.015, n_replicas=2, seed=5, platform="Reference",
           warmup_steps=500, quiet=True)
    return out


def _run(args):
    return main(["run", "alanine_dipeptide_implicit", "--profile", "smoke", "--quiet", "--device", "cpu", *args])


def test_smoke_run_writes_complete_finite_summary_and_resumes(tiny_md, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(["--out", str(out), "--data", str(tiny_md), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ESS (Kish, normalised)" in printed and "dF(phi>0 - phi<0)" in printed
    summary = json.loads((out / "summary.json").read_text())
    for key in REQUIRED_KEYS:
        assert key in summary, key
    for key in ["ess", "ess_filtered", "e_w2", "t_w2", "wall_s", "held_out_nll_per_dim"]:
        assert math.isfinite(summary[key]), (key, summary[key])
    assert 0 < summary["ess"] <= 1 and 0 < summary["ess_filtered"] <= 1
    assert summary["n_samples"] == 300 and summary["device"] == "cpu"
    assert summary["flow"] == "smooth"  # the job's default
    assert summary["loss_weights"]["fm"] == get_profile("smoke").smooth_force_weight
    # training KL evaluations (3 steps x 16) + the 300 samples
    assert summary["n_energy_evals"] == 3 * 16 + 300
    assert summary["n_train_frames"] + summary["n_held_out_frames"] == 30
    for name in ["model.pt", "checkpoint.pt", "ramachandran.png", "phi_free_energy.png", "energy_histogram.png"]:
        assert (out / name).stat().st_size > 0, name
    # a second run resumes from the finished checkpoint and reproduces the same numbers
    assert _run(["--out", str(out), "--data", str(tiny_md), "--seed", "2"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["ess"] == summary["ess"] and again["e_w2"] == summary["e_w2"]
    # the saved model rebuilds the same generator: same held-out NLL as the run reported
    from boltzgen.job import load_trained_generator
    from boltzgen.job.evaluate import held_out_nll_per_dim

    setup = load_trained_generator(out, device="cpu")
    nll, _ = held_out_nll_per_dim(setup.generator, setup.held_out.positions, "cpu")
    assert nll == pytest.approx(summary["held_out_nll_per_dim"], rel=1e-6)
    setup.target.close()


@pytest.mark.parametrize("sampler", ["smc", "mcmc"])
def test_smoke_run_with_other_samplers_reports_their_diagnostics(tiny_md, tmp_path, sampler):
    out = tmp_path / "run"
    assert _run(["--out", str(out), "--data", str(tiny_md), "--seed", "2", "--sampler", sampler]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"] == sampler
    for key in ["ess", "e_w2", "t_w2", "delta_f_kT"]:
        assert key in summary
    assert math.isfinite(summary["e_w2"]) and math.isfinite(summary["t_w2"])
    diagnostics = summary["sampler_diagnostics"]
    if sampler == "smc":
        assert diagnostics["final_time"] == 1.0 and diagnostics["n_energy_evals"] > 300
        assert summary["n_energy_evals"] == 3 * 16 + 300 + diagnostics["n_energy_evals"]
    else:
        assert 0.0 <= diagnostics["acceptance_rate"] <= 1.0 and diagnostics["n_chains"] == 15
        assert summary["n_final_samples"] == 300


@pytest.mark.parametrize("flow", ["spline", "smooth"])
def test_smoke_run_with_each_flow_and_a_chosen_loss(tiny_md, tmp_path, flow):
    out = tmp_path / "run"
    assert _run(["--out", str(out), "--data", str(tiny_md), "--flow", flow, "--loss", "nll=1,fm=0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flow"] == flow
    assert summary["loss_weights"] == {"nll": 1.0, "fm": 0.5, "kl": 0.0}
    assert summary["n_energy_evals"] == 300  # no reverse KL: only the samples' energies
    assert math.isfinite(summary["ess"]) and math.isfinite(summary["held_out_nll_per_dim"])


def test_loss_specs():
    from boltzgen.job.profiles import get_profile, loss_weights

    quick = get_profile("quick")
    assert loss_weights(None, quick) == {"nll": 1.0, "fm": quick.force_weight, "kl": quick.kl_weight}
    assert loss_weights("nll,kl", quick) == {"nll": 1.0, "fm": 0.0, "kl": quick.kl_weight}
    assert loss_weights("fm=2", quick) == {"nll": 0.0, "fm": 2.0, "kl": 0.0}
    # smooth flows take their own (much larger) default force-matching weight
    assert quick.smooth_force_weight > quick.force_weight
    assert loss_weights(None, quick, "smooth")["fm"] == quick.smooth_force_weight
    assert loss_weights("nll,fm", quick, "smooth") == {"nll": 1.0, "fm": quick.smooth_force_weight, "kl": 0.0}
    assert loss_weights("nll,fm=2", quick, "smooth")["fm"] == 2.0
    for bad, complaint in [("nll,foo", "unknown loss term"), ("nll=x", "must be a number"),
                           ("kl", "needs nll or fm"), ("nll=-1", ">= 0")]:
        with pytest.raises(ValueError, match=complaint):
            loss_weights(bad, quick)


def test_bad_inputs_give_one_clear_message(tiny_md, tmp_path, capsys):
    assert main(["run", "no_such_molecule", "--out", str(tmp_path / "a"), "--profile", "smoke"]) == 2
    assert "available systems" in capsys.readouterr().err
    assert main(["run", "double_well", "--out", str(tmp_path / "b"), "--profile", "smoke"]) == 2
    assert "needs a molecular system" in capsys.readouterr().err
    assert _run(["--out", str(tmp_path / "e"), "--loss", "nll,xyz"]) == 2
    assert "unknown loss term 'xyz'" in capsys.readouterr().err
    assert _run(["--out", str(tmp_path / "c"), "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    out = tmp_path / "d"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"garbage, not a checkpoint")
    assert _run(["--out", str(out), "--data", str(tiny_md)]) == 2
    err = capsys.readouterr().err
    assert "not a readable boltzgen checkpoint" in err and "Traceback" not in err


def test_generator_drops_and_counts_nan_energies():
    from boltzgen import BoltzmannGenerator
    from boltzgen.distributions import NormalDistribution
    from boltzgen.energy import Energy
    from boltzgen.flows import SequentialFlow
    from boltzgen.sampling import summarize_weights

    class HalfBroken(Energy):
        def energy(self, x):
            u = 0.5 * (x**2).sum(1)
            return torch.where(x[:, 0] > 1.0, torch.full_like(u, math.nan), u)

    torch.manual_seed(0)
    bg = BoltzmannGenerator(NormalDistribution(2), SequentialFlow([]), HalfBroken(2))
    x, log_w = bg.sample_with_log_weights(2000)
    summary = summarize_weights(log_w)
    assert summary.n_dropped == int((x[:, 0] > 1.0).sum()) > 0
    assert summary.ess == pytest.approx(1 - summary.n_dropped / 2000, rel=1e-6)


def test_whole_molecular_flow_is_invertible_with_consistent_density():
    """The job's composed flow (spline stack + internal coordinates), float64, randomised weights:
    sample -> log q from the forward pass equals log q from the inverse pass, and x round-trips."""
    from flow_checks import perturb_parameters

    from boltzgen import systems
    from boltzgen.job.model import build_molecular_generator
    from boltzgen.job.profiles import get_profile

    torch.manual_seed(0)
    ad2 = systems.load("alanine_dipeptide_implicit")
    data = torch.tensor(systems.reference_data("alanine_dipeptide_implicit").positions_flat()[::50]).double()
    generator = build_molecular_generator(ad2.mdtraj_topology, data, get_profile("smoke")).double()
    perturb_parameters(generator.flow, scale=0.3, seed=1)
    x, log_q = generator.sample_with_log_prob(64)
    assert torch.allclose(generator.log_prob(x), log_q, atol=1e-8)
    z, _ = generator.flow.inverse(x)
    x_again, _ = generator.flow(z)
    assert torch.allclose(x_again, x, atol=1e-9)
    # the log-density is not trivially constant: the perturbation reached every layer
    assert log_q.std() > 0.1


def test_split_holds_out_whole_blocks_of_consecutive_frames():
    from boltzgen.job.data import split_frames

    train, held_out = split_frames(46_000, 40_000, seed=3)
    assert len(np.intersect1d(train, held_out)) == 0
    assert len(train) + len(held_out) == 46_000
    assert abs(len(held_out) / 46_000 - 0.2) < 0.01
    # held-out frames come in runs of 200 consecutive frames (block boundaries at multiples of 200)
    starts = held_out[np.r_[True, np.diff(held_out) != 1]]
    assert (starts % 200 == 0).all()
    again = split_frames(46_000, 40_000, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held_out)
    assert not np.array_equal(split_frames(46_000, 40_000, seed=4)[1], held_out)
    small_train, small_held_out = split_frames(100, 30, seed=0)
    assert len(small_train) == 30 and len(small_held_out) == 20
