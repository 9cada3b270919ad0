"""Run reference MD: R independent replicas in parallel processes, resumable, merged at the end.

>>> from boltzgen.md import run_md, load_trajectory
>>> if __name__ == "__main__":  # needed in scripts: workers are spawned and import the script
...     result = run_md("alanine_dipeptide_implicit", "ad2_md", ns=10, n_replicas=4, seed=1)  # doctest: +SKIP
...     data = load_trajectory("ad2_md")  # doctest: +SKIP

Each replica runs in its own process (spawned, one OpenMM Context, one thread), at most
``n_workers`` at a time (default: the number of cores); the main process shows one progress bar
over the frames of all replicas. The protocol is that of BENCHMARKS.md: minimise, warm up
(default 50,000 steps), then LangevinMiddleIntegrator at 1 fs, a frame every 1 ps.

Running the same call again resumes an interrupted run from each replica's last committed chunk,
does nothing for a finished run, and raises `BoltzgenError` if the settings differ from those
stored in the directory. See `boltzgen.md.storage` for the files written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from boltzgen.errors import BoltzgenError
from boltzgen.io import exclusive_lock, read_json, write_json_atomic, write_text_atomic
from boltzgen.md.config import MDConfig, new_run_seed
from boltzgen.md.metadata import run_metadata, utc_now
from boltzgen.energy.openmm_platforms import canonical_platform_name
from boltzgen.md.platforms import AUTO, fastest_platform
from boltzgen.md.replica import ReplicaTask
from boltzgen.md.sessions import SessionRecord
from boltzgen.md.start import StartStructure, read_start_structure
from boltzgen.md.storage import RunDirectory, remove_work_areas, write_merged, write_topology_pdb
from boltzgen.md.summary import run_summary
from boltzgen.md.workers import run_replicas_in_processes
from boltzgen.progress import progress_bar
from boltzgen.units import kt_kj_per_mol

@dataclass
class MDRunResult:
    """Outcome of :func:`run_md`.

    Attributes:
        status: ``"finished"`` (this call completed the run), ``"already finished"`` (nothing to
            do), or ``"stopped"`` (``max_frames_this_session`` reached; run again to continue).
        directory: the output directory.
        frames_done: frames committed, all replicas.
        frames_total: frames of the complete run, all replicas.
        summary: contents of ``summary.json`` once finished, else None.
    """

    status: str
    directory: Path
    frames_done: int
    frames_total: int
    summary: dict[str, Any] | None = None


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _load_molecular_system(system, system_options: dict):
    """A `MolecularSystem` from a registry name or an instance; BoltzgenError for toys/periodic."""
    from boltzgen import systems

    if isinstance(system, str):
        system = systems.load(system, **system_options)
    if getattr(system, "openmm_system", None) is None:
        raise BoltzgenError(
            f"system {system.name!r} is a toy system without an OpenMM system; reference MD needs a "
            f"molecular system (e.g. alanine_dipeptide_implicit)"
        )
    if system.openmm_system.usesPeriodicBoundaryConditions():
        raise BoltzgenError(f"system {system.name!r} is periodic; boltzgen md supports non-periodic systems only")
    return system


def _check_directory_is_ours(run: RunDirectory) -> None:
    """Refuse to write into an existing directory that holds other files than an MD run's."""
    if not run.root.exists() or run.run_json.exists():
        return
    own = {run.system_xml.name, run.topology_pdb.name, run.lock_file.name}
    foreign = [p.name for p in run.root.iterdir() if p.name not in own and not p.name.startswith(".")]
    if foreign:
        raise BoltzgenError(
            f"{run.root} exists and is not a `boltzgen md` output directory (it holds {sorted(foreign)[:5]}); "
            "choose a new --out directory"
        )


def _resolve_config(run: RunDirectory, requested: dict[str, Any], system, start_positions_nm: np.ndarray) -> MDConfig:
    """The config of this run: the stored one when resuming (must match the request), else a new one.

    ``requested["seed"]`` None means "the stored seed, or a fresh random one";
    ``requested["platform"]`` ``"auto"`` means "the stored platform, or the fastest one here"
    (measured from ``start_positions_nm``, [N, 3] nm).
    """
    stored_run = read_json(run.run_json) if run.run_json.exists() else None
    stored = MDConfig.from_dict(stored_run["config"]) if stored_run else None
    values = dict(requested)
    if values["seed"] is None:
        values["seed"] = stored.seed if stored else new_run_seed()
    if values["platform"] == AUTO:
        values["platform"] = (
            stored.platform
            if stored
            else fastest_platform(system.openmm_system, start_positions_nm, system.temperature, timestep_fs=values["timestep_fs"])
        )
    config = MDConfig(**values)
    if stored is not None:
        differences = config.differences(stored)
        if config.start_sha256 != stored.start_sha256:
            stored_start = stored_run["metadata"].get("start_structure") or {}
            differences.append(f"it started from {stored_start.get('file') or 'the system positions'}")
        if differences:
            raise BoltzgenError(
                f"{run.root} holds an MD run with other settings: {'; '.join(differences)}. "
                "Use the same arguments to resume it, or a new --out directory"
            )
    return config


def _initialise_directory(run: RunDirectory, config: MDConfig, system, start: StartStructure | None) -> None:
    """Write system.xml, topology.pdb (at the starting positions) and (last, as the marker of a run) run.json."""
    import openmm

    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.system_xml, openmm.XmlSerializer.serialize(system.openmm_system))
    write_topology_pdb(run.topology_pdb, system.topology, _start_positions(system, start))
    write_json_atomic(run.run_json, {"config": config.to_dict(), "metadata": run_metadata(config, system, start)})


def _start_positions(system, start: StartStructure | None) -> np.ndarray:
    """Where the replicas start: the file's positions, or the system's own; [N, 3] float64 nm."""
    return np.asarray(system.positions if start is None else start.positions_nm, dtype=np.float64)


def _replica_tasks(
    run: RunDirectory,
    config: MDConfig,
    start_positions_nm: np.ndarray,
    replicas: list[int],
    frames_per_chunk: int,
    chunk_seconds: float,
    max_frames_this_session: int | None,
) -> list[ReplicaTask]:
    """One `ReplicaTask` per replica index in ``replicas`` (the system comes from system.xml)."""
    system_xml = run.system_xml.read_text()
    seeds = config.seeds()
    return [
        ReplicaTask(
            index=r,
            work_dir=str(run.replica_store(r).directory),
            system_xml=system_xml,
            start_positions_nm=np.asarray(start_positions_nm, dtype=np.float64),
            temperature_K=config.temperature_K,
            friction_per_ps=config.friction_per_ps,
            timestep_fs=config.timestep_fs,
            steps_per_frame=config.steps_per_frame,
            n_frames=config.n_frames,
            warmup_steps=config.warmup_steps,
            seeds=seeds[r],
            platform=config.platform,
            frames_per_chunk=frames_per_chunk,
            chunk_seconds=chunk_seconds,
            max_frames_this_session=max_frames_this_session,
        )
        for r in replicas
    ]


def _merge(run: RunDirectory, config: MDConfig, system, session: SessionRecord) -> dict[str, Any]:
    """Write trajectory.npz, metadata.json, the DCDs and (last) summary.json; remove the work areas."""
    for r in range(config.n_replicas):
        store = run.replica_store(r)
        with store.lock():
            store.recover()
    metadata = dict(read_json(run.run_json)["metadata"], date_finished_utc=utc_now())
    kt = kt_kj_per_mol(config.temperature_K)
    write_merged(run, config.n_replicas, config.n_frames, system.n_atoms, config.time_ps, kt, metadata)
    summary = run_summary(run, config, system.mdtraj_topology, *session.totals(), session.n_workers)
    write_json_atomic(run.summary_json, summary)
    remove_work_areas(run)
    return summary


def run_md(
    system,
    out_dir: str | os.PathLike,
    *,
    ns: float,
    n_replicas: int = 1,
    seed: int | None = None,
    platform: str = AUTO,
    friction_per_ps: float | None = None,
    warmup_steps: int = 50_000,
    frame_interval_ps: float = 1.0,
    timestep_fs: float = 1.0,
    n_workers: int | None = None,
    quiet: bool = False,
    system_options: dict | None = None,
    start: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    frames_per_chunk: int = 100,
    chunk_seconds: float = 30.0,
    max_frames_this_session: int | None = None,
) -> MDRunResult:
    """Run, resume, or recognise as finished, reference MD of ``system`` into ``out_dir``.

    Args:
        system: a registry name (``boltzgen.systems.available()``) or a `MolecularSystem`.
        out_dir: output directory (created; see `boltzgen.md.storage` for its files).
        ns: production time per replica, ns (a whole number of frame intervals).
        n_replicas: independent trajectories.
        seed: run seed (replica seeds derive from it); None: the stored one, or a random one.
        platform: OpenMM platform name, or ``"auto"`` for the fastest here (measured briefly).
        friction_per_ps: Langevin friction, 1/ps; None: the system's ``friction_per_ps``.
        warmup_steps: steps between minimisation and the first frame.
        frame_interval_ps: time between frames, ps.
        timestep_fs: integration step, fs.
        n_workers: processes at once (default: min(pending replicas, cores)).
        quiet: no progress bar.
        system_options: options for the system builder (when ``system`` is a name).
        start: a single-frame structure file (PDB, or any file mdtraj reads) with the system's
            atoms in the system's order; the replicas start from it (minimised, warmed up)
            instead of from the system's positions. Its name and SHA-256 go into the metadata;
            its SHA-256 is one of the run's settings (see `boltzgen.md.start`).
        log: receives one-line messages for the user (resuming, seed, platform); None: silent.
        frames_per_chunk, chunk_seconds: a replica commits after this many frames or seconds.
        max_frames_this_session: each replica stops after this many new frames (for tests and
            for splitting a long run into sessions); the run is then ``"stopped"`` and resumable.

    Raises:
        BoltzgenError: a toy or periodic system, settings differing from those stored in
            ``out_dir``, a foreign ``out_dir``, or another process writing into it.
        ValueError: an unknown system, platform, or invalid settings; an unreadable ``start``
            file or one whose atoms differ from the system's.
        FileNotFoundError: ``start`` does not exist.
        KeyboardInterrupt: after the replicas committed their frames (resumable).
    """
    log = log or (lambda message: None)
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk!r}")
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers!r}")
    system_options = dict(system_options or {})
    system = _load_molecular_system(system, system_options)
    start_structure = None if start is None else read_start_structure(start, system)
    start_positions = _start_positions(system, start_structure)
    requested = {
        "system": system.name,
        "ns": float(ns),
        "n_replicas": int(n_replicas),
        "seed": None if seed is None else int(seed),
        "platform": AUTO if str(platform).lower() == AUTO else canonical_platform_name(platform),
        "temperature_K": float(system.temperature),
        "friction_per_ps": float(system.friction_per_ps if friction_per_ps is None else friction_per_ps),
        "timestep_fs": float(timestep_fs),
        "frame_interval_ps": float(frame_interval_ps),
        "warmup_steps": int(warmup_steps),
        "system_options": system_options,
        "start_sha256": None if start_structure is None else start_structure.sha256,
    }
    MDConfig(**{**requested, "seed": requested["seed"] or 0})  # validate before touching the disk
    run = RunDirectory(out_dir)
    _check_directory_is_ours(run)
    run.root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run.lock_file, what=f"MD output directory {run.root}"):
        resuming = run.run_json.exists()
        config = _resolve_config(run, requested, system, start_positions)
        frames_total = config.n_frames * config.n_replicas
        if run.is_finished():
            remove_work_areas(run)
            return MDRunResult("already finished", run.root, frames_total, frames_total, read_json(run.summary_json))
        if not resuming:
            _initialise_directory(run, config, system, start_structure)
            start_text = f", start {start_structure.path.name}" if start_structure is not None else ""
            log(f"seed {config.seed}, platform {config.platform}{start_text}")
        frames_done = [
            run.replica_store(r).read_progress(with_checkpoint=False).frames_done or 0 for r in range(config.n_replicas)
        ]
        if resuming:
            log(f"resuming: {sum(frames_done)} of {frames_total} frames already saved")
        pending = [r for r in range(config.n_replicas) if frames_done[r] < config.n_frames]
        workers = min(len(pending), n_workers or available_cores())
        session = SessionRecord(run.sessions_json, workers)
        if pending:
            tasks = _replica_tasks(
                run, config, start_positions, pending, frames_per_chunk, chunk_seconds, max_frames_this_session
            )
            with progress_bar(
                total=frames_total, initial=sum(frames_done), desc=f"MD {config.system}", unit="frame", quiet=quiet
            ) as bar:
                try:
                    outcomes = run_replicas_in_processes(
                        tasks, workers, on_frames=bar.update, on_tick=lambda: session.save(force=False)
                    )
                finally:
                    session.save()
                for outcome in outcomes:
                    frames_done[outcome.index] = outcome.frames_done
                if not bar.disable:  # progress messages may trail the results
                    bar.update(sum(frames_done) - bar.n)
        if sum(frames_done) < frames_total:
            return MDRunResult("stopped", run.root, sum(frames_done), frames_total)
        summary = _merge(run, config, system, session)
        return MDRunResult("finished", run.root, frames_total, frames_total, summary)
