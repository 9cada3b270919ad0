"""Two-dimensional toy energies with closed-form forces: the double well and Müller-Brown.

Both are dimensionless reduced energies (``temperature`` is None) on flat batches ``x`` of shape
``[B, 2]``, returning ``u`` of shape ``[B]`` and forces ``-du/dx`` of shape ``[B, 2]`` in the dtype
and on the device of ``x``. Forces are the analytic gradients (no autograd), built from torch
operations, so they are themselves differentiable (force matching on toys works).
Exact reference values (log Z, state free energies) are in :mod:`boltzgen.energy.quadrature`.
"""

from __future__ import annotations

import torch

from boltzgen.energy.base import Energy


class DoubleWellEnergy(Energy):
    """The double well of Wu, Köhler & Noé (2020): ``u = x1^4 - 6 x1^2 - 0.5 x1 + x2^2 / 2``.

    Minima at x1 = -1.7108 (u = -8.1392) and x1 = 1.7525 (u = -9.8712), x2 = 0, separated by a
    barrier at x1 = -0.0417 (u = 0.0104). The x2 direction is a standard Gaussian. States used
    throughout: A = {x1 < 0}, B = {x1 > 0}.
    """

    def __init__(self):
        super().__init__(dim=2, temperature=None)

    @staticmethod
    def x1_energy(x1):
        """The x1 part ``x1^4 - 6 x1^2 - 0.5 x1``; works on floats, numpy arrays and tensors."""
        return x1**4 - 6.0 * x1**2 - 0.5 * x1

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``[B]`` for ``x`` of shape ``[B, 2]``."""
        x = self.check_input(x)
        return self.x1_energy(x[:, 0]) + 0.5 * x[:, 1] ** 2

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic force ``-du/dx``, shape ``[B, 2]``."""
        x = self.check_input(x)
        x1, x2 = x[:, 0], x[:, 1]
        return torch.stack((-(4.0 * x1**3 - 12.0 * x1 - 0.5), -x2), dim=1)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy ``[B]`` and analytic force ``[B, 2]``."""
        return self.energy(x), self.force(x)


#: Standard Müller-Brown parameters (Müller & Brown, Theor. Chim. Acta 53, 75 (1979)):
#: V(x, y) = sum_k A_k exp(a_k (x - x0_k)^2 + b_k (x - x0_k)(y - y0_k) + c_k (y - y0_k)^2).
MULLER_BROWN_PARAMETERS = {
    "A": (-200.0, -100.0, -170.0, 15.0),
    "a": (-1.0, -1.0, -6.5, 0.7),
    "b": (0.0, 0.0, 11.0, 0.6),
    "c": (-10.0, -10.0, -6.5, 0.7),
    "x0": (1.0, 0.0, -0.5, -1.0),
    "y0": (0.0, 0.5, 1.5, 1.0),
}

#: Default scale: u = 0.05 V puts the barrier out of the deepest minimum at 5.30 kT.
MULLER_BROWN_DEFAULT_SCALE = 0.05


class MullerBrownEnergy(Energy):
    """The Müller-Brown potential in reduced units: ``u(x, y) = scale * V(x, y)``.

    ``V`` is the standard potential (see :data:`MULLER_BROWN_PARAMETERS`). Its three minima and
    two saddles (in V units) are:

    ====  ==================  ========
    A     (-0.5582,  1.4417)  -146.700  deepest minimum
    B     ( 0.6235,  0.0280)  -108.167
    C     (-0.0500,  0.4667)   -80.768  shallow intermediate
    A|C   (-0.8220,  0.6243)   -40.665  saddle
    C|B   ( 0.2125,  0.2930)   -72.249  saddle
    ====  ==================  ========

    With the default ``scale = 0.05`` (kT = 20 V units) the barriers are: out of A 5.30 kT, out of
    B 1.80 kT, out of C 0.43 kT (towards B) and 2.01 kT (towards A); the minima lie at -7.335,
    -5.408 and -4.038 kT. The potential grows without bound far away (the fourth term's quadratic
    form is positive definite), so exp(-u) is integrable for any positive scale.

    Args:
        scale: positive factor converting V to kT (u = scale * V).
    """

    def __init__(self, scale: float = MULLER_BROWN_DEFAULT_SCALE):
        super().__init__(dim=2, temperature=None)
        scale = float(scale)
        if not scale > 0.0:
            raise ValueError(f"MullerBrownEnergy scale must be positive, got {scale!r}")
        self.scale = scale
        for name, values in MULLER_BROWN_PARAMETERS.items():
            self.register_buffer(f"_{name}", torch.tensor(values, dtype=torch.float64), persistent=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"

    def _terms(self, x: torch.Tensor):
        """Per-term displacements and weighted exponentials, each ``[B, 4]``."""
        x = self.check_input(x)
        p = {name: getattr(self, f"_{name}").to(dtype=x.dtype, device=x.device) for name in MULLER_BROWN_PARAMETERS}
        dx = x[:, :1] - p["x0"]
        dy = x[:, 1:] - p["y0"]
        terms = p["A"] * torch.exp(p["a"] * dx**2 + p["b"] * dx * dy + p["c"] * dy**2)
        return p, dx, dy, terms

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``[B]`` for ``x`` of shape ``[B, 2]``."""
        _, _, _, terms = self._terms(x)
        return self.scale * terms.sum(dim=1)

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Analytic force ``-du/dx``, shape ``[B, 2]``."""
        return self.energy_and_force(x)[1]

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy ``[B]`` and analytic force ``[B, 2]`` from one evaluation of the exponentials."""
        p, dx, dy, terms = self._terms(x)
        du_dx = (terms * (2.0 * p["a"] * dx + p["b"] * dy)).sum(dim=1)
        du_dy = (terms * (p["b"] * dx + 2.0 * p["c"] * dy)).sum(dim=1)
        energy = self.scale * terms.sum(dim=1)
        return energy, -self.scale * torch.stack((du_dx, du_dy), dim=1)
