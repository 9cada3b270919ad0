"""A worker process that evaluates configurations on its own OpenMM Context, and the parent's handle to it.

The worker is a plain ``python -c`` subprocess (not `multiprocessing`): it needs no ``__main__``
guard in the user's script, can be started from daemonic processes (DataLoader workers), and never
imports torch (about a second and a few hundred MB per worker). It talks to the parent over its
stdin/stdout pipes in a small binary protocol and exits on a shutdown message or when its stdin
closes, so it cannot outlive the parent. Anything the worker or OpenMM prints goes to stderr.

Protocol (little-endian int64 headers, float64 payloads):
  parent -> worker, once:  length, JSON {"system_xml", "platform", "properties"}
  worker -> parent, once:  length, JSON {"ok": true} or {"ok": false, "error": message}
  parent -> worker:        (n_rows, want_forces), positions [n_rows, N, 3] nm; n_rows < 0 stops it
  worker -> parent:        (n_rows, n_failed), energies [n_rows] kJ/mol, forces [n_rows, N, 3] kJ/mol/nm
                           (forces only when asked for)
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from typing import BinaryIO

import numpy as np

_HEADER = struct.Struct("<qq")
_LENGTH = struct.Struct("<q")
_SHUTDOWN = _HEADER.pack(-1, 0)


class WorkerCrashed(RuntimeError):
    """The worker process died or its pipes broke in the middle of a request."""


def _read_exact(stream: BinaryIO, buffer: memoryview) -> None:
    """Fill ``buffer`` from ``stream``; EOFError if the stream ends first."""
    filled = 0
    while filled < len(buffer):
        n = stream.readinto(buffer[filled:])
        if not n:
            raise EOFError("pipe closed")
        filled += n


def _write_all(stream: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = stream.write(view)
        view = view[n:]


def _read_message(stream: BinaryIO) -> bytes:
    length = bytearray(_LENGTH.size)
    _read_exact(stream, memoryview(length))
    payload = bytearray(_LENGTH.unpack(length)[0])
    _read_exact(stream, memoryview(payload))
    return bytes(payload)


def _write_message(stream: BinaryIO, payload: bytes) -> None:
    _write_all(stream, _LENGTH.pack(len(payload)) + payload)


def _as_bytes(array: np.ndarray) -> memoryview:
    """A byte view of a C-contiguous array, for reading into or writing from without copies."""
    return memoryview(array).cast("B")


def serve() -> None:
    """The worker's main loop (runs in the child process)."""
    import openmm

    from boltzgen.energy.openmm_context import ContextEvaluator

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints (Python or C++) must not corrupt the protocol
    try:
        init = json.loads(_read_message(requests))
    except EOFError:
        return
    try:
        system = openmm.XmlSerializer.deserialize(init["system_xml"])
        evaluator = ContextEvaluator(system, init["platform"], init["properties"])
    except Exception as error:  # reported to the parent, which raises it
        _write_message(replies, json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}).encode())
        return
    _write_message(replies, json.dumps({"ok": True}).encode())
    header = bytearray(_HEADER.size)
    while True:
        try:
            _read_exact(requests, memoryview(header))
        except EOFError:
            return
        n_rows, want_forces = _HEADER.unpack(header)
        if n_rows < 0:
            return
        positions = np.empty((n_rows, evaluator.n_particles, 3))
        try:
            _read_exact(requests, _as_bytes(positions))
        except EOFError:
            return
        energies = np.empty(n_rows)
        forces = np.empty_like(positions) if want_forces else None
        n_failed = evaluator.evaluate_into(positions, energies, forces)
        try:
            _write_all(replies, _HEADER.pack(n_rows, n_failed))
            _write_all(replies, _as_bytes(energies))
            if forces is not None:
                _write_all(replies, _as_bytes(forces))
        except BrokenPipeError:
            return


# Imports boltzgen.energy.openmm_worker without running the package __init__ files (boltzgen.energy
# imports torch); the worker needs numpy and OpenMM only.
_BOOTSTRAP = """
import sys, types
sys.path[:] = {sys_path!r}
for name, path in {packages!r}:
    package = types.ModuleType(name)
    package.__path__ = path
    sys.modules[name] = package
from boltzgen.energy.openmm_worker import serve
serve()
"""


def _bootstrap_code() -> str:
    packages = [(name, list(sys.modules[name].__path__)) for name in ("boltzgen", "boltzgen.energy")]
    return _BOOTSTRAP.format(sys_path=list(sys.path), packages=packages)


class WorkerProcess:
    """Handle to one worker process: start it, send it a chunk, collect the result, stop it.

    Use :meth:`start` then :meth:`wait_ready` (split so that several workers boot in parallel).
    Requests are pipelined: :meth:`submit` returns at once, :meth:`collect_into` blocks for the result.
    Broken pipes and early exits raise `WorkerCrashed`.
    """

    def __init__(self, system_xml: str, platform_name: str, properties: dict[str, str], n_particles: int):
        self.n_particles = n_particles
        self._init = json.dumps({"system_xml": system_xml, "platform": platform_name, "properties": properties})
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch the process and send it the system; does not wait for it to be ready."""
        self._process = subprocess.Popen(
            [sys.executable, "-c", _bootstrap_code()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
        )
        try:
            _write_message(self._process.stdin, self._init.encode())
        except OSError as error:
            raise WorkerCrashed(self._describe_exit(f"could not send the system ({error})")) from None

    def wait_ready(self) -> None:
        """Block until the worker has built its Context; RuntimeError with its message if it could not."""
        try:
            reply = json.loads(_read_message(self._process.stdout))
        except (EOFError, OSError):
            raise WorkerCrashed(self._describe_exit("exited during start-up")) from None
        if not reply.get("ok"):
            self.close()
            raise RuntimeError(f"OpenMM worker process could not create its Context: {reply.get('error')}")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def submit(self, positions: np.ndarray, want_forces: bool) -> None:
        """Send positions ``[b, N, 3]`` (nm, float64, C-contiguous) to evaluate."""
        try:
            _write_all(self._process.stdin, _HEADER.pack(len(positions), int(want_forces)))
            _write_all(self._process.stdin, _as_bytes(positions))
        except OSError as error:
            raise WorkerCrashed(self._describe_exit(f"broken pipe ({error})")) from None

    def collect_into(self, energies: np.ndarray, forces: np.ndarray | None) -> int:
        """Receive the result of the last :meth:`submit` into ``energies`` [b] and ``forces`` [b, N, 3]
        (C-contiguous float64, kJ/mol and kJ/mol/nm); return the number of failed rows."""
        try:
            header = bytearray(_HEADER.size)
            _read_exact(self._process.stdout, memoryview(header))
            n_rows, n_failed = _HEADER.unpack(header)
            if n_rows != len(energies):
                raise WorkerCrashed(f"OpenMM worker process replied with {n_rows} rows, expected {len(energies)}")
            _read_exact(self._process.stdout, _as_bytes(energies))
            if forces is not None:
                _read_exact(self._process.stdout, _as_bytes(forces))
        except (EOFError, OSError):
            raise WorkerCrashed(self._describe_exit("exited during a request")) from None
        return n_failed

    def close(self, timeout_s: float = 2.0) -> None:
        """Ask the worker to stop, and kill it if it does not within ``timeout_s``."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.write(_SHUTDOWN)
        except (OSError, ValueError):
            pass
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop the worker at once (its protocol state is unknown, e.g. after an interrupt)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.close()

    def _describe_exit(self, what: str) -> str:
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        return f"OpenMM worker process {self.pid} {what}" + ("" if code is None else f" (exit code {code})")
