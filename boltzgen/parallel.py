"""Run tasks in spawned worker processes, with progress messages and a cooperative stop.

Shared by ``boltzgen.md.workers`` and ``boltzgen.umbrella.workers``. Workers are *spawned* (fresh
interpreters), so ``initializer`` and ``function`` must be importable module-level functions. The
initializer of every worker receives ``(progress_queue, stop_event, parent_pid)``: tasks put their
progress messages on the queue and return early once the stop event is set (or the main process
with ``parent_pid`` has died); what a task does with them is up to the caller's worker module.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable


def _failed(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is not None


def run_in_spawned_processes(
    tasks: list,
    function: Callable[[Any], Any],
    initializer: Callable[..., None],
    max_workers: int,
    on_message: Callable[[Any], None],
    what: str,
    on_tick: Callable[[], None] = lambda: None,
) -> list[Future]:
    """Run ``function(task)`` for every task in at most ``max_workers`` spawned processes.

    Args:
        tasks: the tasks, submitted all at once (in this order).
        function: module-level function run in a worker on one task.
        initializer: module-level function run once in every worker with
            ``(progress_queue, stop_event, parent_pid)``.
        max_workers: processes at once.
        on_message: called in the main process with every message a worker put on the queue.
        what: names the workers in the error raised when one died (``"an {what} worker process died"``).
        on_tick: called about every 0.2 s in the main process.

    Returns:
        The futures, in task order, once all are done and none failed.

    On KeyboardInterrupt or a failing task the stop event is set, tasks not started are cancelled,
    the running ones are waited for, and the interrupt or the (first, in task order) task's exception
    is raised; a dead worker process (``BrokenProcessPool``) becomes a RuntimeError.
    """
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    stop_event = context.Event()

    def drain(timeout: float) -> None:
        try:
            on_message(progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait())
            while True:
                on_message(progress_queue.get_nowait())
        except queue_module.Empty:
            pass

    with ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=context,
        initializer=initializer,
        initargs=(progress_queue, stop_event, os.getpid()),
    ) as executor:
        futures = [executor.submit(function, task) for task in tasks]
        try:
            while not all(future.done() for future in futures):
                drain(timeout=0.2)
                on_tick()
                if any(_failed(future) for future in futures):
                    break
        finally:
            # A no-op when all are done; otherwise running tasks stop and return.
            stop_event.set()
            for future in futures:
                future.cancel()
            wait(futures)
            drain(timeout=0)
    for future in futures:
        if _failed(future):
            error = future.exception()
            if isinstance(error, BrokenProcessPool):
                raise RuntimeError(
                    f"an {what} worker process died (killed, out of memory, or the calling script lacks the "
                    "`if __name__ == '__main__':` guard that multiprocessing's spawn start method needs); "
                    "run the same command again to resume"
                ) from error
            raise error
    return futures
