"""Circular shift: rotate circle variables by a constant offset (modulo 1).

Coupling layers with circular splines always have a knot at 0 (the seam where the spline's
parametrisation starts). Shifting the circle variables between layers moves that point, so the
stack is not pinned there. Volume preserving: logdet = 0.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from boltzgen.flows.base import Flow


class CircularShift(Flow):
    """``y_c = (x_c + offset) mod 1`` on the circle dims, other dims unchanged; logdet 0.

    Args:
        circular: ``[D]`` flags (True for circle variables represented in [0, 1)).
        offset: scalar or one value per circle variable.
        learnable: make the offset a trainable parameter (otherwise a buffer).

    Shapes: ``forward(x [B, D]) -> (y [B, D], logdet [B])``; the inverse subtracts the offset.
    """

    def __init__(
        self,
        circular: Union[Sequence[bool], torch.Tensor],
        offset: Union[float, Sequence[float], torch.Tensor] = 0.5,
        learnable: bool = False,
    ):
        super().__init__()
        flags = torch.as_tensor(circular, dtype=torch.bool)
        if flags.dim() != 1 or flags.numel() == 0:
            raise ValueError(
                f"circular must be a non-empty 1-D sequence of flags, got {circular!r}"
            )
        self.dim = int(flags.numel())
        self.register_buffer("circular_dims", torch.nonzero(flags).flatten())
        n_circular = self.circular_dims.numel()
        offset_t = torch.as_tensor(offset, dtype=torch.get_default_dtype()).detach().clone()
        if offset_t.dim() == 0:
            offset_t = offset_t.expand(n_circular).clone()
        if offset_t.shape != (n_circular,):
            raise ValueError(
                f"offset must be a scalar or have one value per circle variable ({n_circular}), "
                f"got shape {list(offset_t.shape)}"
            )
        if learnable:
            self.offset = torch.nn.Parameter(offset_t)
        else:
            self.register_buffer("offset", offset_t)

    def extra_repr(self) -> str:
        learnable = isinstance(self.offset, torch.nn.Parameter)
        return f"dim={self.dim}, circular={self.circular_dims.numel()}, learnable={learnable}"

    def _shift(self, x: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CircularShift expects [batch, {self.dim}], got {list(x.shape)}")
        shifted = torch.remainder(x[:, self.circular_dims] + sign * self.offset.to(x.dtype), 1.0)
        return x.index_copy(1, self.circular_dims, shifted), x.new_zeros(x.shape[0])

    def _forward(self, x, context=None):
        return self._shift(x, 1.0)

    def _inverse(self, y, context=None):
        return self._shift(y, -1.0)
