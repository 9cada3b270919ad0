"""Affine (RealNVP) element-wise transformer and coupling layer on unbounded variables.

``y = x exp(s) + t`` per transformed dim, with the log-scale softly bounded,
``s = max_log_scale tanh(s_raw / max_log_scale)``, so that one conditioner output cannot blow a
sample up by ``exp(100)``. The spline transformers of :mod:`boltzgen.flows.splines` live on
[0, 1]; this one is for flows on R^D (toy energies, Cartesian coordinates), e.g. the RealNVP
flows of stochastic normalising flows (:mod:`boltzgen.flows.stochastic`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from boltzgen.flows.conditioners import MLPConditioner
from boltzgen.flows.coupling import CouplingLayer, DimensionSet, ElementwiseTransformer, as_index_tensor

#: Default bound on |log-scale| per dim and layer (a factor of e^3 ~ 20 at most).
DEFAULT_MAX_LOG_SCALE = 3.0


class AffineTransformer(ElementwiseTransformer):
    """``y = x exp(s) + t`` on ``dim`` variables; ``log |dy/dx| = s``.

    Parameter layout ``[B, 2 dim]``: the shifts ``t`` (units of x), then the unbounded log-scales
    ``s_raw``; ``s = max_log_scale tanh(s_raw / max_log_scale)``. All zeros is the identity.

    Args:
        dim: number of transformed variables.
        max_log_scale: positive bound on ``|s|``.
    """

    def __init__(self, dim: int, max_log_scale: float = DEFAULT_MAX_LOG_SCALE):
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not float(max_log_scale) > 0:
            raise ValueError(f"max_log_scale must be positive, got {max_log_scale!r}")
        self.dim = int(dim)
        self.n_params = 2 * self.dim
        self.max_log_scale = float(max_log_scale)

    def _shift_and_log_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if params.dim() != 2 or params.shape[1] != self.n_params:
            raise ValueError(
                f"AffineTransformer expects parameters [batch, {self.n_params}], got {list(params.shape)}"
            )
        shift, raw = params[:, : self.dim], params[:, self.dim :]
        return shift, self.max_log_scale * torch.tanh(raw / self.max_log_scale)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [B, dim], params [B, 2 dim]) -> (y [B, dim], log dy/dx [B, dim])``."""
        shift, log_scale = self._shift_and_log_scale(params)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y [B, dim], params [B, 2 dim]) -> (x [B, dim], log dx/dy [B, dim])``."""
        shift, log_scale = self._shift_and_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), -log_scale

    def identity_parameters(self) -> torch.Tensor:
        """All zeros ``[2 dim]``: zero shift and zero log-scale."""
        return torch.zeros(self.n_params)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_log_scale={self.max_log_scale:g}"


def affine_coupling_layer(
    dim: int,
    transformed: DimensionSet,
    hidden: Sequence[int] = (64, 64),
    context_dim: int = 0,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    max_log_scale: float = DEFAULT_MAX_LOG_SCALE,
) -> CouplingLayer:
    """A RealNVP coupling layer on R^D: the ``transformed`` dims get an affine map conditioned
    (through an MLP) on all other dims. It is the identity map at initialisation.

    Shapes: ``forward(x [B, D], context) -> (y [B, D], logdet [B])``; the inverse likewise.
    """
    transformed_idx = as_index_tensor(transformed, dim, "transformed")
    is_conditioning = torch.ones(dim, dtype=torch.bool)
    is_conditioning[transformed_idx] = False
    conditioning_idx = torch.nonzero(is_conditioning).flatten()
    transformer = AffineTransformer(transformed_idx.numel(), max_log_scale=max_log_scale)
    conditioner = MLPConditioner(
        torch.zeros(conditioning_idx.numel(), dtype=torch.bool),
        transformer.n_params,
        hidden=hidden,
        context_dim=context_dim,
        activation=activation,
        output_bias=transformer.identity_parameters(),
    )
    return CouplingLayer(dim, transformed_idx, conditioner, transformer, conditioning=conditioning_idx)
