"""The `Flow` contract and its two compositions, `SequentialFlow` and `InverseFlow`.

A flow is an invertible map with a tractable log-Jacobian determinant. Both directions take a
flat batch ``[B, D]`` (and an optional ``context`` tensor ``[B, C]``) and return the transformed
batch together with ``logdet`` of shape ``[B]``: the log |det J| of the map that was applied.
So ``forward(x) -> (y, log|det dy/dx|)`` and ``inverse(y) -> (x, log|det dx/dy|)``, and a round
trip gives ``logdet_forward + logdet_inverse = 0``. The input and output dimensions may differ
only for maps between manifolds of equal dimension embedded differently (the internal-coordinate
transform); such flows document their shapes.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch


class Flow(torch.nn.Module):
    """Base class: subclasses implement :meth:`_forward` and :meth:`_inverse`."""

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the map: ``x`` ``[B, D_in]`` -> ``(y [B, D_out], logdet [B])``."""
        return self._forward(x, context=context)

    def inverse(
        self, y: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the inverse map: ``y`` ``[B, D_out]`` -> ``(x [B, D_in], logdet [B])``."""
        return self._inverse(y, context=context)

    def _forward(self, x, context=None):
        raise NotImplementedError

    def _inverse(self, y, context=None):
        raise NotImplementedError


class SequentialFlow(Flow):
    """Composition ``f_n o ... o f_1``: ``forward`` applies the layers in order, summing log-dets."""

    def __init__(self, layers: Iterable[Flow]):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def _forward(self, x, context=None):
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, context=context)
            logdet = logdet + ld
        return x, logdet

    def _inverse(self, y, context=None):
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, context=context)
            logdet = logdet + ld
        return y, logdet

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Flow:
        return self.layers[index]


class InverseFlow(Flow):
    """The inverse of ``flow``: its ``forward`` is ``flow.inverse`` and vice versa."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def _forward(self, x, context=None):
        return self.flow.inverse(x, context=context)

    def _inverse(self, y, context=None):
        return self.flow.forward(y, context=context)
