"""Run (or resume) umbrella sampling along phi into a directory, then analyse it.

>>> from boltzgen.umbrella import make_config, run_umbrella
>>> if __name__ == "__main__":  # needed in scripts: workers are spawned and import the script
...     config = make_config("alanine_dipeptide_implicit", ps_per_window=400, repeats=3, seed=1)  # doctest: +SKIP
...     result = run_umbrella("alanine_dipeptide_implicit", config, "ad2_umbrella")  # doctest: +SKIP
...     result.summary["delta_f_kT"], result.summary["delta_f_err_kT"]  # doctest: +SKIP

Phases: (1) per repeat, one process builds the starting structure and walks the seeding chain
(`boltzgen.umbrella.starts`); (2) all windows of all repeats run in a pool of single-threaded
worker processes, each window writing its own file when complete; (3) the main process loads
every window, runs MBAR per repeat and pooled, checks the windows and writes ``umbrella.npz``,
``frames.npz``, ``profile.png`` and (last) ``summary.json``. Running the same call again skips
finished seeding chains and windows, and redoes only the analysis once everything is there.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from boltzgen.errors import BoltzgenError
from boltzgen.io import exclusive_lock, read_json, save_npz_atomic, write_json_atomic, write_text_atomic
from boltzgen.md.config import new_run_seed
from boltzgen.md.metadata import software_versions, utc_now
from boltzgen.md.platforms import AUTO, fastest_platform, get_platform
from boltzgen.md.runner import available_cores
from boltzgen.md.sessions import SessionRecord
from boltzgen.progress import progress_bar
from boltzgen.umbrella.analysis import UmbrellaAnalysis, UmbrellaData, analyse
from boltzgen.umbrella.config import (
    DEFAULT_FORCE_CONSTANT,
    DEFAULT_PS_PER_WINDOW,
    DEFAULT_PSI_WINDOWS,
    DEFAULT_REPEATS,
    DEFAULT_WINDOWS,
    UmbrellaConfig,
    default_psi_force_constant,
)
from boltzgen.umbrella.plots import profile_plot
from boltzgen.umbrella.restraint import backbone_torsions, restraint_width
from boltzgen.umbrella.starts import START_NAMES
from boltzgen.umbrella.storage import (
    FORMAT_NAME,
    FORMAT_VERSION,
    UmbrellaDirectory,
    read_seeds,
    read_window,
    write_umbrella_npz,
)
from boltzgen.umbrella.tasks import ChainTask, WindowTask
from boltzgen.umbrella.workers import run_in_processes
from boltzgen.units import kt_kj_per_mol


@dataclass
class UmbrellaResult:
    """Outcome of :func:`run_umbrella`.

    ``status`` is ``"finished"`` (this call completed the run) or ``"already finished"`` (nothing
    to do: ``summary`` is read back from ``summary.json`` and ``analysis`` is None).
    """

    directory: Path
    summary: dict[str, Any]
    analysis: UmbrellaAnalysis | None
    status: str


def load_molecular_system(system, system_options: dict | None = None):
    """A `MolecularSystem` from a registry name or an instance; BoltzgenError for toys/periodic."""
    from boltzgen import systems

    if isinstance(system, str):
        system = systems.load(system, **dict(system_options or {}))
    if getattr(system, "openmm_system", None) is None:
        raise BoltzgenError(
            f"system {system.name!r} is a toy system without an OpenMM system; umbrella sampling along phi "
            "needs a peptide (e.g. alanine_dipeptide_implicit)"
        )
    if system.openmm_system.usesPeriodicBoundaryConditions():
        raise BoltzgenError(f"system {system.name!r} is periodic; boltzgen umbrella supports non-periodic systems only")
    return system


def make_config(
    system,
    *,
    n_windows: int = DEFAULT_WINDOWS,
    force_constant: float = DEFAULT_FORCE_CONSTANT,
    ps_per_window: float = DEFAULT_PS_PER_WINDOW,
    repeats: int = DEFAULT_REPEATS,
    seed: int | None = None,
    platform: str = AUTO,
    equilibration_ps: float = 20.0,
    seeding_ps: float = 10.0,
    frame_interval_ps: float = 1.0,
    friction_per_ps: float | None = None,
    starts: tuple[str, ...] | None = None,
    system_options: dict | None = None,
    out_dir: str | os.PathLike | None = None,
    psi_windows: int = DEFAULT_PSI_WINDOWS,
    psi_force_constant: float | None = None,
) -> UmbrellaConfig:
    """An `UmbrellaConfig` for ``system`` (name or `MolecularSystem`).

    ``seed=None`` takes the seed stored in ``out_dir`` (resuming) or a fresh random one;
    ``platform="auto"`` the stored platform or the fastest one here (measured briefly).
    ``psi_windows > 1`` makes a 2-D umbrella on (phi, psi); ``psi_force_constant=None`` then takes
    `default_psi_force_constant` (restraint width 0.45 of the psi spacing at the system's temperature).
    """
    molecular = load_molecular_system(system, system_options)
    stored = None
    if out_dir is not None:
        stored_dict = UmbrellaDirectory(out_dir).read_config_dict()
        stored = UmbrellaConfig.from_dict(stored_dict) if stored_dict else None
    if seed is None:
        seed = stored.seed if stored else new_run_seed()
    if str(platform).lower() == AUTO:
        platform = (
            stored.platform
            if stored
            else fastest_platform(molecular.openmm_system, molecular.positions, molecular.temperature)
        )
    else:
        platform = get_platform(platform).getName()
    psi_windows = int(psi_windows)
    if psi_force_constant is None:
        psi_force_constant = default_psi_force_constant(psi_windows, kt_kj_per_mol(float(molecular.temperature)))
    starts = tuple(starts) if starts is not None else START_NAMES
    for name in starts:
        if name not in START_NAMES:
            raise ValueError(f"unknown starting structure {name!r}; choose from {', '.join(START_NAMES)}")
    return UmbrellaConfig(
        system=molecular.name,
        n_windows=int(n_windows),
        force_constant=float(force_constant),
        ps_per_window=float(ps_per_window),
        repeats=int(repeats),
        seed=int(seed),
        platform=platform,
        temperature_K=float(molecular.temperature),
        friction_per_ps=float(molecular.friction_per_ps if friction_per_ps is None else friction_per_ps),
        frame_interval_ps=float(frame_interval_ps),
        equilibration_ps=float(equilibration_ps),
        seeding_ps=float(seeding_ps),
        starts=starts,
        system_options=dict(system_options or {}),
        psi_windows=psi_windows,
        psi_force_constant=float(psi_force_constant),
    )


def _check_directory(run: UmbrellaDirectory) -> None:
    if not run.root.exists() or run.run_json.exists():
        return
    own = run.own_names() | {"sessions.json"}
    foreign = [p.name for p in run.root.iterdir() if p.name not in own and not p.name.startswith(".")]
    if foreign:
        raise BoltzgenError(
            f"{run.root} exists and is not a `boltzgen umbrella` output directory (it holds {sorted(foreign)[:5]}); "
            "choose a new --out directory"
        )


def _initialise(run: UmbrellaDirectory, config: UmbrellaConfig, system, torsions: dict, command: str | None) -> None:
    import openmm
    from openmm import app

    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.system_xml, openmm.XmlSerializer.serialize(system.openmm_system))
    with open(run.topology_pdb, "w") as handle:
        app.PDBFile.writeFile(system.topology, np.asarray(system.positions) * 10.0 * openmm.unit.angstrom, handle)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "description": system.description,
        "forcefield_files": list(system.forcefield),
        "torsion_atoms": {name: [int(a) for a in atoms] for name, atoms in torsions.items()},
        "restraint": (
            "0.5*k*d^2, d = theta - theta0 wrapped into [-pi, pi) (OpenMM CustomTorsionForce)"
            + (
                "; 2-D windows: the sum of such restraints on phi (force_constant) and psi (psi_force_constant), "
                "window w = j * psi_windows + m has phi centre j and psi centre m"
                if config.two_dimensional
                else ""
            )
        ),
        "versions": software_versions(),
        "date_started_utc": utc_now(),
        "command": command,
    }
    write_json_atomic(run.run_json, {"config": config.to_dict(), "metadata": metadata})


def _resolve(run: UmbrellaDirectory, config: UmbrellaConfig) -> None:
    stored = run.read_config_dict()
    if stored is None:
        return
    differences = config.differences(UmbrellaConfig.from_dict(stored))
    if differences:
        raise BoltzgenError(
            f"{run.root} holds an umbrella run with other settings: {'; '.join(differences)}. "
            "Use the same arguments to resume it, or a new --out directory"
        )


def _run_phase(tasks: list, n_workers: int, total: int, initial: int, desc: str, unit: str, quiet: bool, session) -> None:
    if not tasks:
        return
    with progress_bar(total=total, initial=initial, desc=desc, unit=unit, quiet=quiet) as bar:
        def on_progress(units: int) -> None:
            bar.update(units)
            session.save(force=False)

        try:
            done = run_in_processes(tasks, n_workers, on_progress)
        finally:
            session.save()
    if not all(done):
        raise KeyboardInterrupt


def _load_data(run: UmbrellaDirectory, config: UmbrellaConfig, with_psi: bool) -> tuple[UmbrellaData, np.ndarray, list]:
    shape = (config.repeats, config.n_total_windows, config.n_frames)
    phi = np.empty(shape)
    psi = np.empty(shape) if with_psi else None
    reduced = np.empty(shape)
    positions = None
    infos = []
    for r in range(config.repeats):
        for k in range(config.n_total_windows):
            arrays, info = read_window(run.window_file(r, k))
            phi[r, k] = arrays["phi"]
            reduced[r, k] = arrays["reduced_potential"]
            if with_psi:
                psi[r, k] = arrays["psi"]
            if positions is None:
                positions = np.empty(shape + arrays["positions"].shape[1:], dtype=np.float32)
            positions[r, k] = arrays["positions"]
            infos.append(info)
    return UmbrellaData(phi, psi, reduced), positions, infos


def _versions() -> dict[str, str | None]:
    """Software versions, pymbar included."""
    from importlib import metadata

    versions = dict(software_versions())
    try:
        versions["pymbar"] = metadata.version("pymbar")
    except metadata.PackageNotFoundError:
        versions["pymbar"] = None
    return versions


def _json_list(values) -> list:
    return [None if v is None or not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def _summary(
    config: UmbrellaConfig,
    system,
    analysis: UmbrellaAnalysis,
    starts: list[dict],
    infos: list[dict],
    session: SessionRecord,
    n_workers: int,
    kt: float,
    command: str | None,
) -> dict[str, Any]:
    per = analysis.per_repeat
    first = per[0]
    combined = analysis.combined
    wall_s, core_s = session.totals()
    window_ns, seeding_ns = simulated_ns_of(config)
    simulated_ns = window_ns + seeding_ns
    window_s = sum(info["wall_s"] for info in infos)
    kinds: dict[str, int] = {}
    for flag in analysis.flags:
        kinds[flag["kind"]] = kinds.get(flag["kind"], 0) + 1
    return {
        "system": config.system,
        "description": system.description,
        "delta_f_kT": combined["delta_f_kT"],
        "delta_f_err_kT": combined["delta_f_err_kT"],
        "delta_f_err_method": (
            f"standard error of the mean over {config.repeats} independent repeats (std ddof=1 / sqrt(R)); "
            "repeats differ in seeds and starting structures"
            if config.repeats > 1
            else "not available: one repeat (use --repeats >= 2 for an error bar that sees slow motions)"
        ),
        "delta_f_definition": "F(phi > 0) - F(phi < 0) = -ln(P(phi > 0) / P(phi < 0)), kT, unbiased ensemble",
        "delta_f_err_from_mbar_kT": combined["delta_f_err_from_mbar_kT"],
        "delta_f_err_from_mbar_method": (
            "what the repeats' MBAR errors predict for the error of their mean: sqrt(sum sigma_r^2) / R; with few "
            "repeats the error from repeats is itself uncertain, so quote the larger of the two"
        ),
        "delta_f_per_repeat_kT": [r.delta_f_kT for r in per],
        "delta_f_mbar_err_kT": [r.delta_f_mbar_err_kT for r in per],
        "delta_f_mbar_err_method": (
            "MBAR with a moving-block bootstrap (100 samples) of each window's time series, blocks of "
            "ceil(g) frames, g = statistical inefficiency (largest of phi, cos psi, sin psi)"
        ),
        "delta_f_naive_mbar_err_kT": [r.delta_f_naive_err_kT for r in per],
        "delta_f_naive_mbar_err_method": "MBAR asymptotic error, every frame taken as independent (for comparison)",
        "delta_f_repeats_std_kT": combined["delta_f_repeats_std_kT"],
        "delta_f_pooled_kT": None if analysis.pooled is None else analysis.pooled.delta_f_kT,
        "delta_f_pooled_mbar_err_kT": None if analysis.pooled is None else analysis.pooled.delta_f_mbar_err_kT,
        "p_phi_positive": combined["p_phi_positive"],
        "p_phi_positive_err": combined["p_phi_positive_err"],
        "p_phi_positive_per_repeat": [r.p_phi_positive for r in per],
        "repeat_consistency": analysis.repeat_consistency,
        "n_windows": config.n_windows,
        "window_spacing_deg": config.spacing_deg,
        "ps_per_window": config.ps_per_window,
        "n_frames_per_window": config.n_frames,
        "equilibration_ps": config.equilibration_ps,
        "seeding_ps": config.seeding_ps,
        "force_constant_kj_mol_rad2": config.force_constant,
        "restraint_width_deg": float(np.rad2deg(restraint_width(config.force_constant, kt))),
        "psi_windows": config.psi_windows,
        "psi_force_constant_kj_mol_rad2": config.psi_force_constant,
        "psi_restraint_width_deg": (
            float(np.rad2deg(restraint_width(config.psi_force_constant, kt))) if config.two_dimensional else None
        ),
        "psi_window_spacing_deg": config.psi_spacing_deg if config.two_dimensional else None,
        "n_total_windows": config.n_total_windows,
        "umbrella": (
            f"2-D on (phi, psi): {config.n_windows} phi x {config.psi_windows} psi windows"
            if config.two_dimensional
            else f"1-D along phi: {config.n_windows} windows, psi free"
        ),
        "repeats": config.repeats,
        "starts": starts,
        "temperature_K": config.temperature_K,
        "friction_per_ps": config.friction_per_ps,
        "timestep_fs": config.timestep_fs,
        "frame_interval_ps": config.frame_interval_ps,
        "integrator": config.integrator,
        "platform": config.platform,
        "seed": config.seed,
        "profile": {
            "bin_edges_deg": np.rad2deg(first.bin_edges).tolist(),
            "bin_centers_deg": np.rad2deg(first.bin_centers).tolist(),
            "free_energy_kT": _json_list(combined["profile"]["free_energy_kT"]),
            "free_energy_err_kT": _json_list(combined["profile"]["free_energy_err_kT"]),
            "free_energy_err_method": "standard error over repeats of -ln(P_bin / width), each repeat normalised",
            "per_repeat_free_energy_kT": [_json_list(r.profile_kT) for r in per],
            "per_repeat_mbar_err_kT": [_json_list(r.profile_err_kT) for r in per],
            "per_repeat_mbar_err_method": "block bootstrap of MBAR, relative to the repeat's minimum bin",
        },
        "flags": analysis.flags,
        "n_flags": len(analysis.flags),
        "flag_counts": kinds,
        "windows": analysis.windows,
        "wall_s": wall_s,
        "core_s": core_s,
        "n_workers": n_workers,
        "simulated_ns": simulated_ns,
        "ns_per_day_per_core": float(window_ns / window_s * 86400.0) if window_s > 0 else None,
        "versions": _versions(),
        "command": command,
        "date_finished_utc": utc_now(),
        "files": {
            "umbrella.npz": (
                "phi, psi, reduced_potential [R, K, T]; u_kln [R, K, K, T]; centers_rad; kt_kj_mol (redo the MBAR)"
                + (
                    f"; K = {config.n_windows} x {config.psi_windows} (phi, psi) windows (w = j * M + m): centers_rad, "
                    "psi_centers_rad [K] are each window's phi and psi centre, psi_force_constant_kj_mol_rad2"
                    if config.two_dimensional
                    else ""
                )
            ),
            "frames.npz": "positions [R, K, T, N, 3] float32 nm; log_weights [R, K, T] (MBAR, unbiased, per repeat)",
            "windows/": "one file per window and repeat (resumable)",
        },
    }


def simulated_ns_of(config: UmbrellaConfig) -> tuple[float, float]:
    """(window dynamics, seeding chains) simulated by a whole run, ns.

    Windows: ``windows x repeats x (ps_per_window + equilibration_ps)`` with windows =
    ``n_windows * psi_windows``; seeding: ``windows x repeats x seeding_ps`` (sequential per repeat).
    """
    windows = config.repeats * config.n_total_windows
    return (
        windows * (config.ps_per_window + config.equilibration_ps) / 1000.0,
        windows * config.seeding_ps / 1000.0,
    )


def describe_protocol(config: UmbrellaConfig) -> str:
    """One line: the windows and the simulated time of ``config``."""
    window_ns, seeding_ns = simulated_ns_of(config)
    if config.two_dimensional:
        windows = (
            f"2-D umbrella on (phi, psi): {config.n_windows} phi x {config.psi_windows} psi = {config.n_total_windows} "
            f"windows (psi restraint {config.psi_force_constant:g} kJ/mol/rad^2)"
        )
    else:
        windows = f"1-D umbrella along phi: {config.n_windows} windows (psi free)"
    return (
        f"{windows} x {config.repeats} repeats x ({config.ps_per_window:g} + {config.equilibration_ps:g} ps "
        f"equilibration) = {window_ns:.3g} ns in windows, plus {seeding_ns:.3g} ns of seeding chains"
    )


def run_umbrella(
    system,
    config: UmbrellaConfig,
    out_dir: str | os.PathLike,
    *,
    n_workers: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> UmbrellaResult:
    """Run (or resume) umbrella sampling along phi of ``system`` with ``config`` into ``out_dir``.

    Args:
        system: registry name or `MolecularSystem` (must match ``config.system``).
        config: the protocol (see :func:`make_config`).
        out_dir: output directory (created; see `boltzgen.umbrella.storage`).
        n_workers: processes at once (default: the number of cores).
        quiet: no progress bars.
        log: receives one-line messages; None: silent.
        command: the command line, recorded in run.json and summary.json.

    Raises:
        BoltzgenError: a foreign or busy ``out_dir``, other settings stored there, a molecule
            without exactly one backbone phi, a toy or periodic system.
        KeyboardInterrupt: finished windows are kept; run again to resume.
    """
    log = log or (lambda message: None)
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers!r}")
    molecular = load_molecular_system(system, config.system_options)
    if molecular.name != config.system:
        raise ValueError(f"config is for system {config.system!r}, not {molecular.name!r}")
    torsions = backbone_torsions(molecular.mdtraj_topology)
    run = UmbrellaDirectory(out_dir)
    _check_directory(run)
    run.root.mkdir(parents=True, exist_ok=True)
    kt = kt_kj_per_mol(config.temperature_K)
    with exclusive_lock(run.lock_file, what=f"umbrella output directory {run.root}"):
        _resolve(run, config)
        resuming = run.run_json.exists()
        if not resuming:
            _initialise(run, config, molecular, torsions, command)
            log(f"seed {config.seed}, platform {config.platform}")
            log(describe_protocol(config))
        system_xml = run.system_xml.read_text()
        torsion_lists = {name: [int(a) for a in atoms] for name, atoms in torsions.items()}
        workers = n_workers or available_cores()
        session = SessionRecord(run.root / "sessions.json", workers)
        config_dict = config.to_dict()

        chains = [
            ChainTask(r, config_dict, system_xml, torsion_lists, str(run.seeds_file(r)))
            for r in range(config.repeats)
            if not run.seeds_file(r).exists()
        ]
        if config.two_dimensional and "psi" not in torsions:
            raise BoltzgenError(f"--psi-windows needs a backbone psi, which {molecular.name} lacks")
        windows = [
            WindowTask(r, k, config_dict, system_xml, torsion_lists, str(run.seeds_file(r)), str(run.window_file(r, k)))
            for r in range(config.repeats)
            for k in range(config.n_total_windows)
            if not run.window_file(r, k).exists()
        ]
        total_windows = config.repeats * config.n_total_windows
        if resuming and (len(windows) < total_windows or len(chains) < config.repeats):
            log(f"resuming: {total_windows - len(windows)} of {total_windows} windows already finished")
        if not windows and not chains and run.summary_json.exists():
            return UmbrellaResult(run.root, read_json(run.summary_json), None, "already finished")
        _run_phase(
            chains, workers, total_windows, total_windows - len(chains) * config.n_total_windows,
            "umbrella: seeding", "window", quiet, session,
        )
        total_frames = total_windows * config.n_frames
        _run_phase(
            windows, workers, total_frames, total_frames - len(windows) * config.n_frames,
            "umbrella: windows", "frame", quiet, session,
        )

        log("analysing: MBAR per repeat and pooled, block-bootstrap errors (a minute or two)")
        data, positions, infos = _load_data(run, config, "psi" in torsions)
        analysis = analyse(data, config, kt)
        starts = [dict(read_seeds(run.seeds_file(r))[1]) for r in range(config.repeats)]
        for start in starts:
            start.pop("seed_phi_deg", None)
            if config.two_dimensional:
                start.pop("seed_psi_deg", None)
        metadata = read_json(run.run_json)
        time_ps = config.frame_interval_ps * np.arange(1, config.n_frames + 1)
        write_umbrella_npz(
            run.umbrella_npz,
            phi=data.phi,
            psi=data.psi,
            reduced_potential=data.reduced_potential,
            centers_rad=config.window_phi_centers_rad,
            force_constant=config.force_constant,
            kt_kj_mol=kt,
            time_ps=time_ps,
            metadata=metadata,
            **(
                {"psi_centers_rad": config.window_psi_centers_rad, "psi_force_constant": config.psi_force_constant}
                if config.two_dimensional
                else {}
            ),
        )
        log_weights = np.stack([np.stack(r.log_weights) for r in analysis.per_repeat])
        centres = (
            {"window_phi_centers_rad": config.window_phi_centers_rad, "window_psi_centers_rad": config.window_psi_centers_rad}
            if config.two_dimensional
            else {}
        )
        save_npz_atomic(run.frames_npz, positions=positions, log_weights=log_weights, phi=data.phi,
                        **({} if data.psi is None else {"psi": data.psi}), **centres)
        title = (
            f"{molecular.name}: 2-D umbrella ({config.n_windows} phi x {config.psi_windows} psi windows), MBAR"
            if config.two_dimensional
            else f"{molecular.name}: umbrella along phi, MBAR"
        )
        profile_plot(analysis, config.centers_rad, run.profile_png, title=title, psi_windows=config.psi_windows)
        summary = _summary(config, molecular, analysis, starts, infos, session, workers, kt, command)
        write_json_atomic(run.summary_json, summary)
    return UmbrellaResult(run.root, summary, analysis, "finished")


def command_line() -> str:
    """The present process's command line, shell-quoted (for the record)."""
    return " ".join(shlex.quote(arg) for arg in [Path(sys.argv[0]).name, *sys.argv[1:]])
