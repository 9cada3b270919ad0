"""Device selection: CUDA when available, overridable by name."""

from __future__ import annotations

import torch


def select_device(name: str | None = None) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1", ...) or, when None/"auto", CUDA if available else CPU.

    Raises ValueError for an unknown name or a CUDA device that is not available.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device
