"""Throughput of the batched torch force field (`TorchEnergy`) against OpenMM: energy+force evaluations per second.

For alanine dipeptide (implicit solvent and vacuum) at batch sizes 1, 64, 1024 and 8192, times in
the same run, interleaved (A, B, C, D, A, B, C, D, ... over ``--rounds`` rounds):

- ``openmm_loop``: `OpenMMEnergy` with one Reference-platform Context evaluating the batch row by
  row (setPositions + getState): the way other toolkits call OpenMM;
- ``openmm_best``: `OpenMMEnergy` as boltzgen configures it by default (the fastest platform,
  measured, and ``parallel="auto"``: worker processes on all cores for large batches);
- ``torch_eager``: `TorchEnergy`, float32, eager PyTorch;
- ``torch_compiled``: the same through ``torch.compile`` (unless ``--no-compile``).

Each timing covers at least ``MIN_CONFIGURATIONS_PER_TIMING`` configurations. The table gives the
median rate with its min-max spread and the median ratio to ``openmm_loop`` and to
``openmm_best`` measured in the same round. Also checks that the variants agree (float32 vs
OpenMM). JSON goes to ``--out``.

    python benchmarks/energy_throughput.py [--rounds 5] [--device cpu|cuda] [--out benchmarks/results/energy_throughput.json]

On a machine without OpenMM (a GPU box) pass ``--torch-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from boltzgen.energy.allocator import keep_freed_memory_in_process

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "energy_throughput.json"
SYSTEMS = ("alanine_dipeptide_implicit", "alanine_dipeptide_vacuum")
BATCH_SIZES = (1, 64, 1024, 8192)
MIN_CONFIGURATIONS_PER_TIMING = 2048


def perturbed_batch(positions: np.ndarray, batch_size: int, seed: int) -> torch.Tensor:
    """``[batch_size, 3N]`` float32: the minimised structure plus 0.01 nm Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(positions, dtype=torch.float64).reshape(1, -1)
    x = x0 + 0.01 * torch.randn(batch_size, x0.shape[1], dtype=torch.float64, generator=generator)
    return x.to(torch.float32)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluations_per_second(energy, x: torch.Tensor, min_configurations: int) -> float:
    n_calls = max(1, min_configurations // len(x))
    synchronize(x.device)
    started = time.perf_counter()
    for _ in range(n_calls):
        energy.energy_and_force(x)
    synchronize(x.device)
    return n_calls * len(x) / (time.perf_counter() - started)


def make_variants(system, device: torch.device, torch_only: bool, compile_: bool) -> dict:
    from boltzgen.energy import TorchEnergy

    variants = {}
    if not torch_only:
        from boltzgen.energy import OpenMMEnergy

        variants["openmm_loop"] = OpenMMEnergy(system.openmm_system, system.temperature, "Reference",
                                               n_workers=1, parallel="serial")
        variants["openmm_best"] = OpenMMEnergy(system.openmm_system, system.temperature)
    variants["torch_eager"] = TorchEnergy.from_openmm(system.openmm_system, system.temperature, device=device)
    if compile_:
        variants["torch_compiled"] = TorchEnergy.from_openmm(
            system.openmm_system, system.temperature, device=device).compiled()
    return variants


def agreement(variants: dict, x: torch.Tensor) -> dict:
    """Largest energy (kT) and force (kT/nm) differences of each variant to the first one."""
    names = list(variants)
    u_ref, f_ref = variants[names[0]].energy_and_force(x.double())
    out = {}
    for name in names[1:]:
        u, f = variants[name].energy_and_force(x)
        out[name] = {
            "max_abs_energy_diff_kT": float((u.double().cpu() - u_ref.cpu()).abs().max()),
            "max_abs_force_diff_kT_per_nm": float((f.double().cpu() - f_ref.cpu()).abs().max()),
            "max_abs_force_kT_per_nm": float(f_ref.abs().max()),
        }
    return out


def benchmark_case(name: str, variants: dict, positions: np.ndarray, batch_size: int, rounds: int,
                   device: torch.device, min_configurations: int) -> list[dict]:
    x = perturbed_batch(positions, batch_size, seed=batch_size).to(device)
    x_cpu = x.cpu()
    for energy in variants.values():  # warm up: Contexts, worker processes, compilation
        energy.energy_and_force(x if energy.__class__.__name__ == "TorchEnergy" else x_cpu)
    rates = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant, energy in variants.items():
            batch = x if energy.__class__.__name__ == "TorchEnergy" else x_cpu
            rates[variant].append(evaluations_per_second(energy, batch, min_configurations))
    baselines = {b: np.asarray(rates[b]) for b in ("openmm_loop", "openmm_best") if b in rates}
    rows = []
    for variant in variants:
        rate = np.asarray(rates[variant])
        row = {
            "system": name, "batch_size": batch_size, "variant": variant, "device": str(device),
            "evals_per_s_median": float(np.median(rate)),
            "evals_per_s_min": float(rate.min()), "evals_per_s_max": float(rate.max()),
            "evals_per_s_rounds": rate.tolist(),
        }
        for baseline_name, baseline in baselines.items():
            ratio = rate / baseline
            row[f"ratio_to_{baseline_name}_median"] = float(np.median(ratio))
            row[f"ratio_to_{baseline_name}_min"] = float(ratio.min())
            row[f"ratio_to_{baseline_name}_max"] = float(ratio.max())
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'system':27s} {'batch':>5s} {'variant':15s} {'evals/s median':>14s} {'(min - max)':>23s} "
              f"{'x openmm_loop':>13s} {'(min - max)':>15s} {'x openmm_best':>13s}")
    print(header)
    print("-" * len(header))
    for row in rows:
        loop = row.get("ratio_to_openmm_loop_median")
        best = row.get("ratio_to_openmm_best_median")
        loop_text = f"{loop:13.2f} ({row['ratio_to_openmm_loop_min']:6.2f} - {row['ratio_to_openmm_loop_max']:6.2f})" if loop else f"{'':13s} {'':15s}"
        best_text = f"{best:13.2f}" if best else ""
        print(f"{row['system']:27s} {row['batch_size']:5d} {row['variant']:15s} {row['evals_per_s_median']:14,.0f} "
              f"({row['evals_per_s_min']:10,.0f} - {row['evals_per_s_max']:10,.0f}) {loop_text} {best_text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    parser.add_argument("--device", default="cpu", help="torch device of TorchEnergy (cpu, cuda)")
    parser.add_argument("--torch-only", action="store_true", help="skip the OpenMM variants")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's default, one per core)")
    parser.add_argument("--min-configurations", type=int, default=MIN_CONFIGURATIONS_PER_TIMING,
                        help="configurations per timing (calls repeat small batches)")
    args = parser.parse_args(argv)

    from boltzgen import systems

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    rows, checks = [], {}
    for name in args.systems:
        system = systems.load(name)
        variants = make_variants(system, device, args.torch_only, not args.no_compile)
        try:
            check_x = perturbed_batch(system.positions, 64, seed=1).to(device)
            checks[name] = agreement(variants, check_x)
            for batch_size in args.batch_sizes:
                rows.extend(benchmark_case(name, variants, system.positions, batch_size, args.rounds, device,
                                           args.min_configurations))
                print_table([r for r in rows if r["system"] == name and r["batch_size"] == batch_size])
        finally:
            for energy in variants.values():
                energy.close()
    wall_s = time.perf_counter() - started
    print()
    print_table(rows)
    print(f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}, {wall_s:.0f} s")
    for name, check in checks.items():
        for variant, diff in check.items():
            print(f"agreement {name} {variant}: |dE| <= {diff['max_abs_energy_diff_kT']:.2e} kT, "
                  f"|dF| <= {diff['max_abs_force_diff_kT_per_nm']:.2e} kT/nm (max |F| {diff['max_abs_force_kT_per_nm']:.0f})")

    machine = {
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }
    try:
        import openmm

        machine["openmm"] = openmm.__version__
    except ImportError:
        pass
    result = {
        "benchmark": "energy_throughput",
        "unit": "energy+force evaluations per second (configurations/s)",
        "machine": machine,
        "settings": {"rounds": args.rounds, "batch_sizes": args.batch_sizes, "systems": args.systems,
                     "min_configurations_per_timing": args.min_configurations, "dtype": "float32",
                     "malloc_tuned": bool(keep_freed_memory_in_process())},
        "agreement_float32_vs_float64_reference": checks,
        "rows": rows,
        "wall_s": wall_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
