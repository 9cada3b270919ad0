"""Crash-safe files: atomic writes, JSON and ``.npz`` helpers, and an exclusive lock file.

Every file boltzgen writes for later reading (checkpoints, trajectories, ``summary.json``) goes
through :func:`atomic_path`: the data is written to a temporary file in the same directory,
flushed and fsynced, then moved over the target with ``os.replace``. A reader therefore sees
either the complete old file or the complete new one, never a truncated file, even if the
process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of new files (``mkstemp`` would create them 0600): rw for whom the umask allows.
_NEW_FILE_MODE = 0o666 & ~_current_umask()


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, fsync it and move it onto ``path``.

    The temporary name keeps the suffix of ``path`` (some writers, e.g. DCD, look at it). If the
    block raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def to_json_compatible(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths inside ``value`` to plain JSON types."""
    if isinstance(value, Mapping):
        return {str(key): to_json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_compatible(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (numpy values are converted)."""
    text = json.dumps(to_json_compatible(data), indent=2, sort_keys=False, allow_nan=True)
    write_text_atomic(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a broken file raises ValueError naming the path."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def write_npz_streamed(
    path: str | os.PathLike,
    entries: Mapping[str, tuple[tuple[int, ...], np.dtype | str, Iterable[np.ndarray]]],
) -> None:
    """Write a ``.npz`` whose arrays arrive in pieces, without holding any array in memory.

    Args:
        path: the target file, written atomically.
        entries: ``name -> (shape, dtype, pieces)``. ``pieces`` is iterated once; the pieces are
            C-order slabs along the first axes whose concatenated elements fill ``shape`` exactly
            (e.g. the frames of replica 0, then of replica 1, ...). Each is cast to ``dtype``.

    The result is an ordinary ``.npz`` (one ``name.npy`` member per entry) that ``np.load`` reads.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (shape, dtype, pieces) in entries.items():
                dtype = np.dtype(dtype)
                shape = tuple(int(n) for n in shape)
                expected = int(np.prod(shape, dtype=np.int64))
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                written = 0
                with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    for piece in pieces:
                        piece = np.ascontiguousarray(piece, dtype=dtype)
                        written += piece.size
                        if written > expected:
                            raise ValueError(f"{name}: pieces hold more than the {shape} elements announced")
                        member.write(piece.tobytes())
                if written != expected:
                    raise ValueError(f"{name}: pieces hold {written} elements, shape {shape} needs {expected}")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, timeout_s: float = 0.0, what: str = "this file") -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``path`` for the duration of the block.

    The lock is released when the block ends or when the process dies (even by SIGKILL). If
    another process holds it for longer than ``timeout_s`` seconds, raises
    ``boltzgen.errors.BoltzgenError`` naming ``what`` is busy.
    """
    from boltzgen.errors import BoltzgenError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise BoltzgenError(f"{what} is in use by another process (lock file {path})") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
