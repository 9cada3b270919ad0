"""Run replicas in parallel worker processes and stream their progress to the main process.

Workers are *spawned* (fresh interpreters: no inherited OpenMM or torch threads), at most
``n_workers`` at a time, one replica (one single-threaded OpenMM Context) each. Ctrl-C is handled
by the main process only: it sets a shared stop event, and every running replica commits the
frames it has and returns. A worker whose main process died (killed) commits and ends too.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from boltzgen.md.replica import ReplicaOutcome, ReplicaTask, run_replica

#: Workers check every this many seconds whether the main process is still alive ...
_ORPHAN_POLL_S = 0.5
#: ... and, once it died, end after this grace period (time for a running replica to commit).
_ORPHAN_GRACE_S = 3.0

_WORKER_STATE: dict[str, Any] = {}


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: end this worker a little while after the main process died.

    A running replica notices the death itself at its next frame and commits first (see
    ``should_stop``); idle workers would otherwise wait for work forever.
    """
    while os.getppid() == parent_pid:
        time.sleep(_ORPHAN_POLL_S)
    time.sleep(_ORPHAN_GRACE_S)
    os._exit(0)


def _init_worker(progress_queue, stop_event, parent_pid: int) -> None:
    """Set up a worker: ignore Ctrl-C (the main process turns it into ``stop_event``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_STATE.update(queue=progress_queue, stop=stop_event, parent_pid=parent_pid)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _run_replica_in_worker(task: ReplicaTask) -> ReplicaOutcome:
    """Run one replica; stop when asked or when the main process has died."""
    state = _WORKER_STATE

    def orphaned() -> bool:
        return os.getppid() != state["parent_pid"]

    def should_stop() -> bool:
        return state["stop"].is_set() or orphaned()

    def report(index: int, n_frames: int) -> None:
        state["queue"].put((index, n_frames))

    outcome = run_replica(task, report=report, should_stop=should_stop)
    if orphaned():
        os._exit(0)  # nobody will collect the result or send more work
    return outcome


def _failed(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is not None


def run_replicas_in_processes(
    tasks: list[ReplicaTask],
    n_workers: int,
    on_frames: Callable[[int], None],
    on_tick: Callable[[], None] = lambda: None,
) -> list[ReplicaOutcome]:
    """Run ``tasks`` in ``n_workers`` spawned processes; return their outcomes in task order.

    Args:
        tasks: one per replica to run or resume.
        n_workers: processes at once.
        on_frames: called in the main process with the number of new frames (progress bar).
        on_tick: called about every 0.2 s in the main process (bookkeeping).

    On KeyboardInterrupt or a failing replica, the running replicas commit and return, replicas
    not started yet are not started, and the interrupt or the replica's exception is raised.
    """
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    stop_event = context.Event()

    def drain(timeout: float) -> None:
        try:
            _, n = progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait()
            on_frames(n)
            while True:
                _, n = progress_queue.get_nowait()
                on_frames(n)
        except queue_module.Empty:
            pass

    with ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(progress_queue, stop_event, os.getpid()),
    ) as executor:
        futures = [executor.submit(_run_replica_in_worker, task) for task in tasks]
        try:
            while not all(future.done() for future in futures):
                drain(timeout=0.2)
                on_tick()
                if any(_failed(future) for future in futures):
                    break
        finally:
            # A no-op when all are done; otherwise running replicas commit and return.
            stop_event.set()
            for future in futures:
                future.cancel()
            wait(futures)
            drain(timeout=0)
    for future in futures:
        if _failed(future):
            if isinstance(future.exception(), BrokenProcessPool):
                raise RuntimeError(
                    "an MD worker process died (killed, out of memory, or the calling script lacks the "
                    "`if __name__ == '__main__':` guard that multiprocessing's spawn start method needs); "
                    "run the same command again to resume"
                ) from future.exception()
            raise future.exception()
    return [future.result() for future in futures]
