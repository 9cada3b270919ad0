"""Builders for rational-quadratic spline coupling flows on [0, 1]^D (circle and interval dims).

:func:`spline_coupling_layer` wires one :class:`~boltzgen.flows.coupling.CouplingLayer` with an
:class:`~boltzgen.flows.conditioners.MLPConditioner` and a
:class:`~boltzgen.flows.splines.RationalQuadraticSpline`; :func:`coupling_stack` stacks them.

Masking scheme of :func:`coupling_stack` (layers come in pairs):
  for pair k, draw (from ``seed``) a random half A_k of the circle dims and, separately, a random
  half of the interval dims; layer 2k transforms A_k (their union) conditioned on the rest, layer
  2k + 1 transforms the rest conditioned on A_k. So every dim is transformed once per pair, every
  layer transforms torsions and bonds/angles together (each conditioned on both kinds), and a
  fresh split per pair lets every pair of dims end up on opposite sides over the depth. When a
  type has an odd count, which half gets the extra dim alternates between the two types and
  between pairs, so both halves stay balanced.
  Between coupling layers all circle dims are shifted by the golden-ratio fraction 0.618… (mod 1),
  which moves the spline seam to a new, well-spread place for each layer; a last shift undoes the
  accumulated offset, so the whole stack is the identity map at initialisation.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from boltzgen.flows.base import Flow, SequentialFlow
from boltzgen.flows.conditioners import MLPConditioner
from boltzgen.flows.coupling import CouplingLayer, DimensionSet, ElementwiseTransformer, as_index_tensor
from boltzgen.flows.shifts import CircularShift
from boltzgen.flows.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    RationalQuadraticSpline,
)

#: Shift between layers: the fractional part of the golden ratio (maximally spread seams).
GOLDEN_SHIFT = (math.sqrt(5.0) - 1.0) / 2.0


def _circular_mask(circular_mask: Union[Sequence[bool], torch.Tensor], dim: int) -> torch.Tensor:
    mask = torch.as_tensor(circular_mask)
    if mask.shape != (dim,) or not (mask.dtype == torch.bool or ((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"circular_mask must be {dim} booleans, got {circular_mask!r}")
    return mask.bool()


def spline_coupling_layer(
    dim: int,
    transformed: DimensionSet,
    circular_mask: Union[Sequence[bool], torch.Tensor],
    hidden: Sequence[int] = (128, 128),
    n_bins: int = 8,
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    conditioning: Optional[DimensionSet] = None,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> CouplingLayer:
    """A coupling layer with RQ splines (circular where ``circular_mask``) and an MLP conditioner.

    Args:
        dim: number of dims D (all in [0, 1]; circle dims represented in [0, 1)).
        transformed: dims the layer transforms (indices or boolean mask ``[D]``).
        circular_mask: ``[D]`` flags, True for circle dims (torsions).
        hidden: hidden widths of the conditioner MLP.
        n_bins: spline bins K.
        context_dim: context size C (0: none).
        activation: activation factory of the MLP.
        conditioning: dims the conditioner sees; default all dims not transformed.

    Returns:
        A :class:`CouplingLayer` that is the identity map at initialisation.
    """
    def make_transformer(circular_flags: torch.Tensor) -> RationalQuadraticSpline:
        return RationalQuadraticSpline(
            circular_flags, n_bins=n_bins, min_bin_width=min_bin_width,
            min_bin_height=min_bin_height, min_derivative=min_derivative,
        )

    return masked_coupling_layer(dim, transformed, circular_mask, make_transformer, hidden, context_dim,
                                 activation, conditioning)


def masked_coupling_layer(
    dim: int,
    transformed: DimensionSet,
    circular_mask: Union[Sequence[bool], torch.Tensor],
    make_transformer: Callable[[torch.Tensor], ElementwiseTransformer],
    hidden: Sequence[int] = (128, 128),
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    conditioning: Optional[DimensionSet] = None,
) -> CouplingLayer:
    """A coupling layer on [0, 1]^D with any element-wise transformer and an MLP conditioner.

    ``make_transformer(circular_flags [|T|] bool) -> ElementwiseTransformer`` builds the
    transformer of the transformed dims; the conditioner sees the conditioning dims (default: all
    others) with circle-aware features and starts at the transformer's identity parameters.
    """
    mask = _circular_mask(circular_mask, dim)
    transformed_idx = as_index_tensor(transformed, dim, "transformed")
    if conditioning is None:
        is_conditioning = torch.ones(dim, dtype=torch.bool)
        is_conditioning[transformed_idx] = False
        conditioning_idx = torch.nonzero(is_conditioning).flatten()
    else:
        conditioning_idx = as_index_tensor(conditioning, dim, "conditioning")
    transformer = make_transformer(mask[transformed_idx])
    conditioner = MLPConditioner(
        mask[conditioning_idx],
        transformer.n_params,
        hidden=hidden,
        context_dim=context_dim,
        activation=activation,
        output_bias=transformer.identity_parameters(),
    )
    return CouplingLayer(dim, transformed_idx, conditioner, transformer, conditioning=conditioning_idx)


def alternating_halves(
    circular_mask: Union[Sequence[bool], torch.Tensor], n_pairs: int, seed: int = 0
) -> list[torch.Tensor]:
    """The transformed sets A_k ``[|A_k|]`` (sorted indices) of each pair of layers.

    A_k holds a random half of the circle dims and a random half of the interval dims (see the
    module docstring); the complement of A_k is transformed by the second layer of pair k.
    """
    mask = torch.as_tensor(circular_mask, dtype=torch.bool)
    generator = torch.Generator().manual_seed(int(seed))
    kinds = [torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()]
    halves = []
    for k in range(n_pairs):
        chosen = []
        for kind, dims in enumerate(kinds):
            n = dims.numel()
            # The circle dims round up in even pairs, the interval dims in odd pairs.
            size = (n + 1) // 2 if (k + kind) % 2 == 0 else n // 2
            order = torch.randperm(n, generator=generator)
            chosen.append(dims[order[:size]])
        halves.append(torch.sort(torch.cat(chosen)).values)
    return halves


def coupling_stack(
    dim: int,
    circular_mask: Union[Sequence[bool], torch.Tensor],
    n_layers: int,
    hidden: Sequence[int] = (128, 128),
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    shift: float = GOLDEN_SHIFT,
    seed: int = 0,
    layer_factory: Callable[..., CouplingLayer] = spline_coupling_layer,
    **layer_options,
) -> SequentialFlow:
    """``n_layers`` coupling layers on [0, 1]^D with circular shifts between them.

    Masks as described in the module docstring (every dim is transformed once per pair of
    layers, so use an even ``n_layers``); ``seed`` fixes the random splits (the index sets are
    also stored as buffers in the state dict). The stack is the identity map at initialisation
    (for the smooth transformers: within their identity gap).

    Args:
        dim: number of dims D >= 2.
        circular_mask: ``[D]`` flags, True for circle dims (torsions) represented in [0, 1).
        n_layers: number of coupling layers.
        hidden, context_dim, activation: as in :func:`spline_coupling_layer`.
        shift: offset of the circular shift after each coupling layer (0 for none).
        seed: seed of the random splits.
        layer_factory: builds one layer, ``(dim, transformed, circular_mask, hidden=,
            context_dim=, activation=, **layer_options) -> CouplingLayer``:
            :func:`spline_coupling_layer` (default; options ``n_bins``, ``min_bin_width``, ...)
            or `boltzgen.flows.smooth.smooth_coupling_layer` (``n_components``, ...).

    Returns:
        ``SequentialFlow`` of coupling layers and :class:`CircularShift` layers:
        ``forward(x [B, D], context) -> (y [B, D], logdet [B])``.
    """
    if isinstance(dim, bool) or int(dim) != dim or dim < 2:
        raise ValueError(f"a coupling stack needs dim >= 2, got {dim!r}")
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    mask = _circular_mask(circular_mask, dim)
    use_shifts = bool(mask.any()) and shift % 1.0 != 0.0
    halves = alternating_halves(mask, (n_layers + 1) // 2, seed=seed)
    layers: list[Flow] = []
    for i in range(n_layers):
        first_half = halves[i // 2]
        if i % 2 == 0:
            transformed = first_half
        else:
            is_transformed = torch.ones(dim, dtype=torch.bool)
            is_transformed[first_half] = False
            transformed = torch.nonzero(is_transformed).flatten()
        layers.append(
            layer_factory(
                dim, transformed, mask, hidden=hidden, context_dim=context_dim, activation=activation,
                **layer_options,
            )
        )
        if use_shifts and i < n_layers - 1:
            layers.append(CircularShift(mask, shift))
    total_shift = (shift * (n_layers - 1)) % 1.0
    if use_shifts and total_shift != 0.0:
        layers.append(CircularShift(mask, -total_shift))
    return SequentialFlow(layers)
