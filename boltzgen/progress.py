"""Progress bars for long work (training, sampling, MD): tqdm on stderr, silent when not wanted.

A bar is shown only when stderr is an interactive terminal and ``quiet`` is false, so logs, CI
and pipes stay clean. A disabled bar accepts the same calls (``update``, ``set_postfix``,
``close``) and does nothing.

>>> with progress_bar(total=100, desc="MD", unit="frame", quiet=True) as bar:
...     bar.update(10)
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm


def progress_enabled(quiet: bool = False, stream: IO | None = None) -> bool:
    """True when a bar should be drawn: not ``quiet`` and ``stream`` (default stderr) is a TTY."""
    if quiet:
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def progress_bar(
    total: int | float | None = None,
    desc: str | None = None,
    unit: str = "it",
    *,
    quiet: bool = False,
    initial: int | float = 0,
    stream: IO | None = None,
    **tqdm_options,
) -> tqdm:
    """A tqdm bar on ``stream`` (default stderr), disabled by ``quiet`` or a non-TTY stream.

    Args:
        total: expected number of units (``None`` for an open-ended counter).
        desc: short label in front of the bar.
        unit: name of one unit, e.g. ``"frame"``.
        quiet: never draw the bar.
        initial: units already done (e.g. when resuming).
        stream: where to draw; defaults to ``sys.stderr``.
        tqdm_options: passed on to ``tqdm``.
    """
    stream = sys.stderr if stream is None else stream
    options = {"dynamic_ncols": True, "mininterval": 0.5, "smoothing": 0.1}
    options.update(tqdm_options)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=stream,
        disable=not progress_enabled(quiet, stream),
        **options,
    )
