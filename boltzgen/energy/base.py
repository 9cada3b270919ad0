"""The `Energy` contract: reduced target energies on flat batches of configurations."""

from __future__ import annotations

import torch

from boltzgen.tensors import check_flat_batch


class Energy(torch.nn.Module):
    """A reduced energy u(x) = U(x) / (k_B T), in units of kT.

    Configurations are flat batches ``x`` of shape ``[B, D]`` (for molecules D = 3N, positions
    in nm). Subclasses implement :meth:`energy`; :meth:`force` defaults to ``-du/dx`` by autograd
    and :meth:`energy_and_force` to both at once. Backends that compute forces themselves (OpenMM)
    override :meth:`energy_and_force`.

    Attributes:
        dim: number of degrees of freedom D.
        temperature: temperature in K that defines kT, or ``None`` for energies that are already
            dimensionless (toy systems).
    """

    def __init__(self, dim: int, temperature: float | None = None):
        super().__init__()
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim = int(dim)
        self._temperature = None if temperature is None else float(temperature)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def temperature(self) -> float | None:
        return self._temperature

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` as a ``[B, D]`` floating-point tensor; raise one clear ValueError otherwise."""
        return check_flat_batch(x, self.dim, type(self).__name__, "positions")

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy, shape ``[B]`` (kT), for ``x`` of shape ``[B, D]``."""
        raise NotImplementedError

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced force ``-du/dx``, shape ``[B, D]`` (kT/nm for molecules)."""
        return self.energy_and_force(x)[1]

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy ``[B]`` and force ``[B, D]`` together (one evaluation where the backend allows)."""
        x = self.check_input(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = self.energy(xg)
            (grad,) = torch.autograd.grad(u.sum(), xg)
        return u.detach(), -grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x)
