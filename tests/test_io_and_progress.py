"""`boltzgen.io` (atomic writes, streamed npz, lock) and `boltzgen.progress` (quiet bars)."""

from __future__ import annotations

import io
import multiprocessing
import os

import numpy as np
import pytest

from boltzgen.errors import BoltzgenError
from boltzgen.io import (
    atomic_path,
    exclusive_lock,
    read_json,
    save_npz_atomic,
    write_json_atomic,
    write_npz_streamed,
    write_text_atomic,
)
from boltzgen.progress import progress_bar, progress_enabled


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"ess": np.float32(0.5), "counts": np.arange(3)})
    assert read_json(target) == {"ess": 0.5, "counts": [0, 1, 2]}
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"ess": 0.5, "counts": [0, 1, 2]}
    assert os.listdir(tmp_path) == ["summary.json"], "no temporary file may be left behind"
    write_text_atomic(target, "{}")
    assert read_json(target) == {}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "permissions as for an ordinary new file"


def test_read_json_names_a_broken_file(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        read_json(tmp_path / "broken.json")


def test_streamed_npz_equals_np_savez(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    b = rng.normal(size=(2, 5))
    pieces_a = [a[0, :2], a[0, 2:], a[1]]  # slabs of unequal length
    write_npz_streamed(
        tmp_path / "streamed.npz",
        {"a": (a.shape, np.float32, pieces_a), "b": (b.shape, np.float64, [b[0], b[1]]), "s": ((), "<U5", [np.array("hello")])},
    )
    save_npz_atomic(tmp_path / "plain.npz", a=a, b=b)
    with np.load(tmp_path / "streamed.npz") as streamed, np.load(tmp_path / "plain.npz") as plain:
        np.testing.assert_array_equal(streamed["a"], plain["a"])
        np.testing.assert_array_equal(streamed["b"], plain["b"])
        assert streamed["a"].dtype == np.float32 and str(streamed["s"]) == "hello"
    with pytest.raises(ValueError, match="needs 120"):
        write_npz_streamed(tmp_path / "short.npz", {"a": (a.shape, np.float32, pieces_a[:2])})
    assert not (tmp_path / "short.npz").exists()


def _try_lock(path, result):
    try:
        with exclusive_lock(path, what="the thing"):
            result.put("locked")
    except BoltzgenError as error:
        result.put(str(error))


def test_exclusive_lock_refuses_a_second_process(tmp_path):
    lock = tmp_path / ".lock"
    context = multiprocessing.get_context("spawn")
    result = context.Queue()
    with exclusive_lock(lock):
        process = context.Process(target=_try_lock, args=(lock, result))
        process.start()
        process.join()
        assert "the thing is in use by another process" in result.get(timeout=10)
    process = context.Process(target=_try_lock, args=(lock, result))
    process.start()
    process.join()
    assert result.get(timeout=10) == "locked"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_quiet():
    pipe, terminal = io.StringIO(), _FakeTerminal()
    assert not progress_enabled(stream=pipe)
    assert progress_enabled(stream=terminal)
    assert not progress_enabled(quiet=True, stream=terminal)
    with progress_bar(total=3, desc="MD", unit="frame", stream=pipe) as bar:
        bar.update(3)
    assert pipe.getvalue() == ""
    with progress_bar(total=3, desc="MD", unit="frame", stream=terminal, mininterval=0) as bar:
        bar.update(3)
    assert "MD" in terminal.getvalue() and "3/3" in terminal.getvalue()
    quiet = _FakeTerminal()
    with progress_bar(total=3, stream=quiet, quiet=True) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
