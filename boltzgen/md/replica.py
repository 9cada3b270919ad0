"""One replica of reference MD: minimise, warm up, then Langevin dynamics saving frames in chunks.

The replica works in its own `ReplicaStore` and commits after every chunk, so it can be stopped
at any moment (``should_stop``, Ctrl-C, a killed process) and resumed from its last committed
frame. With the Reference platform a resumed replica reproduces the uninterrupted one exactly.

Each saved frame holds the positions rounded to float32 and the potential energy and forces of
exactly those float32 positions (evaluated in a second Context, which leaves the dynamics alone).

Note: OpenMM's Reference platform keeps one random-number stream per *process*, so at most one
Reference Context may integrate in a process at a time (the runner gives each replica its own
process, one after the other).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from boltzgen.errors import BoltzgenError
from boltzgen.md.config import ReplicaSeeds
from boltzgen.energy.openmm_platforms import get_platform
from boltzgen.md.platforms import platform_properties
from boltzgen.md.replica_store import ReplicaStore

#: Energy minimisation before warm-up: stop when the RMS force is below this (kJ/mol/nm).
MINIMISATION_TOLERANCE_KJ_PER_MOL_NM = 10.0
#: Warm-up is integrated in slices of this many steps, checking ``should_stop`` in between.
_WARMUP_SLICE_STEPS = 5_000


@dataclass(frozen=True)
class ReplicaTask:
    """All a worker process needs to run one replica.

    Attributes:
        index: replica number (0-based).
        work_dir: the replica's `ReplicaStore` directory.
        system_xml: the ``openmm.System`` serialised by ``openmm.XmlSerializer``.
        start_positions_nm: starting positions, ``[N, 3]`` float64 nm (minimised again here).
        temperature_K, friction_per_ps, timestep_fs: the Langevin integrator.
        steps_per_frame: integrator steps between saved frames.
        n_frames: frames to save in total.
        warmup_steps: steps between minimisation and the first frame.
        seeds: the replica's integrator and velocity seeds.
        platform: OpenMM platform name.
        frames_per_chunk: commit after at most this many frames ...
        chunk_seconds: ... or after this many seconds, whichever comes first.
        max_frames_this_session: stop (committed, resumable) after this many new frames; None: run to the end.
    """

    index: int
    work_dir: str
    system_xml: str
    start_positions_nm: np.ndarray
    temperature_K: float
    friction_per_ps: float
    timestep_fs: float
    steps_per_frame: int
    n_frames: int
    warmup_steps: int
    seeds: ReplicaSeeds
    platform: str
    frames_per_chunk: int = 100
    chunk_seconds: float = 30.0
    max_frames_this_session: int | None = None


@dataclass(frozen=True)
class ReplicaOutcome:
    """What a replica session achieved: frames committed in total and in this session."""

    index: int
    frames_done: int
    frames_this_session: int
    finished: bool


class _Simulation:
    """A dynamics Context plus an evaluation Context for the same system on one platform."""

    def __init__(self, task: ReplicaTask):
        import openmm
        from openmm import unit

        system = openmm.XmlSerializer.deserialize(task.system_xml)
        platform = get_platform(task.platform)
        properties = platform_properties(task.platform)
        self.integrator = openmm.LangevinMiddleIntegrator(
            task.temperature_K * unit.kelvin,
            task.friction_per_ps / unit.picosecond,
            task.timestep_fs * unit.femtosecond,
        )
        self.integrator.setRandomNumberSeed(task.seeds.integrator_seed)
        self.context = openmm.Context(system, self.integrator, platform, properties)
        self.evaluator = openmm.Context(system, openmm.VerletIntegrator(1.0 * unit.femtosecond), platform, properties)

    def step(self, steps: int) -> None:
        """Integrate ``steps`` steps; OpenMM's failures (e.g. NaN coordinates) become BoltzgenError."""
        try:
            self.integrator.step(steps)
        except Exception as error:  # noqa: BLE001 - OpenMM raises a bare Exception
            raise BoltzgenError(f"the dynamics failed ({error}); try a smaller time step") from None

    def prepare(self, task: ReplicaTask, should_stop: Callable[[], bool]) -> bool:
        """Minimise, draw velocities, warm up. False if stopped before the end of the warm-up."""
        import openmm
        from openmm import unit

        self.context.setPositions(np.asarray(task.start_positions_nm, dtype=np.float64))
        openmm.LocalEnergyMinimizer.minimize(self.context, MINIMISATION_TOLERANCE_KJ_PER_MOL_NM, 0)
        self.context.setVelocitiesToTemperature(task.temperature_K * unit.kelvin, task.seeds.velocity_seed)
        remaining = task.warmup_steps
        while remaining > 0:
            if should_stop():
                return False
            steps = min(remaining, _WARMUP_SLICE_STEPS)
            self.step(steps)
            remaining -= steps
        return True

    def load_checkpoint(self, checkpoint: bytes, where: str) -> None:
        try:
            self.context.loadCheckpoint(checkpoint)
        except Exception as error:  # noqa: BLE001 - OpenMM raises a bare Exception
            raise BoltzgenError(
                f"cannot resume from the checkpoint in {where} ({error}); checkpoints only load with the "
                "same OpenMM version, platform and machine type"
            ) from None

    def next_frame(self, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Integrate ``steps`` steps; return float32 positions [N, 3] nm, float32 forces [N, 3] kJ/mol/nm
        and the potential energy (kJ/mol) of exactly those float32 positions."""
        from openmm import unit

        self.step(steps)
        positions = self.context.getState(getPositions=True).getPositions(asNumpy=True)
        positions32 = np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float32)
        self.evaluator.setPositions(positions32.astype(np.float64))
        state = self.evaluator.getState(getEnergy=True, getForces=True)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not np.isfinite(energy) or not np.all(np.isfinite(positions32)):
            raise BoltzgenError("the dynamics blew up (non-finite positions or energy); try a smaller time step")
        return positions32, np.asarray(forces, dtype=np.float32), float(energy)


class _ChunkRecorder:
    """Buffers frames and commits them as chunks to the store, each with a checkpoint after it."""

    def __init__(self, store: ReplicaStore, context, progress, frames_per_chunk: int, chunk_seconds: float):
        self.store, self.context = store, context
        self.frames_per_chunk, self.chunk_seconds = frames_per_chunk, chunk_seconds
        self.committed = progress.frames_done or 0
        self.production_wall_s, self.production_steps = progress.production_wall_s, progress.production_steps
        self.buffer: list[tuple[np.ndarray, np.ndarray, float]] = []
        self.chunk_started = time.monotonic()

    @property
    def frames(self) -> int:
        """Frames produced so far, committed or buffered."""
        return self.committed + len(self.buffer)

    def add(self, frame: tuple[np.ndarray, np.ndarray, float], seconds: float, steps: int) -> None:
        """Buffer one frame (taken right now) that cost ``seconds`` and ``steps``; commit if due."""
        self.buffer.append(frame)
        self.production_wall_s += seconds
        self.production_steps += steps
        chunk_full = len(self.buffer) >= self.frames_per_chunk
        if chunk_full or time.monotonic() - self.chunk_started >= self.chunk_seconds:
            self.commit()

    def commit(self) -> None:
        """Write the buffered frames as a chunk and commit them with a checkpoint of the present state."""
        if self.buffer:
            positions, forces, energies = zip(*self.buffer)
            self.store.write_chunk(self.committed, np.stack(positions), np.stack(forces), np.asarray(energies))
            self.committed += len(self.buffer)
            self.store.commit(
                self.committed, self.context.createCheckpoint(), self.production_wall_s, self.production_steps
            )
            self.buffer.clear()
        self.chunk_started = time.monotonic()


def run_replica(
    task: ReplicaTask,
    report: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ReplicaOutcome:
    """Run (or resume) replica ``task.index`` until all frames are saved or it is asked to stop.

    Args:
        task: what to simulate and where to store it.
        report: called as ``report(replica_index, n_new_frames)`` as frames are produced (progress).
        should_stop: polled between frames; when it returns True the replica commits what it has
            and returns early (resumable).

    Returns the frames committed in total and in this session. The work area is locked while the
    replica runs: a second process on the same replica gets a BoltzgenError. If the dynamics
    fail, the frames since the last commit are dropped (the state after them is not trusted).
    """
    report = report or (lambda index, n: None)
    should_stop = should_stop or (lambda: False)
    store = ReplicaStore(task.work_dir)
    with store.lock():
        progress = store.recover()
        if progress.frames_done is not None and progress.frames_done >= task.n_frames:
            return ReplicaOutcome(task.index, progress.frames_done, 0, True)
        simulation = _Simulation(task)
        if progress.frames_done is None:
            if not simulation.prepare(task, should_stop):
                return ReplicaOutcome(task.index, 0, 0, False)
            store.commit(0, simulation.context.createCheckpoint(), 0.0, 0)
        else:
            simulation.load_checkpoint(progress.checkpoint, str(store.directory))

        recorder = _ChunkRecorder(store, simulation.context, progress, task.frames_per_chunk, task.chunk_seconds)
        start_frame = recorder.committed
        session_limit = task.n_frames if task.max_frames_this_session is None else task.max_frames_this_session
        target = min(task.n_frames, start_frame + session_limit)
        while recorder.frames < target and not should_stop():
            started = time.perf_counter()
            frame = simulation.next_frame(task.steps_per_frame)
            recorder.add(frame, time.perf_counter() - started, task.steps_per_frame)
            report(task.index, 1)
        recorder.commit()
        done = recorder.committed
        return ReplicaOutcome(task.index, done, done - start_frame, done >= task.n_frames)
