"""Rational-quadratic splines on the real line: a spline on ``[-B, B]``, the identity outside.

This is the "unconstrained" neural spline of Durkan et al. (2019) with linear tails: inside the
tail bound ``B`` the map is the monotone RQ spline of :func:`boltzgen.flows.splines.rational_quadratic_spline`
(rescaled from [0, 1] to ``[-B, B]``, which leaves its derivative unchanged) with both boundary
derivatives fixed to 1, so the map and its derivative are continuous at ``±B``; outside it is the
identity with log-derivative 0. Used for flows in unbounded spaces (toy systems with a normal prior).
"""

from __future__ import annotations

import torch

from boltzgen.flows.coupling import ElementwiseTransformer
from boltzgen.flows.splines import (
    DEFAULT_MIN_BIN_HEIGHT,
    DEFAULT_MIN_BIN_WIDTH,
    DEFAULT_MIN_DERIVATIVE,
    identity_derivative_parameter,
    rational_quadratic_spline,
)


class LinearTailSpline(ElementwiseTransformer):
    """Element-wise RQ spline of ``[-tail_bound, tail_bound]`` onto itself, identity outside.

    Args:
        dim: number of transformed variables.
        n_bins: bins K; parameters per variable: K widths, K heights, K - 1 interior knot
            derivatives (``3K - 1``), laid out ``[dim, 3K - 1]`` and flattened.
        tail_bound: B (units of the input).
        min_bin_width, min_bin_height, min_derivative: lower bounds (nflows' meaning).
    """

    def __init__(
        self,
        dim: int,
        n_bins: int = 8,
        tail_bound: float = 5.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be positive, got {tail_bound!r}")
        self.dim, self.n_bins, self.tail_bound = int(dim), int(n_bins), float(tail_bound)
        self.min_bin_width, self.min_bin_height = float(min_bin_width), float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.n_params = self.dim * (3 * self.n_bins - 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_bins={self.n_bins}, tail_bound={self.tail_bound:g}"

    def identity_parameters(self) -> torch.Tensor:
        """Parameters ``[n_params]`` of the identity map (equal bins, unit derivatives)."""
        per_variable = torch.zeros(3 * self.n_bins - 1)
        per_variable[2 * self.n_bins :] = identity_derivative_parameter(self.min_derivative)
        return per_variable.repeat(self.dim)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, dim]``, ``params [B, n_params]`` -> ``(y [B, dim], log f'(x) [B, dim])``."""
        return self._transform(x, params, inverse=False)

    def inverse(self, y: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y [B, dim]``, ``params [B, n_params]`` -> ``(x [B, dim], -log f'(x) [B, dim])``."""
        return self._transform(y, params, inverse=True)

    def _transform(self, inputs: torch.Tensor, params: torch.Tensor, inverse: bool):
        self.check_shapes(inputs, params)
        k = self.n_bins
        params = params.reshape(inputs.shape[0], self.dim, 3 * k - 1)
        boundary = torch.full_like(params[..., :1], identity_derivative_parameter(self.min_derivative))
        derivatives = torch.cat([boundary, params[..., 2 * k :], boundary], dim=-1)
        bound = self.tail_bound
        inside = (inputs > -bound) & (inputs < bound)
        scaled = ((inputs.clamp(-bound, bound) + bound) / (2 * bound))
        out, log_derivative = rational_quadratic_spline(
            scaled, params[..., :k], params[..., k : 2 * k], derivatives, inverse,
            self.min_bin_width, self.min_bin_height, self.min_derivative,
        )
        outputs = torch.where(inside, out * (2 * bound) - bound, inputs)
        return outputs, torch.where(inside, log_derivative, torch.zeros_like(log_derivative))
