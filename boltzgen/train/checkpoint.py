"""Training checkpoints: written atomically, carrying the configuration and the package version."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

import boltzgen
from boltzgen.errors import BoltzgenError
from boltzgen.io import write_bytes_atomic

CHECKPOINT_FORMAT = "boltzgen-checkpoint-1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, state dicts, plain config) to ``path`` atomically.

    The file also records ``format`` and ``boltzgen_version``; :func:`load_checkpoint` checks them.
    """
    payload = {"format": CHECKPOINT_FORMAT, "boltzgen_version": boltzgen.__version__, **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises `BoltzgenError` with the path when the file is missing, truncated, corrupt or not a
    boltzgen checkpoint (instead of an unpickling traceback).
    """
    path = Path(path)
    if not path.is_file():
        raise BoltzgenError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise BoltzgenError(f"{path} is not a readable boltzgen checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BoltzgenError(f"{path} is not a boltzgen checkpoint (missing format tag {CHECKPOINT_FORMAT!r})")
    return payload
