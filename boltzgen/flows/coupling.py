"""Coupling layers with a pluggable element-wise transformer.

A coupling layer splits the D dimensions into a *transformed* set T and a *conditioning* set C.
The conditioning dims pass unchanged; a conditioner network maps them (and an optional context)
to the parameters of an element-wise, monotone transformer applied to each transformed dim:

    y_C = x_C,    y_T = tau(x_T; theta),    theta = conditioner(x_C, context).

The Jacobian is block-triangular, so log|det| = sum over T of log tau'(x_t).

The transformer is a component (:class:`ElementwiseTransformer`): rational-quadratic splines
(:mod:`boltzgen.flows.splines`) today, smooth mixtures or affine maps in other layers, all with the
same coupling layer.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from boltzgen.flows.base import Flow

#: A set of dimensions: a list of indices or a boolean mask over all D dims.
DimensionSet = Union[Sequence[int], Sequence[bool], torch.Tensor]


class ElementwiseTransformer(torch.nn.Module):
    """Monotone element-wise map of ``dim`` variables, parameterised by a flat parameter vector.

    Subclasses implement :meth:`forward`, :meth:`inverse` and :meth:`identity_parameters`, and set
    ``dim`` (number of transformed variables) and ``n_params`` (parameters per sample, all dims).

    Both directions take ``(inputs [B, dim], params [B, n_params])`` and return
    ``(outputs [B, dim], log_derivative [B, dim])``: the element-wise log |d output / d input|.
    """

    dim: int
    n_params: int

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def identity_parameters(self) -> torch.Tensor:
        """Parameters ``[n_params]`` for which the transformer is the identity map."""
        raise NotImplementedError

    def check_shapes(self, inputs: torch.Tensor, params: torch.Tensor) -> None:
        """One clear ValueError unless ``inputs`` is ``[B, dim]`` and ``params`` ``[B, n_params]``."""
        if inputs.dim() != 2 or inputs.shape[1] != self.dim:
            raise ValueError(f"expected inputs [batch, {self.dim}], got {list(inputs.shape)}")
        if params.shape != (inputs.shape[0], self.n_params):
            raise ValueError(f"expected parameters [{inputs.shape[0]}, {self.n_params}], got {list(params.shape)}")


def check_elementwise_inputs(
    x: torch.Tensor, params: torch.Tensor, circular: bool, tolerance: float, name: str
) -> None:
    """Checks of an element-wise map's inputs ``x [B, D]`` and parameters ``[B, D, P]``: shapes,
    finite parameters, circle inputs finite, interval inputs in ``[0, 1]`` up to ``tolerance``;
    one ValueError naming the map (``name``, e.g. "spline") otherwise. One device sync."""
    if x.dim() != 2 or params.dim() != 3 or params.shape[:2] != x.shape:
        raise ValueError(
            f"{name} inputs must be [B, D] with parameters [B, D, n_params], got "
            f"{list(x.shape)} and {list(params.shape)}"
        )
    bad_inputs = ~torch.isfinite(x) if circular else ~((x >= -tolerance) & (x <= 1 + tolerance))
    bad_params = ~torch.isfinite(params)
    if bool(bad_inputs.any() | bad_params.any()):
        if bad_inputs.any():
            bad = x[bad_inputs]
            where = "finite" if circular else f"in [0, 1] (tolerance {tolerance:g})"
            raise ValueError(f"{name} inputs must be {where}; {bad.numel()} are not, e.g. {bad[:5].tolist()}")
        raise ValueError(f"{name} parameters are not finite (non-finite conditioner input or diverged training)")


def as_index_tensor(dims: DimensionSet, dim: int, name: str) -> torch.Tensor:
    """A set of dims (indices, or a boolean mask of length ``dim``) as sorted indices ``[K]``."""
    tensor = torch.as_tensor(dims)
    if tensor.dtype == torch.bool:
        if tensor.shape != (dim,):
            raise ValueError(f"{name} mask must have shape [{dim}], got {list(tensor.shape)}")
        return torch.nonzero(tensor).flatten()
    if tensor.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name} must be a list of integer indices or a boolean mask of length {dim}"
        )
    tensor = tensor.long()
    if (tensor < 0).any() or (tensor >= dim).any():
        raise ValueError(f"{name} indices must lie in [0, {dim}), got {tensor.tolist()}")
    if torch.unique(tensor).numel() != tensor.numel():
        raise ValueError(f"{name} indices must be unique, got {tensor.tolist()}")
    return torch.sort(tensor).values


class CouplingLayer(Flow):
    """Coupling layer ``y_T = transformer(x_T; conditioner(x_C, context))``, ``y_C = x_C``.

    Args:
        dim: number of dimensions D of ``x``.
        transformed: the transformed dims T (indices or boolean mask ``[D]``).
        conditioner: module ``(x_C [B, |C|], context [B, C_ctx] or None) -> params [B, n_params]``
            (e.g. :class:`boltzgen.flows.conditioners.MLPConditioner`).
        transformer: element-wise transformer over the ``|T|`` transformed dims, in the order of
            the sorted indices of T.
        conditioning: the conditioning dims C; default: all dims not in T. Dims in neither set
            pass unchanged and are not seen by the conditioner.

    Shapes: ``forward(x [B, D], context) -> (y [B, D], logdet [B])``; the inverse likewise.
    """

    def __init__(
        self,
        dim: int,
        transformed: DimensionSet,
        conditioner: torch.nn.Module,
        transformer: ElementwiseTransformer,
        conditioning: Optional[DimensionSet] = None,
    ):
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        transformed_idx = as_index_tensor(transformed, self.dim, "transformed")
        if transformed_idx.numel() == 0:
            raise ValueError("a coupling layer needs at least one transformed dimension")
        if conditioning is None:
            is_transformed = torch.zeros(self.dim, dtype=torch.bool)
            is_transformed[transformed_idx] = True
            conditioning_idx = torch.nonzero(~is_transformed).flatten()
        else:
            conditioning_idx = as_index_tensor(conditioning, self.dim, "conditioning")
        overlap = set(transformed_idx.tolist()) & set(conditioning_idx.tolist())
        if overlap:
            raise ValueError(f"dims {sorted(overlap)} are both transformed and conditioning")
        if transformer.dim != transformed_idx.numel():
            raise ValueError(
                f"the transformer acts on {transformer.dim} dims but {transformed_idx.numel()} "
                "dims are transformed"
            )
        self.register_buffer("transformed", transformed_idx)
        self.register_buffer("conditioning", conditioning_idx)
        self.conditioner = conditioner
        self.transformer = transformer

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, transformed={self.transformed.numel()}, "
            f"conditioning={self.conditioning.numel()}"
        )

    def _parameters_for(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects a batch of shape [batch, {self.dim}], "
                f"got {list(x.shape)}"
            )
        params = self.conditioner(x[:, self.conditioning], context)
        expected = (x.shape[0], self.transformer.n_params)
        if tuple(params.shape) != expected:
            raise ValueError(
                f"the conditioner returned parameters of shape {list(params.shape)}, "
                f"the transformer needs {list(expected)}"
            )
        return params

    def _forward(self, x, context=None):
        params = self._parameters_for(x, context)
        y_t, log_derivative = self.transformer(x[:, self.transformed], params)
        return x.index_copy(1, self.transformed, y_t), log_derivative.sum(dim=-1)

    def _inverse(self, y, context=None):
        params = self._parameters_for(y, context)
        x_t, log_derivative = self.transformer.inverse(y[:, self.transformed], params)
        return y.index_copy(1, self.transformed, x_t), log_derivative.sum(dim=-1)
