"""Run umbrella tasks in spawned worker processes (one single-threaded OpenMM Context each).

The same pattern as ``boltzgen.md.workers``: fresh interpreters (spawn), Ctrl-C handled by the main
process only (it sets a shared stop event; running tasks return without writing, finished ones are
already on disk), progress streamed through a queue, and a watchdog that ends a worker whose main
process died. Each worker process runs one task at a time, so OpenMM's per-process random stream
of the Reference platform is used by one Context at a time.
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
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    stop_event = context.Event()

    def drain(timeout: float) -> None:
        try:
            on_progress(progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait())
            while True:
                on_progress(progress_queue.get_nowait())
        except queue_module.Empty:
            pass

    def failed(future: Future) -> bool:
        return future.done() and not future.cancelled() and future.exception() is not None

    with ProcessPoolExecutor(
        max_workers=max(1, min(n_workers, len(tasks))),
        mp_context=context,
        initializer=_init_worker,
        initargs=(progress_queue, stop_event, os.getpid()),
    ) as executor:
        futures = [executor.submit(_run_task, task) for task in tasks]
        try:
            while not all(future.done() for future in futures):
                drain(timeout=0.2)
                if any(failed(future) for future in futures):
                    break
        finally:
            stop_event.set()
            for future in futures:
                future.cancel()
            wait(futures)
            drain(timeout=0)
    for future in futures:
        if failed(future):
            error = future.exception()
            if isinstance(error, BrokenProcessPool):
                raise RuntimeError(
                    "an umbrella worker process died (killed, out of memory, or the calling script lacks the "
                    "`if __name__ == '__main__':` guard that multiprocessing's spawn start method needs); "
                    "run the same command again to resume"
                ) from error
            raise error
    return [bool(future.result()) if not future.cancelled() else False for future in futures]
