"""Run replicas in parallel worker processes and stream their progress to the main process.

Workers are *spawned* (fresh interpreters: no inherited OpenMM or torch threads), at most
``n_workers`` at a time, one replica (one single-threaded OpenMM Context) each. Ctrl-C is handled
by the main process only: it sets a shared stop event, and every running replica commits the
frames it has and returns. A worker whose main process died (killed) commits and ends too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from boltzgen.md.replica import ReplicaOutcome, ReplicaTask, run_replica
from boltzgen.parallel import run_in_spawned_processes

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

    def on_message(message: tuple[int, int]) -> None:
        _, n = message
        on_frames(n)

    futures = run_in_spawned_processes(
        tasks, _run_replica_in_worker, _init_worker, n_workers, on_message, what="MD", on_tick=on_tick
    )
    return [future.result() for future in futures]
