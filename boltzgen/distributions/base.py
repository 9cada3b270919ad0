"""The `Distribution` contract: normalised densities on flat batches ``[B, D]``.

A distribution is a ``torch.nn.Module`` whose parameters are buffers, so ``.to(device)`` and
``.double()`` move and cast it; :meth:`Distribution.sample` draws on the buffers' device and
dtype. ``log_prob`` is the normalised log density and ``energy = -log_prob`` (in kT when the
distribution is used as a prior of a Boltzmann generator).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from boltzgen.tensors import check_flat_batch

#: A scalar or one value per dimension.
ScalarOrVector = Union[float, Sequence[float], torch.Tensor]


class Distribution(torch.nn.Module):
    """Base class: subclasses implement :meth:`_sample` and :meth:`_log_prob`.

    Attributes:
        dim: number of dimensions D.
    """

    def __init__(self, dim: int):
        super().__init__()
        if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim = int(dim)
        # Carries the device and dtype that `sample` uses (subclasses register their own buffers
        # too; this one keeps parameter-free distributions movable and castable).
        self.register_buffer("_reference", torch.zeros(()), persistent=False)

    @property
    def dim(self) -> int:
        return self._dim

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``n`` samples, shape ``[n, D]``, on the distribution's device and dtype."""
        if isinstance(n, bool) or int(n) != n or int(n) < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n!r}")
        return self._sample(int(n), generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log density of ``x`` ``[B, D]``, shape ``[B]``."""
        return self._log_prob(self.check_input(x))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``-log_prob(x)``, shape ``[B]``."""
        return -self.log_prob(x)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` as a floating-point ``[B, D]`` tensor; raise one clear error otherwise."""
        return check_flat_batch(x, self.dim, type(self).__name__, "a batch")

    @property
    def _device(self) -> torch.device:
        return self._reference.device

    @property
    def _dtype(self) -> torch.dtype:
        return self._reference.dtype

    def _sample(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def parameter_dtype(values: Sequence[ScalarOrVector]) -> torch.dtype:
    """The dtype for a distribution's buffers: the widest floating dtype among tensor ``values``,
    else the default dtype (so float64 tensors keep full precision, Python floats follow the
    default)."""
    dtype = torch.get_default_dtype()
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = torch.promote_types(dtype, value.dtype)
    return dtype


def per_dimension(
    value: ScalarOrVector, dim: int, name: str, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``value`` (a scalar or ``dim`` values) as a float tensor of shape ``[dim]``."""
    dtype = dtype or torch.get_default_dtype()
    tensor = torch.as_tensor(value, dtype=dtype).detach().clone()
    if tensor.dim() == 0:
        return tensor.expand(dim).clone()
    if tensor.dim() != 1 or tensor.shape[0] != dim:
        raise ValueError(
            f"{name} must be a scalar or have shape [{dim}], got shape {list(tensor.shape)}"
        )
    return tensor
