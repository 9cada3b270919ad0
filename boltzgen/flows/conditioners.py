"""Conditioner networks for coupling layers: periodic-aware features and an MLP.

Features of the conditioning variables (all normalised to [0, 1]):
circle variables as ``(cos 2 pi x, sin 2 pi x)`` (continuous across the seam, so the conditioner
is a smooth function on the circle), interval variables as ``2x - 1`` (centred in [-1, 1]).
An optional context ``[B, C]`` is appended as it is.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence, Union

import torch


class ConditionerFeatures(torch.nn.Module):
    """``x [B, D]`` (D = ``len(circular)``) -> features ``[B, n_features]``.

    Layout: ``cos 2 pi x_c`` for the circle variables, then ``sin 2 pi x_c``, then ``2 x_i - 1``
    for the interval variables (each in increasing index);
    ``n_features = 2 n_circular + n_interval``.
    """

    def __init__(self, circular: Union[Sequence[bool], torch.Tensor]):
        super().__init__()
        flags = torch.as_tensor(circular, dtype=torch.bool).reshape(-1)
        self.dim = int(flags.numel())
        self.register_buffer("circular_dims", torch.nonzero(flags).flatten())
        self.register_buffer("interval_dims", torch.nonzero(~flags).flatten())
        self.n_features = 2 * self.circular_dims.numel() + self.interval_dims.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"expected conditioning inputs [batch, {self.dim}], got {list(x.shape)}"
            )
        angle = 2 * math.pi * x[:, self.circular_dims]
        return torch.cat(
            [torch.cos(angle), torch.sin(angle), 2 * x[:, self.interval_dims] - 1], dim=-1
        )


class LearnedConstant(torch.nn.Module):
    """Outputs a learned vector ``[n]`` for every sample: ``[B, F] -> [B, n]`` (F may be 0)."""

    def __init__(self, initial: torch.Tensor):
        super().__init__()
        self.value = torch.nn.Parameter(initial.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.value.expand(features.shape[0], -1)


def _zero_initialised_mlp(
    widths: Sequence[int], output_bias: torch.Tensor, activation: Callable[[], torch.nn.Module]
) -> torch.nn.Sequential:
    """Linear + activation layers of ``widths``, then a linear layer with zero weights and
    bias ``output_bias`` (so the network starts as the constant ``output_bias``)."""
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(n_in, n_out), activation()]
    last = torch.nn.Linear(widths[-1], output_bias.numel())
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(output_bias)
    layers.append(last)
    return torch.nn.Sequential(*layers)


class MLPConditioner(torch.nn.Module):
    """MLP from conditioning features (+ context) to transformer parameters.

    The last linear layer starts with zero weights and the bias ``output_bias``, so the network
    initially outputs ``output_bias`` for every input (the transformer's identity parameters: the
    coupling layer starts as the identity map).

    Args:
        circular: ``[D_c]`` flags of the conditioning variables (see :class:`ConditionerFeatures`).
        n_outputs: number of outputs (the transformer's ``n_params``).
        hidden: hidden layer widths, e.g. ``(128, 128)``; ``()`` gives a single linear layer.
        context_dim: size C of the context appended to the features (0: no context; a context
            passed anyway is ignored, as the same context goes to every layer of a stack).
        activation: factory of the activation module (default ``torch.nn.SiLU``).
        output_bias: ``[n_outputs]`` initial output (default zeros).

    With no inputs at all (no conditioning dims, no context) the outputs are learned constants.

    Shapes: ``forward(x_c [B, D_c], context [B, C] or None) -> [B, n_outputs]``.
    """

    def __init__(
        self,
        circular: Union[Sequence[bool], torch.Tensor],
        n_outputs: int,
        hidden: Sequence[int] = (128, 128),
        context_dim: int = 0,
        activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
        output_bias: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        if int(n_outputs) <= 0:
            raise ValueError(f"n_outputs must be positive, got {n_outputs!r}")
        if int(context_dim) < 0:
            raise ValueError(f"context_dim must be non-negative, got {context_dim!r}")
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {tuple(hidden)}")
        self.features = ConditionerFeatures(circular)
        self.context_dim = int(context_dim)
        self.n_outputs = int(n_outputs)
        n_inputs = self.features.n_features + self.context_dim
        if output_bias is None:
            output_bias = torch.zeros(self.n_outputs)
        output_bias = torch.as_tensor(output_bias, dtype=torch.get_default_dtype())
        if output_bias.shape != (self.n_outputs,):
            raise ValueError(
                f"output_bias must have shape [{self.n_outputs}], got {list(output_bias.shape)}"
            )
        if n_inputs == 0:  # nothing to condition on: the outputs are learned constants
            self.network = LearnedConstant(output_bias)
        else:
            self.network = _zero_initialised_mlp(
                [n_inputs, *[int(h) for h in hidden]], output_bias, activation
            )

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        features = self.features(x)
        if self.context_dim > 0:
            if context is None:
                raise ValueError(
                    f"this conditioner needs a context of shape [batch, {self.context_dim}]"
                )
            if context.dim() != 2 or context.shape != (x.shape[0], self.context_dim):
                raise ValueError(
                    f"expected context [{x.shape[0]}, {self.context_dim}], "
                    f"got {list(context.shape)}"
                )
            features = torch.cat([features, context.to(features.dtype)], dim=-1)
        return self.network(features)


class FixedPrecisionConditioner(torch.nn.Module):
    """Runs a conditioner network in a fixed floating dtype inside a flow of another dtype.

    A float64 flow keeps exact invertibility and accurate log-determinants from its transformers;
    its conditioner networks need no such precision, and in float32 they run about twice as fast
    on a CPU. The wrapper casts the inputs (and context) to ``dtype``, runs ``network`` and casts
    the parameters it returns back to the input's dtype. Forward and inverse of a coupling layer
    compute the same conditioner values from the same conditioning inputs, so the inverse stays
    exact.

    ``network`` keeps ``dtype`` through ``module.to(...)`` / ``.double()`` of an enclosing flow
    (devices still move). Shapes: ``(x_c [B, D_c], context [B, C] or None) -> [B, n_params]``.
    """

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.dtype = dtype
        self.network = network.to(dtype)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for tensor in itertools.chain(self.network.parameters(), self.network.buffers()):
            if tensor.is_floating_point() and tensor.dtype != self.dtype:
                tensor.data = tensor.data.to(self.dtype)
        return self

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.network(x.to(self.dtype), None if context is None else context.to(self.dtype))
        return out.to(x.dtype)
