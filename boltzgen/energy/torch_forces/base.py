"""The contract of one compiled OpenMM force: `ForceTerm`, and helpers to read OpenMM parameters.

Every OpenMM force that `TorchEnergy` supports compiles into one `ForceTerm`: a ``torch.nn.Module``
whose ``forward(positions, box)`` returns that force's potential energy for a batch of
configurations, in kJ/mol, exactly as OpenMM defines it. Parameters live in buffers, so
``term.to(device=..., dtype=...)`` moves and casts them; index arrays stay ``torch.long``.
Forces come from autograd, so a term only has to get the energy right (and differentiable).

Shapes and units:
- ``positions``: ``[B, N, 3]`` in nm (N = all particles of the System, virtual sites included;
  `TorchEnergy` places the virtual sites before any term sees the positions).
- ``box``: ``None`` for non-periodic systems, else the periodic box vectors ``[3, 3]`` in nm
  (rows a, b, c in OpenMM's reduced triclinic form, as ``System.getDefaultPeriodicBoxVectors``).
- return: ``[B]`` energy in kJ/mol, in the dtype of ``positions``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import openmm
import torch

from boltzgen.errors import BoltzgenError

#: 1 / (4 pi epsilon_0) in kJ nm / (mol e^2), as OpenMM computes it from CODATA 2018 constants
#: (SimTKOpenMMRealType.h: epsilon_0 = 1e-6 * 8.8541878128e-12 / (e^2 N_A)).
ONE_4PI_EPS0 = 138.93545764438198


class UnsupportedForceError(BoltzgenError):
    """An OpenMM force, or an option of one, that `TorchEnergy` cannot compile."""


class ForceTerm(torch.nn.Module):
    """One OpenMM force as batched torch: ``forward(positions [B, N, 3] nm, box [3, 3] nm or None) -> [B] kJ/mol``.

    Subclasses build themselves with a classmethod ``from_openmm(force, system)`` that reads every
    parameter once (no OpenMM calls at evaluation time) and raises `UnsupportedForceError` naming
    the option it does not handle.
    """

    #: Name of the OpenMM force class this term compiles (for messages and per-term reports).
    openmm_name: str = ""

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def as_float_buffer(values: Iterable[float] | np.ndarray, width: int | None = None) -> torch.Tensor:
    """Parameters as a float64 tensor (``[K]``, or ``[K, width]``; empty-safe) for ``register_buffer``."""
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if width is not None:  # rows of no parameters (width 0) keep their count: [[], []] -> [2, 0]
        array = array.reshape(-1, width) if width > 0 else array.reshape(len(array), 0)
    return torch.as_tensor(array, dtype=torch.float64)


def as_index_buffer(values: Iterable[Sequence[int]] | np.ndarray, width: int) -> torch.Tensor:
    """Atom index tuples as a ``[K, width]`` long tensor (``[0, width]`` when empty)."""
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64)
    return torch.as_tensor(array.reshape(-1, width), dtype=torch.long)


def value_of(quantity, unit=None) -> float:
    """A float from an OpenMM parameter that may or may not carry units (``unit``: what to convert to)."""
    if openmm.unit.is_quantity(quantity):
        return float(quantity.value_in_unit(unit) if unit is not None else quantity._value)
    return float(quantity)
