"""Exponential moving average (EMA) of a model's parameters, for evaluation with averaged weights.

Stochastic-gradient training of a flow by a reverse-KL-type loss ends with parameters that jitter
around a minimum at the scale of the last learning rate; their moving average sits closer to it and
usually gives a better-behaved importance-weight tail. `ParameterAverage` keeps the average next
to the live parameters (same dtype and device) without touching the optimizer.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


class ParameterAverage:
    """EMA of ``parameters``: after the n-th :meth:`update` (n = 0, 1, ...),
    ``avg <- avg + (1 - d_n) (theta - avg)`` with ``d_n = min(decay, (1 + n) / (10 + n))``.

    The ramp ``(1 + n) / (10 + n)`` lets the first updates follow the parameters closely (so the
    average does not hold on to the initial values for ~1 / (1 - decay) steps); later the decay
    is ``decay`` (an averaging window of about ``1 / (1 - decay)`` steps).

    Args:
        parameters: the tensors to average (e.g. ``model.parameters()``); read, never written,
            except by :meth:`copy_to_parameters` and inside :meth:`swapped_in`.
        decay: in (0, 1).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay!r}")
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("ParameterAverage needs at least one parameter")
        self.decay = float(decay)
        self.n_updates = 0
        self.averages = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        """``d_n`` of the next update."""
        return min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current parameters (call after each optimizer step)."""
        weight = 1.0 - self.current_decay()
        for average, parameter in zip(self.averages, self.parameters):
            average.lerp_(parameter.detach(), weight)
        self.n_updates += 1

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Overwrite the parameters with their averages."""
        for average, parameter in zip(self.averages, self.parameters):
            parameter.copy_(average)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold their averages; afterwards their own values again."""
        saved = [p.detach().clone() for p in self.parameters]
        self.copy_to_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for value, parameter in zip(saved, self.parameters):
                    parameter.copy_(value)


__all__ = ["ParameterAverage"]
