"""Wall-time bookkeeping of an MD run over its sessions (a run may be interrupted and resumed).

``DIR/sessions.json`` lists one entry per session: ``started_utc``, ``wall_s`` and ``n_workers``
(processes, one core each). The running session rewrites its entry atomically every few seconds,
so even a killed session leaves its wall time (up to that interval) behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from boltzgen.io import read_json, write_json_atomic
from boltzgen.md.metadata import utc_now

#: Seconds between rewrites of the running session's entry.
SAVE_INTERVAL_S = 10.0


class SessionRecord:
    """This session's entry in ``sessions.json``, after those of earlier sessions."""

    def __init__(self, path: str | Path, n_workers: int):
        self.path = Path(path)
        self.previous = read_json(self.path) if self.path.exists() else []
        self.entry = {"started_utc": utc_now(), "wall_s": 0.0, "n_workers": max(int(n_workers), 1)}
        self._start = time.monotonic()
        self._last_saved: float | None = None

    @property
    def n_workers(self) -> int:
        return int(self.entry["n_workers"])

    def save(self, force: bool = True) -> None:
        """Record the wall time so far (unless ``force`` is False and it was saved recently)."""
        now = time.monotonic()
        if force or self._last_saved is None or now - self._last_saved >= SAVE_INTERVAL_S:
            self.entry["wall_s"] = now - self._start
            write_json_atomic(self.path, self.previous + [self.entry])
            self._last_saved = now

    def totals(self) -> tuple[float, float]:
        """``(wall_s, core_s)`` of all sessions, this one up to now: seconds, and seconds x workers."""
        self.save()
        sessions = self.previous + [self.entry]
        return sum(s["wall_s"] for s in sessions), sum(s["wall_s"] * s["n_workers"] for s in sessions)
