"""Alanine dipeptide: importance sampling vs SMC vs flow MCMC from the same trained flows.

For each flow — a deliberately under-trained one (the quick architecture after a short NLL-only
training, trained here unless it exists) and a well-trained one (a finished
``boltzgen run --quick`` output directory, ``--trained DIR``) — draw samples with the three
samplers of `boltzgen.job.samplers` and analyse them exactly as the main job does
(`boltzgen.job.evaluate.evaluate`): flow ESS, dF(phi > 0 vs phi < 0) and its error against the
umbrella-sampling reference, E-W2 and T-W2 against held-out frames, target energy evaluations and
wall time. One table, one JSON file.

    python benchmarks/smc_ad2.py --trained DIR [--samples 20000] [--smc-steps 100] [--out-dir D]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from boltzgen.job import PROFILES, RunOptions, load_trained_generator, run_job
from boltzgen.job.evaluate import evaluate
from boltzgen.job.job import _reference_free_energy
from boltzgen.job.samplers import SAMPLERS, SamplerSettings, draw_samples

RESULTS = Path(__file__).resolve().parent / "results" / "smc_ad2"
SYSTEM = "alanine_dipeptide_implicit"
#: The under-trained flow: the quick model after 40 NLL(+FM) steps and no reverse KL.
UNDERTRAINED = replace(PROFILES["quick"], name="undertrained", nll_steps=40, kl_steps=0)


def ensure_undertrained(out: Path, seed: int) -> Path:
    if not (out / "model.pt").exists():
        run_job(RunOptions(SYSTEM, str(out), profile="undertrained", seed=seed, quiet=True, flow="spline"),
                profile=UNDERTRAINED)
    return out


def compare(model_dir: Path, label: str, samplers, n: int, settings: SamplerSettings, out_dir: Path, seed: int) -> list[dict]:
    setup = load_trained_generator(model_dir, device="cpu")
    profile = PROFILES["quick"]
    reference_delta_f, reference_profile = _reference_free_energy(SYSTEM)
    rows = []
    for sampler in samplers:
        torch.manual_seed(seed)
        start = time.perf_counter()
        samples = draw_samples(setup.generator, sampler, n, settings, seed=seed)
        sampling_wall = time.perf_counter() - start
        results = evaluate(
            setup.generator, setup.held_out, setup.system.mdtraj_topology, samples=samples,
            n_metric_samples=profile.n_metric_samples, n_bootstrap=profile.n_bootstrap,
            reference_delta_f=reference_delta_f, reference_profile=reference_profile,
            out_dir=out_dir / f"{label}_{sampler}", device="cpu", seed=seed,
        )
        diag = samples.diagnostics
        rows.append({
            "flow": label, "sampler": sampler, "flow_ess": results["ess"], "flow_ess_filtered": results["ess_filtered"],
            "delta_f_kT": results["delta_f_kT"], "delta_f_err_kT": results["delta_f_err_kT"],
            "delta_f_error_vs_reference_kT": results["delta_f_error_vs_reference_kT"],
            "e_w2": results["e_w2"], "t_w2": results["t_w2"], "n_samples": results["n_final_samples"],
            "n_dropped": results["n_final_dropped"], "n_energy_evals": samples.n_energy_evals,
            "sampling_wall_s": sampling_wall,
            "smc_distinct_ancestors": diag.get("n_distinct_ancestors"), "smc_resampling_events": diag.get("n_resampling_events"),
            "smc_mean_acceptance": diag.get("mean_acceptance"), "mcmc_acceptance": diag.get("acceptance_rate"),
            "mcmc_distinct_samples": diag.get("n_distinct_samples"), "diagnostics": diag,
        })
        print(f"{label:12s} {sampler:5s} dF {results['delta_f_kT']:.2f} ± {results['delta_f_err_kT']:.2f}  "
              f"E-W2 {results['e_w2']:.3f}  T-W2 {results['t_w2']:.3f}  evals {samples.n_energy_evals}  {sampling_wall:.0f} s",
              flush=True)
    setup.target.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=Path, required=True, help="output directory of a finished boltzgen run --quick")
    parser.add_argument("--undertrained", type=Path, default=None,
                        help="output directory of the under-trained flow (trained there if missing)")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--smc-steps", type=int, default=100)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    settings = SamplerSettings(smc_steps=args.smc_steps)
    undertrained = ensure_undertrained(args.undertrained or args.out_dir / "undertrained_model", args.seed)
    rows = []
    for label, model in [("undertrained", undertrained), ("trained", args.trained)]:
        rows += compare(model, label, args.samplers, args.samples, settings, args.out_dir, args.seed)
    reference = _reference_free_energy(SYSTEM)[0]
    print(f"\nAlanine dipeptide (implicit), {args.samples} samples per sampler; reference dF {reference[0]:.2f} ± {reference[1]:.2f} kT")
    header = f"{'flow':12s} {'sampler':7s} {'flow ESS':>8s} {'dF':>6s} {'±':>5s} {'dF-ref':>6s} {'E-W2':>6s} {'T-W2':>6s} {'evals':>8s} {'wall s':>7s}"
    print(header)
    for r in rows:
        print(f"{r['flow']:12s} {r['sampler']:7s} {r['flow_ess']:8.3f} {r['delta_f_kT']:6.2f} {r['delta_f_err_kT']:5.2f} "
              f"{r['delta_f_error_vs_reference_kT']:6.2f} {r['e_w2']:6.3f} {r['t_w2']:6.3f} {r['n_energy_evals']:8d} {r['sampling_wall_s']:7.0f}")
    (args.out_dir / "smc_ad2.json").write_text(json.dumps({
        "settings": {k: str(v) for k, v in vars(args).items()} | {"sampler_settings": settings.as_dict()},
        "reference_delta_f_kT": reference, "rows": rows,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
