"""Run umbrella tasks in spawned worker processes (one single-threaded OpenMM Context each).

The same pattern as ``boltzgen.md.workers`` (the pool loop of both is ``boltzgen.parallel``): fresh
interpreters (spawn), Ctrl-C handled by the main process only (it sets a shared stop event; running
tasks return without writing, finished ones are already on disk), progress streamed through a
queue, and a watchdog that ends a worker whose main process died. Each worker process runs one task
at a time, so OpenMM's per-process random stream of the Reference platform is used by one Context
at a time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable

from boltzgen.parallel import run_in_spawned_processes
from boltzgen.umbrella.tasks import ChainTask, WindowTask, run_chain, run_window

_ORPHAN_POLL_S = 0.5
_WORKER_STATE: dict[str, Any] = {}


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_ORPHAN_POLL_S)
    os._exit(0)  # nothing to commit: a window is written only when complete


def _init_worker(progress_queue, stop_event, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_STATE.update(queue=progress_queue, stop=stop_event, parent_pid=parent_pid)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _run_task(task: ChainTask | WindowTask) -> bool:
    state = _WORKER_STATE

    def should_stop() -> bool:
        return state["stop"].is_set() or os.getppid() != state["parent_pid"]

    def report(units: int) -> None:
        state["queue"].put(units)

    function = run_chain if isinstance(task, ChainTask) else run_window
    return function(task, report, should_stop)


def run_in_processes(tasks: list, n_workers: int, on_progress: Callable[[int], None]) -> list[bool]:
    """Run ``tasks`` (`ChainTask` / `WindowTask`) in ``n_workers`` spawned processes.

    Returns, per task, whether it completed. On KeyboardInterrupt or a failing task the running
    tasks are stopped, tasks not started are cancelled, and the interrupt or the exception is raised.
    """
    if not tasks:
        return []
    futures = run_in_spawned_processes(
        tasks, _run_task, _init_worker, max(1, min(n_workers, len(tasks))), on_progress, what="umbrella"
    )
    return [bool(future.result()) if not future.cancelled() else False for future in futures]
