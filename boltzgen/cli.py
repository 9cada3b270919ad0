"""The ``boltzgen`` command line: ``boltzgen <command> [options]``.

Commands:
    systems    list the ready-made systems with their descriptions
    md         reference molecular dynamics (resumable, parallel replicas; see `boltzgen.md`)

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
