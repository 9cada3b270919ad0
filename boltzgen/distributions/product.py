"""Product of independent distributions on concatenated blocks of dimensions.

``ProductDistribution([d1, d2, ...])`` is the distribution of ``x = (x_1, x_2, ...)`` with
independent blocks ``x_i ~ d_i``: points are flat batches ``[B, D_1 + D_2 + ...]`` (block ``i`` in
columns ``D_1 + ... + D_{i-1}`` onwards), ``log_prob`` is the sum of the blocks' log densities
(each w.r.t. its own reference measure, e.g. Lebesgue on a torus and the surface measure of S^3
for :class:`~boltzgen.distributions.UniformS3`; the product density is w.r.t. the product
measure) and ``sample`` concatenates independent samples of the blocks.

Typical use: the latent prior of a rigid-body flow, uniform positions on the torus times uniform
orientations, ``ProductDistribution([UniformTorus(3 * (K - 1)), UniformS3(K)])``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from boltzgen.distributions.base import Distribution


class ProductDistribution(Distribution):
    """Independent components on consecutive blocks of a flat batch.

    Args:
        components: one or more `Distribution` objects; component ``i`` owns ``components[i].dim``
            consecutive columns, in the order given.

    Attributes:
        components: the components (a ``torch.nn.ModuleList``, so ``.to`` / ``.double()`` reach
            their buffers).
        block_sizes: ``[D_i]`` per component; ``dim = sum(block_sizes)``.

    Shapes: ``sample(n) -> [n, D]``; ``log_prob(x [B, D]) -> [B]`` (``-inf`` where any block is
    outside its component's support, NaN where any block gives NaN).
    """

    def __init__(self, components: Sequence[Distribution]):
        components = list(components)
        if not components:
            raise ValueError("ProductDistribution needs at least one component")
        for index, component in enumerate(components):
            if not isinstance(component, Distribution):
                raise TypeError(
                    f"component {index} must be a boltzgen Distribution, got {type(component).__name__}"
                )
        block_sizes = tuple(int(component.dim) for component in components)
        super().__init__(sum(block_sizes))
        self.components = torch.nn.ModuleList(components)
        self.block_sizes = block_sizes
        # sample in the components' dtype (the widest of them)
        dtype = components[0]._dtype
        for component in components[1:]:
            dtype = torch.promote_types(dtype, component._dtype)
        self._reference = self._reference.to(dtype)

    def extra_repr(self) -> str:
        return f"block_sizes={list(self.block_sizes)}"

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, D]`` -> the component blocks ``[B, D_i]`` (views), in order."""
        x = self.check_input(x)
        return list(torch.split(x, list(self.block_sizes), dim=-1))

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        blocks = [component.sample(n, generator=generator) for component in self.components]
        dtype = blocks[0].dtype
        for block in blocks[1:]:
            dtype = torch.promote_types(dtype, block.dtype)
        return torch.cat([block.to(dtype) for block in blocks], dim=-1)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(x, list(self.block_sizes), dim=-1)
        total = None
        for component, block in zip(self.components, blocks):
            log_p = component.log_prob(block)
            total = log_p if total is None else total + log_p
        return total


__all__ = ["ProductDistribution"]
