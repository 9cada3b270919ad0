"""A pool of OpenMM Contexts that evaluates a batch of configurations in chunks, serially or in parallel.

Modes (chosen per call):
  ``"serial"``     one Context in the calling thread;
  ``"threads"``    one Context per thread; OpenMM releases the GIL while it computes (measured:
                   a Python thread keeps running during ``Context.getState``), so threads overlap;
  ``"processes"``  the calling thread evaluates the first chunk on its own Context while
                   ``n_workers - 1`` worker processes (`boltzgen.energy.openmm_worker`) evaluate the rest.

Contexts, threads and processes are created on first use and reused. A pool used in a process
forked from the one that created it (e.g. a DataLoader worker) starts over with its own Contexts and
workers: inherited OpenMM threads and pipes do not work across ``fork``. Torch-free.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import openmm

from boltzgen.energy.openmm_context import ContextEvaluator
from boltzgen.energy.openmm_worker import WorkerCrashed, WorkerProcess

PARALLEL_MODES = ("serial", "threads", "processes")

# Resources inherited through fork from a parent process. Their destructors would join OpenMM
# threads or stop worker processes that belong to the parent, so they are kept alive, unused.
_INHERITED_FROM_PARENT: list[object] = []


class _Resources:
    """What a pool owns, kept apart from the pool so that a finalizer can release it."""

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.evaluators: list[ContextEvaluator] = []
        self.workers: list[WorkerProcess] = []
        self.executor: ThreadPoolExecutor | None = None

    def release(self) -> None:
        if os.getpid() != self.owner_pid:
            return  # inherited through fork: the parent owns these
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.close()
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.evaluators = []


def chunk_bounds(n_rows: int, n_chunks: int) -> list[tuple[int, int]]:
    """``n_chunks`` contiguous, nearly equal ``(start, stop)`` ranges covering ``range(n_rows)``."""
    edges = np.linspace(0, n_rows, n_chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class ContextPool:
    """Up to ``n_workers`` OpenMM Contexts of one system on one platform.

    Args:
        system_xml: the OpenMM System, serialized by ``openmm.XmlSerializer``.
        platform_name: an OpenMM platform name, e.g. ``"Reference"``.
        properties: platform properties for every Context (e.g. ``{"Threads": "1"}``).
        n_workers: the most Contexts that evaluate at the same time.
    """

    def __init__(self, system_xml: str, platform_name: str, properties: dict[str, str], n_workers: int):
        if int(n_workers) < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        self.system_xml = system_xml
        self._system = openmm.XmlSerializer.deserialize(system_xml)
        self.platform_name = platform_name
        self.properties = dict(properties)
        self.n_workers = int(n_workers)
        self.n_particles: int = self._system.getNumParticles()
        #: Worker processes that died and were replaced.
        self.n_worker_crashes = 0
        #: Running estimate of the wall time (s) of one evaluation on one Context; None before the first.
        self.seconds_per_row: float | None = None
        self._start_over()

    def _start_over(self) -> None:
        self._resources = _Resources()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._resources.release)

    def _ensure_own_process(self) -> None:
        if self._resources.owner_pid != os.getpid():
            self._finalizer.detach()
            _INHERITED_FROM_PARENT.append(self._resources)
            self._start_over()

    def close(self) -> None:
        """Release all Contexts, threads and worker processes (they are re-created on next use)."""
        self._ensure_own_process()
        with self._lock:
            self._resources.release()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running worker processes (empty unless ``"processes"`` was used)."""
        return [worker.pid for worker in self._resources.workers if worker.pid is not None]

    def evaluate(self, positions: np.ndarray, want_forces: bool, mode: str) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Evaluate a batch.

        Args:
            positions: ``[B, N, 3]`` float64, nm.
            want_forces: also compute forces.
            mode: one of :data:`PARALLEL_MODES`.

        Returns:
            energies ``[B]`` (kJ/mol, ``+inf`` for failed rows), forces ``[B, N, 3]`` (kJ/mol/nm, 0 for
            failed rows) or ``None``, and the number of failed rows.
        """
        if mode not in PARALLEL_MODES:
            raise ValueError(f"parallel mode must be one of {PARALLEL_MODES}, got {mode!r}")
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        n_rows = len(positions)
        energies = np.empty(n_rows)
        forces = np.empty_like(positions) if want_forces else None
        self._ensure_own_process()
        with self._lock:
            n_chunks = min(self.n_workers, n_rows)
            if mode == "serial" or n_chunks <= 1:
                n_failed = self._evaluate_here(positions, energies, forces)
            elif mode == "threads":
                n_failed = self._evaluate_in_threads(positions, energies, forces, chunk_bounds(n_rows, n_chunks))
            else:
                n_failed = self._evaluate_in_processes(positions, energies, forces, chunk_bounds(n_rows, n_chunks))
        return energies, forces, n_failed

    def _evaluate_here(self, positions, energies, forces) -> int:
        """Evaluate on the calling thread's Context, and update :attr:`seconds_per_row` from its timing."""
        started = time.perf_counter()
        n_failed = self._evaluator(0).evaluate_into(positions, energies, forces)
        n_evaluated = len(positions) - n_failed
        if n_evaluated > 0:
            seconds = (time.perf_counter() - started) / n_evaluated
            previous = self.seconds_per_row
            self.seconds_per_row = seconds if previous is None else 0.7 * previous + 0.3 * seconds
        return n_failed

    def _evaluator(self, index: int) -> ContextEvaluator:
        evaluators = self._resources.evaluators
        while len(evaluators) <= index:
            evaluators.append(ContextEvaluator(self._system, self.platform_name, self.properties))
        return evaluators[index]

    def _evaluate_in_threads(self, positions, energies, forces, bounds) -> int:
        resources = self._resources
        if resources.executor is None:
            resources.executor = ThreadPoolExecutor(self.n_workers - 1, thread_name_prefix="boltzgen-openmm")

        def run(index: int) -> int:
            start, stop = bounds[index]
            chunk_forces = None if forces is None else forces[start:stop]
            if index == 0:
                return self._evaluate_here(positions[start:stop], energies[start:stop], chunk_forces)
            return self._evaluator(index).evaluate_into(positions[start:stop], energies[start:stop], chunk_forces)

        for index in range(len(bounds)):
            self._evaluator(index)  # create Contexts here, not concurrently in the threads
        futures = [resources.executor.submit(run, index) for index in range(1, len(bounds))]
        try:
            n_failed = run(0)
        finally:
            wait(futures)  # never leave a Context in use when returning or raising
        return n_failed + sum(future.result() for future in futures)

    def _workers(self, count: int) -> list[WorkerProcess]:
        workers = self._resources.workers
        new = [
            WorkerProcess(self.system_xml, self.platform_name, self.properties, self.n_particles)
            for _ in range(count - len(workers))
        ]
        for worker in new:  # boot in parallel, then wait
            worker.start()
        try:
            for worker in new:
                worker.wait_ready()
        except BaseException:
            for worker in new:
                worker.kill()
            raise
        workers.extend(new)
        return workers[:count]

    def _evaluate_in_processes(self, positions, energies, forces, bounds) -> int:
        def outputs(start: int, stop: int):
            return energies[start:stop], None if forces is None else forces[start:stop]

        workers = self._workers(len(bounds) - 1)
        in_flight: list[tuple[WorkerProcess, int, int]] = []
        crashed: list[tuple[int, int]] = []
        try:
            for worker, (start, stop) in zip(workers, bounds[1:]):
                try:
                    worker.submit(positions[start:stop], forces is not None)
                    in_flight.append((worker, start, stop))
                except WorkerCrashed as crash:
                    self._replace(worker, crash)
                    crashed.append((start, stop))
            start, stop = bounds[0]
            n_failed = self._evaluate_here(positions[start:stop], *outputs(start, stop))
            while in_flight:
                worker, start, stop = in_flight[0]
                try:
                    n_failed += worker.collect_into(*outputs(start, stop))
                except WorkerCrashed as crash:
                    self._replace(worker, crash)
                    crashed.append((start, stop))
                in_flight.pop(0)
            for start, stop in crashed:
                n_failed += self._retry_on_live_worker(positions[start:stop], *outputs(start, stop))
        except BaseException:
            for worker, _, _ in in_flight:  # their protocol state is unknown (e.g. after Ctrl-C)
                self._discard(worker)
            raise
        return n_failed

    def _retry_on_live_worker(self, positions, energies, forces) -> int:
        """Evaluate a chunk whose worker crashed on a live worker; if that crashes too, fail its rows."""
        worker = self._workers(1)[0]
        try:
            worker.submit(positions, forces is not None)
            return worker.collect_into(energies, forces)
        except WorkerCrashed as crash:
            self._replace(worker, crash)
        except BaseException:
            self._discard(worker)
            raise
        energies.fill(np.inf)
        if forces is not None:
            forces.fill(0.0)
        return len(energies)

    def _replace(self, worker: WorkerProcess, crash: WorkerCrashed) -> None:
        """Forget a crashed worker (a new one starts on demand) and say so."""
        self.n_worker_crashes += 1
        warnings.warn(f"{crash}; starting a new one", RuntimeWarning, stacklevel=5)
        self._discard(worker)

    def _discard(self, worker: WorkerProcess) -> None:
        worker.kill()
        if worker in self._resources.workers:
            self._resources.workers.remove(worker)
