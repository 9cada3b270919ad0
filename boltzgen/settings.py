"""Settings dataclasses stored as JSON (``run.json``): reading them back, and listing what differs.

Shared by `boltzgen.md.config.MDConfig` and `boltzgen.umbrella.config.UmbrellaConfig`.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from boltzgen.errors import BoltzgenError

T = TypeVar("T")


def settings_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)`` for the dataclass ``cls``; a `BoltzgenError` naming ``what`` on unknown keys."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BoltzgenError(f"unknown {what} settings {unknown} (written by a newer boltzgen?)")
    return cls(**data)


def setting_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """``name=theirs (requested mine)`` for every setting of ``mine`` whose value differs in ``theirs``."""
    return [f"{name}={theirs[name]!r} (requested {mine[name]!r})" for name in mine if mine[name] != theirs[name]]
