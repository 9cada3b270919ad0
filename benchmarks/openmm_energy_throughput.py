"""Throughput of `boltzgen.energy.OpenMMEnergy`: energy+force evaluations per second.

For alanine dipeptide (implicit solvent and vacuum), batch sizes 1, 64 and 1024, on the Reference
and CPU platforms, compares one Context (a serial loop; OpenMM's default thread count), a thread
pool, a process pool and ``parallel="auto"``. Timings on a shared machine are noisy, so the
variants are interleaved (A, B, C, D, A, B, C, D, ...) over several rounds; the table gives the
median and the min-max spread, and each variant's ratio to the single Context measured in the
same round. Also checks whether OpenMM releases the GIL while it computes (what makes threads work).

    python benchmarks/openmm_energy_throughput.py [--rounds 5] [--out benchmarks/results/openmm_energy_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openmm
import torch

from boltzgen import systems
from boltzgen.energy.openmm import OpenMMEnergy, default_n_workers
from boltzgen.energy.openmm_platforms import create_context

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "openmm_energy_throughput.json"
SYSTEMS = ("alanine_dipeptide_implicit", "alanine_dipeptide_vacuum")
PLATFORMS = ("Reference", "CPU")
BATCH_SIZES = (1, 64, 1024)
VARIANTS = ("single_context", "threads", "processes", "auto")
#: Each timing covers at least this many configurations (batch 1: 1024 calls; 64: 16 calls; 1024: 1 call).
MIN_CONFIGURATIONS_PER_TIMING = 1024


def make_energies(system, platform_name: str, n_workers: int) -> dict[str, OpenMMEnergy]:
    """One OpenMMEnergy per variant; the single Context runs with the platform's default threads."""
    openmm_system, temperature = system.openmm_system, system.temperature
    return {
        "single_context": OpenMMEnergy(openmm_system, temperature, platform_name, n_workers=1, parallel="serial"),
        "threads": OpenMMEnergy(openmm_system, temperature, platform_name, n_workers=n_workers, parallel="threads"),
        "processes": OpenMMEnergy(openmm_system, temperature, platform_name, n_workers=n_workers, parallel="processes"),
        "auto": OpenMMEnergy(openmm_system, temperature, platform_name, n_workers=n_workers, parallel="auto"),
    }


def perturbed_batch(system, batch_size: int, seed: int) -> torch.Tensor:
    """``[batch_size, 3N]`` float64: the minimised structure plus 0.01 nm Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(system.positions, dtype=torch.float64).reshape(1, -1)
    return x0 + 0.01 * torch.randn(batch_size, x0.shape[1], dtype=torch.float64, generator=generator)


def evaluations_per_second(energy: OpenMMEnergy, x: torch.Tensor) -> float:
    n_calls = max(1, MIN_CONFIGURATIONS_PER_TIMING // len(x))
    started = time.perf_counter()
    for _ in range(n_calls):
        energy.energy_and_force(x)
    return n_calls * len(x) / (time.perf_counter() - started)


def benchmark_case(system, platform_name: str, batch_size: int, rounds: int, n_workers: int) -> list[dict]:
    x = perturbed_batch(system, batch_size, seed=batch_size)
    energies = make_energies(system, platform_name, n_workers)
    try:
        for energy in energies.values():  # warm up: create Contexts, threads, processes
            energy.energy_and_force(x)
        rates = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                rates[variant].append(evaluations_per_second(energies[variant], x))
        auto_mode = energies["auto"].parallel_mode_for(batch_size)
    finally:
        for energy in energies.values():
            energy.close()
    baseline = np.asarray(rates["single_context"])
    rows = []
    for variant in VARIANTS:
        rate = np.asarray(rates[variant])
        ratio = rate / baseline
        rows.append(
            {
                "system": system.name,
                "platform": platform_name,
                "batch_size": batch_size,
                "variant": variant,
                "auto_mode": auto_mode if variant == "auto" else None,
                "evals_per_s_median": float(np.median(rate)),
                "evals_per_s_min": float(rate.min()),
                "evals_per_s_max": float(rate.max()),
                "ratio_to_single_context_median": float(np.median(ratio)),
                "ratio_to_single_context_min": float(ratio.min()),
                "ratio_to_single_context_max": float(ratio.max()),
                "evals_per_s_rounds": rate.tolist(),
            }
        )
    return rows


def gil_probe(duration_s: float = 0.3) -> dict:
    """Does a Python thread keep running while another thread is inside ``Context.getState``?

    Times a pure-Python counter alone, then while the main thread evaluates a 2000-particle
    all-pairs system on the Reference platform. If getState held the GIL, the counter would stall.
    """
    system = openmm.System()
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    rng = np.random.default_rng(0)
    for i in range(2000):
        system.addParticle(12.0)
        nonbonded.addParticle(0.1 * (-1) ** i, 0.3, 0.5)
    system.addForce(nonbonded)
    context = create_context(system, "Reference", {})
    context.setPositions(rng.uniform(0.0, 8.0, (2000, 3)))

    count = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    time.sleep(0.05)
    start_count, started = count[0], time.perf_counter()
    time.sleep(duration_s)
    rate_alone = (count[0] - start_count) / (time.perf_counter() - started)
    start_count, started, n_calls = count[0], time.perf_counter(), 0
    while time.perf_counter() - started < duration_s:
        context.getState(energy=True, forces=True)
        n_calls += 1
    rate_during = (count[0] - start_count) / (time.perf_counter() - started)
    stop.set()
    thread.join()
    return {
        "getstate_ms": 1e3 * duration_s / max(n_calls, 1),
        "counter_rate_alone_per_s": rate_alone,
        "counter_rate_during_getstate_per_s": rate_during,
        "gil_released": bool(rate_during > 0.2 * rate_alone),
    }


def print_table(rows: list[dict]) -> None:
    header = f"{'system':27s} {'platform':9s} {'batch':>5s} {'variant':15s} {'evals/s median':>14s} {'(min - max)':>19s} {'x single ctx':>12s} {'(min - max)':>13s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        variant = row["variant"] + (f"->{row['auto_mode'][:4]}" if row["auto_mode"] else "")
        print(
            f"{row['system']:27s} {row['platform']:9s} {row['batch_size']:5d} {variant:15s} "
            f"{row['evals_per_s_median']:14,.0f} ({row['evals_per_s_min']:8,.0f} - {row['evals_per_s_max']:8,.0f}) "
            f"{row['ratio_to_single_context_median']:12.2f} ({row['ratio_to_single_context_min']:5.2f} - {row['ratio_to_single_context_max']:5.2f})"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--n-workers", type=int, default=default_n_workers(), help="workers of the pools")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--platforms", nargs="+", default=list(PLATFORMS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    started = time.perf_counter()
    gil = gil_probe()
    print(
        f"GIL released during Context.getState: {gil['gil_released']} (a Python thread ran at "
        f"{gil['counter_rate_during_getstate_per_s'] / gil['counter_rate_alone_per_s']:.0%} of its solo speed)"
    )
    rows = []
    for name in args.systems:
        system = systems.load(name)
        for platform_name in args.platforms:
            for batch_size in args.batch_sizes:
                rows.extend(benchmark_case(system, platform_name, batch_size, args.rounds, args.n_workers))
    wall_s = time.perf_counter() - started
    print_table(rows)
    print(f"{args.rounds} rounds, {args.n_workers} workers, {wall_s:.0f} s")

    result = {
        "benchmark": "openmm_energy_throughput",
        "unit": "energy+force evaluations per second (configurations/s)",
        "machine": {
            "cpu_cores_available": default_n_workers(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "openmm": openmm.__version__,
            "torch": torch.__version__,
        },
        "settings": {
            "rounds": args.rounds,
            "n_workers": args.n_workers,
            "batch_sizes": args.batch_sizes,
            "min_configurations_per_timing": MIN_CONFIGURATIONS_PER_TIMING,
            "single_context": "n_workers=1, parallel='serial' (platform default threads)",
        },
        "gil_probe": gil,
        "results": rows,
        "wall_s": wall_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
