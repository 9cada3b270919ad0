"""The ``boltzgen`` command line: ``boltzgen <command> [options]``.

Commands:
    systems    list the ready-made systems with their descriptions
    md         reference molecular dynamics (resumable, parallel replicas; see `boltzgen.md`)
    run        the main job: train, sample, reweight, free energies (see `boltzgen.job`)
    umbrella   umbrella sampling along phi with MBAR and error bars from repeats (see `boltzgen.umbrella`)

Each command is a pair of small functions, ``_add_<command>_arguments(parser)`` and
``_<command>_command(args) -> exit code``, registered in :data:`COMMANDS`; adding a command means
adding one entry there. Expected failures (`BoltzgenError`, ValueError, OSError such as a missing
file) print one line on stderr and exit with code 2; set ``BOLTZGEN_TRACEBACK=1`` to see the
traceback instead. Ctrl-C exits with code 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from boltzgen import __version__
from boltzgen.errors import BoltzgenError

#: Exit code for bad usage and expected errors (the same code argparse uses).
EXIT_USAGE = 2
#: Exit code after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


# --- argument types ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _print_error(command: str, message: str) -> None:
    print(f"boltzgen {command}: error: {message}", file=sys.stderr)


# --- boltzgen systems --------------------------------------------------------------------------


def _add_systems_arguments(parser: argparse.ArgumentParser) -> None:
    """``boltzgen systems`` takes no options."""


def _systems_command(args: argparse.Namespace) -> int:
    """Print one line per ready-made system: its name and description."""
    from boltzgen import systems

    names = systems.available()
    width = max(len(name) for name in names)
    for name in names:
        try:
            description = systems.load(name).description
        except Exception as error:  # noqa: BLE001 - a broken builder must not hide the others
            description = f"(cannot be built here: {type(error).__name__}: {error})"
        print(f"{name:<{width}}  {description}")
    return 0


# --- boltzgen md -------------------------------------------------------------------------------


def _add_md_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", help="system name (see `boltzgen systems`)")
    parser.add_argument("--ns", type=_positive_float, required=True, help="production time per replica, ns")
    parser.add_argument("--replicas", type=_positive_int, default=1, help="independent trajectories (default 1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; rerun to resume)")
    parser.add_argument(
        "--seed", type=_non_negative_int, default=None, help="run seed (default: random, recorded in DIR)"
    )
    parser.add_argument(
        "--platform", default="auto", help="OpenMM platform (Reference, CPU, ...) or auto: the fastest here (default)"
    )
    parser.add_argument(
        "--friction", type=_non_negative_float, default=None, metavar="PER_PS",
        help="Langevin friction in 1/ps (default: the system's reference value)",
    )
    parser.add_argument(
        "--warmup-steps", type=_non_negative_int, default=50_000, help="steps after minimisation (default 50000)"
    )
    parser.add_argument(
        "--frame-interval-ps", type=_positive_float, default=1.0, help="time between saved frames, ps (default 1)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=None, help="replicas run at once (default: number of cores)"
    )
    parser.add_argument(
        "--start", default=None, metavar="FILE",
        help="start the replicas from this single-frame structure (PDB or any file mdtraj reads; the "
        "system's atoms in the same order) instead of the system's positions",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def _md_command(args: argparse.Namespace) -> int:
    """Run (or resume) reference MD; print where the data went."""
    from boltzgen.md import run_md

    def log(message: str) -> None:
        if not args.quiet:
            print(f"boltzgen md: {message}", file=sys.stderr)

    try:
        result = run_md(
            args.system,
            args.out,
            ns=args.ns,
            n_replicas=args.replicas,
            seed=args.seed,
            platform=args.platform,
            friction_per_ps=args.friction,
            warmup_steps=args.warmup_steps,
            frame_interval_ps=args.frame_interval_ps,
            n_workers=args.workers,
            start=args.start,
            quiet=args.quiet,
            log=log,
        )
    except KeyboardInterrupt:
        _print_error("md", "interrupted; the frames saved so far are kept: run the same command again to resume")
        return EXIT_INTERRUPTED
    if result.status == "already finished":
        print(f"boltzgen md: {result.directory} already holds this finished run; nothing to do")
    else:
        summary = result.summary or {}
        speed = summary.get("ns_per_day_per_core")
        speed_text = f", {speed:.0f} ns/day per core" if speed else ""
        print(
            f"boltzgen md: {result.status}: {result.frames_done} frames in {result.directory} "
            f"(trajectory.npz, summary.json){speed_text}"
        )
    return 0


# --- boltzgen run -----------------------------------------------------------------------------


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from boltzgen.energy.backends import ENERGY_BACKENDS
    from boltzgen.job.model import FLOW_KINDS
    from boltzgen.job.samplers import SAMPLERS
    from boltzgen.job import PROFILES

    parser.add_argument("system", help="molecular system name (see `boltzgen systems`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (rerun to resume training)")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", dest="profile", action="store_const", const="quick",
                         help="the quick profile: ~15 minutes on 2 CPU cores (default)")
    profile.add_argument("--profile", choices=sorted(PROFILES), help="named settings: quick, full (benchmark), smoke (tests)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="train on a `boltzgen md` output directory instead of the shipped reference data")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of everything random (default 0)")
    parser.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:N (default: CUDA if available)")
    parser.add_argument("--energy", choices=ENERGY_BACKENDS, default="auto",
                        help="target energy: torch (batched PyTorch force field), openmm (OpenMM Contexts), "
                             "or auto (torch when it supports every force of the system; default)")
    parser.add_argument("--platform", default="auto", help="OpenMM platform of the target energy (default: fastest)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="is",
                        help="is: importance sampling (default); smc: sequential Monte Carlo from the flow to the "
                             "target; mcmc: flow-proposal Metropolis-Hastings chains (rerun in the same --out "
                             "directory to resample a trained model)")
    parser.add_argument("--flow", choices=FLOW_KINDS, default="smooth",
                        help="coupling transformers: smooth (default; C-infinity mixtures, force matching at weight "
                             "30, a density whose forces can drive MD) or spline (rational-quadratic splines, about "
                             "half the training time, a less reliable ESS)")
    parser.add_argument("--loss", default=None, metavar="TERMS",
                        help="training loss terms and weights, e.g. nll,fm,kl or nll=1,fm=3,kl=0.1 "
                             "(default: the profile's nll + fm, then + kl)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_command(args: argparse.Namespace) -> int:
    """Train, sample, reweight, analyse; print the summary table."""
    from boltzgen.job import RunOptions, run_job, summary_table

    options = RunOptions(
        system=args.system, out_dir=args.out, profile=args.profile or "quick", seed=args.seed,
        device=args.device, data_dir=args.data, energy_platform=args.platform, quiet=args.quiet,
        energy_backend=args.energy, sampler=args.sampler, flow=args.flow, loss=args.loss,
    )
    try:
        summary = run_job(options)
    except KeyboardInterrupt:
        _print_error("run", "interrupted; training checkpoints are kept: run the same command again to resume")
        return EXIT_INTERRUPTED
    print(summary_table(summary))
    print(f"boltzgen run: results in {args.out} (summary.json, model.pt, *.png)")
    return 0


# --- boltzgen umbrella ------------------------------------------------------------------------


def _add_umbrella_arguments(parser: argparse.ArgumentParser) -> None:
    from boltzgen.umbrella.config import (
        DEFAULT_FORCE_CONSTANT,
        DEFAULT_PS_PER_WINDOW,
        DEFAULT_REPEATS,
        DEFAULT_WINDOWS,
    )

    parser.add_argument("system", help="peptide with one backbone phi (see `boltzgen systems`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; rerun to resume)")
    parser.add_argument(
        "--windows", type=_positive_int, default=DEFAULT_WINDOWS,
        help=f"windows over the phi circle, evenly spaced (default {DEFAULT_WINDOWS}: 10 degrees)",
    )
    parser.add_argument(
        "--force-constant", type=_positive_float, default=DEFAULT_FORCE_CONSTANT, metavar="K",
        help=f"restraint force constant, kJ/mol/rad^2 (default {DEFAULT_FORCE_CONSTANT:g})",
    )
    parser.add_argument(
        "--psi-windows", type=_positive_int, default=1, metavar="M",
        help=(
            "2-D umbrella: split every phi window into M windows with psi centres evenly spaced over the "
            "circle, each restraining psi too (default 1: psi free, a 1-D umbrella along phi)"
        ),
    )
    parser.add_argument(
        "--psi-force-constant", type=_positive_float, default=None, metavar="K",
        help=(
            "psi restraint force constant of a 2-D umbrella, kJ/mol/rad^2 (default: restraint width "
            "sqrt(kT/K) = 0.45 of the psi spacing 360/M, so neighbouring psi windows overlap well; "
            "e.g. 11.2 for M = 6, 44.9 for M = 12 at 300 K)"
        ),
    )
    parser.add_argument(
        "--ps-per-window", type=_positive_float, default=DEFAULT_PS_PER_WINDOW, metavar="T",
        help=f"production time per window and repeat, ps (default {DEFAULT_PS_PER_WINDOW:g})",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=DEFAULT_REPEATS,
        help=f"independent repeats, other seeds and starting structures (default {DEFAULT_REPEATS})",
    )
    parser.add_argument(
        "--equilibration-ps", type=_non_negative_float, default=20.0,
        help="dynamics in each window before its first frame, ps (default 20)",
    )
    parser.add_argument(
        "--seeding-ps", type=_positive_float, default=10.0,
        help="restrained dynamics per window while the seeding chain walks to it, ps (default 10)",
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=None, help="run seed (default: random, recorded in DIR)"
    )
    parser.add_argument(
        "--platform", default="auto", help="OpenMM platform (Reference, CPU, ...) or auto: the fastest here (default)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=None, help="windows run at once (default: number of cores)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def _umbrella_command(args: argparse.Namespace) -> int:
    """Run (or resume) umbrella sampling along phi; print dF with both error bars and the flags."""
    from boltzgen.umbrella import make_config, run_umbrella
    from boltzgen.umbrella.runner import command_line

    def log(message: str) -> None:
        if not args.quiet:
            print(f"boltzgen umbrella: {message}", file=sys.stderr)

    config = make_config(
        args.system,
        n_windows=args.windows,
        force_constant=args.force_constant,
        ps_per_window=args.ps_per_window,
        repeats=args.repeats,
        seed=args.seed,
        platform=args.platform,
        equilibration_ps=args.equilibration_ps,
        seeding_ps=args.seeding_ps,
        out_dir=args.out,
        psi_windows=args.psi_windows,
        psi_force_constant=args.psi_force_constant,
    )
    try:
        result = run_umbrella(
            args.system, config, args.out, n_workers=args.workers, quiet=args.quiet, log=log, command=command_line()
        )
    except KeyboardInterrupt:
        _print_error("umbrella", "interrupted; finished windows are kept: run the same command again to resume")
        return EXIT_INTERRUPTED
    summary = result.summary
    if result.status == "already finished":
        print(f"boltzgen umbrella: {result.directory} already holds this finished run; nothing to do")
    error = summary["delta_f_err_kT"]
    error_text = f" ± {error:.2f} (standard error over {summary['repeats']} repeats)" if error is not None else ""
    mbar_text = ", ".join(f"{v:.2f} ± {e:.2f}" for v, e in zip(summary["delta_f_per_repeat_kT"], summary["delta_f_mbar_err_kT"]))
    if summary.get("psi_windows", 1) > 1:
        print(
            f"boltzgen umbrella: 2-D umbrella on (phi, psi): {summary['n_windows']} phi x {summary['psi_windows']} psi "
            f"windows (psi restraint {summary['psi_force_constant_kj_mol_rad2']:g} kJ/mol/rad^2)"
        )
    print(f"boltzgen umbrella: dF = F(phi>0) - F(phi<0) = {summary['delta_f_kT']:.2f}{error_text} kT")
    print(f"boltzgen umbrella: per repeat (MBAR error): {mbar_text} kT")
    if summary.get("delta_f_err_from_mbar_kT") is not None and summary["repeats"] > 1:
        print(
            f"boltzgen umbrella: error of the mean the MBAR errors predict: {summary['delta_f_err_from_mbar_kT']:.2f} kT "
            f"(consistency of the repeats with their MBAR errors: chi2 p = {summary['repeat_consistency']['p_value']:.2g})"
            if summary["repeat_consistency"].get("p_value") is not None
            else f"boltzgen umbrella: error of the mean the MBAR errors predict: {summary['delta_f_err_from_mbar_kT']:.2f} kT"
        )
    counts = summary.get("flag_counts") or {}
    flag_text = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"
    print(f"boltzgen umbrella: flags: {flag_text} (details in summary.json); results in {result.directory}")
    return 0


# --- registry and entry point ------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argument setup, implementation and longer description."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS: list[Command] = [
    Command("systems", "list the ready-made systems", _add_systems_arguments, _systems_command),
    Command(
        "md",
        "reference molecular dynamics (parallel replicas, resumable)",
        _add_md_arguments,
        _md_command,
        description=(
            "Reference MD: minimise, warm up, then run independent Langevin replicas "
            "(LangevinMiddleIntegrator, 1 fs) in parallel processes, saving a frame every "
            "--frame-interval-ps. Writes DIR/trajectory.npz (positions, forces, energies; see "
            "boltzgen.md.storage), metadata.json, topology.pdb with one DCD per replica, and "
            "summary.json (speed, phi > 0 basin counts). Run the same command again to resume an "
            "interrupted run."
        ),
    ),
    Command(
        "run",
        "the main job: train a Boltzmann generator, sample, reweight, compute free energies",
        _add_run_arguments,
        _run_command,
        description=(
            "Train a Boltzmann generator (internal-coordinate coupling flow; maximum likelihood + force matching, then "
            "maximum likelihood + reverse KL) on the shipped reference data (or --data), draw samples "
            "with importance weights and write DIR/summary.json (ESS, dF(phi>0 - phi<0) with bootstrap "
            "errors vs the umbrella-sampling reference, E-W2, T-W2, cost), plots and model.pt."
        ),
    ),
    Command(
        "umbrella",
        "umbrella sampling along phi with MBAR: reference free energies with error bars from repeats",
        _add_umbrella_arguments,
        _umbrella_command,
        description=(
            "Umbrella sampling along the backbone torsion phi: --windows windows with a periodic harmonic "
            "restraint (--force-constant, kJ/mol/rad^2), LangevinMiddle 1 fs, a frame every ps, in "
            "parallel processes; --repeats independent repeats with other seeds and starting structures. "
            "--psi-windows M > 1 makes it a 2-D umbrella on (phi, psi): each phi window split into M windows "
            "that restrain psi too (--psi-force-constant). "
            "MBAR per repeat gives dF = F(phi>0) - F(phi<0) (kT) and the phi profile; the error bar is the "
            "standard error over repeats, next to each repeat's MBAR error. Windows that drift, spread, "
            "overlap too little or whose psi does not relax are flagged. Writes DIR/summary.json, "
            "profile.png, umbrella.npz (time series and reduced potentials to redo the MBAR) and "
            "frames.npz. Run the same command again to resume."
        ),
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="boltzgen", description="Boltzmann generators: sample molecular equilibrium, compute free energies."
    )
    parser.add_argument("--version", action="version", version=f"boltzgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``boltzgen`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, usage errors
        return int(exit_request.code or 0)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _print_error(args.command, "interrupted")
        return EXIT_INTERRUPTED
    except (BoltzgenError, ValueError, OSError) as error:
        if os.environ.get("BOLTZGEN_TRACEBACK"):
            raise
        _print_error(args.command, str(error))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
