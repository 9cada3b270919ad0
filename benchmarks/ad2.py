"""Alanine dipeptide end to end: quality and cost of `boltzgen run` next to the targets.

Runs the main job (``boltzgen.job.run_job``) for the chosen profiles and seeds on the shipped
reference data, then prints one table — ESS (raw and top-0.2%-filtered), dF(phi>0 - phi<0) and its
error against the umbrella-sampling reference, E-W2, T-W2, energy evaluations, wall time — with
the targets of BENCHMARKS.md and the published numbers beside them, and writes a JSON file.

    python benchmarks/ad2.py [--profiles quick] [--seeds 0 1 2 3 4] [--flow smooth|spline] [--loss TERMS]
                             [--out-dir benchmarks/results/ad2]

A run directory that already holds a finished run (``<out-dir>/<profile>_<flow>_seed<S>``) is
resumed, i.e. only sampled and evaluated again. With several seeds the table ends with how many
met each target.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from boltzgen.io import write_json_atomic
from boltzgen.job import RunOptions, run_job

RESULTS = Path(__file__).resolve().parent / "results"

#: BENCHMARKS.md targets per profile: (ESS >=, |dF error| <=, E-W2 <=, T-W2 <=); None: no target.
TARGETS = {
    "quick": {"ess": 0.2, "delta_f_abs_error_kT": 0.3, "e_w2": None, "t_w2": None},
    "full": {"ess": 0.5, "delta_f_abs_error_kT": 0.1, "e_w2": 0.15, "t_w2": 0.15},
}
#: Published alanine dipeptide numbers (BENCHMARKS.md): ESS, E-W2, T-W2.
PUBLISHED = {"ECNF++": (0.275, 0.914, 0.189), "SBG (IS)": (0.030, 0.873, 0.439), "FALCON": (0.067, 0.225, 0.402)}


def verdict(value, target, higher_is_better: bool) -> str:
    if target is None or value is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "ok" if ok else "MISS"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["quick"], choices=["quick", "full", "smoke"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out-dir", type=Path, default=RESULTS / "ad2")
    parser.add_argument("--device", default=None)
    parser.add_argument("--flow", default="smooth", choices=["smooth", "spline"], help="as boltzgen run --flow")
    parser.add_argument("--loss", default=None, help="as boltzgen run --loss (default: the job's)")
    args = parser.parse_args(argv)

    rows = []
    for profile in args.profiles:
        for seed in args.seeds:
            out = args.out_dir / f"{profile}_{args.flow}_seed{seed}"
            summary = run_job(RunOptions("alanine_dipeptide_implicit", str(out), profile=profile, seed=seed,
                                         device=args.device, quiet=True, flow=args.flow, loss=args.loss))
            error = summary["delta_f_error_vs_reference_kT"]
            rows.append({
                "profile": profile, "flow": summary["flow"], "loss_weights": summary["loss_weights"],
                "seed": seed, "ess": summary["ess"], "ess_filtered": summary["ess_filtered"],
                "delta_f_kT": summary["delta_f_kT"], "delta_f_err_kT": summary["delta_f_err_kT"],
                "reference_delta_f_kT": summary["reference_delta_f_kT"],
                "delta_f_abs_error_kT": None if error is None else abs(error),
                "e_w2": summary["e_w2"], "t_w2": summary["t_w2"],
                "n_energy_evals": summary["n_energy_evals"], "wall_s": summary["wall_s"],
                "device": summary["device"], "torch_threads": summary["torch_threads"],
            })

    header = f"{'profile':<8}{'seed':>5}{'ESS':>9}{'ESS-f':>8}{'dF':>9}{'+-':>6}{'|err|':>8}{'E-W2':>8}{'T-W2':>8}{'evals':>9}{'wall s':>8}"
    print(header)
    for row in rows:
        t = TARGETS.get(row["profile"], {})
        err = row["delta_f_abs_error_kT"]
        print(
            f"{row['profile']:<8}{row['seed']:>5}{row['ess']:>9.5f}{row['ess_filtered']:>8.4f}"
            f"{row['delta_f_kT']:>9.2f}{row['delta_f_err_kT']:>6.2f}{(err if err is not None else float('nan')):>8.2f}"
            f"{row['e_w2']:>8.3f}{row['t_w2']:>8.3f}{row['n_energy_evals']:>9d}{row['wall_s']:>8.0f}"
            f"   ESS {verdict(row['ess'], t.get('ess'), True)}"
            f" dF {verdict(err, t.get('delta_f_abs_error_kT'), False)}"
            f" E-W2 {verdict(row['e_w2'], t.get('e_w2'), False)} T-W2 {verdict(row['t_w2'], t.get('t_w2'), False)}"
        )
    for profile in args.profiles:
        mine = [row for row in rows if row["profile"] == profile]
        t = TARGETS.get(profile, {})
        if len(mine) > 1 and t:
            counts = []
            for key, higher in (("ess", True), ("delta_f_abs_error_kT", False), ("e_w2", False), ("t_w2", False)):
                if t.get(key) is not None:
                    met = sum(verdict(row[key], t[key], higher) == "ok" for row in mine)
                    counts.append(f"{key} {met}/{len(mine)}")
            print(f"{profile}: targets met in " + ", ".join(counts) + f" seeds; median ESS "
                  f"{sorted(row['ess'] for row in mine)[len(mine) // 2]:.3f}")
    print("published (ESS, E-W2, T-W2): " + "; ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    write_json_atomic(args.out_dir / "ad2.json", {"benchmark": "ad2", "rows": rows, "targets": TARGETS,
                                                  "published": PUBLISHED, "cpu_count": os.cpu_count()})
    print(f"written {args.out_dir / 'ad2.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
