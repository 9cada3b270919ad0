"""`boltzgen.dynamics.highest_frequency` against exact normal modes of quadratic potentials."""

from __future__ import annotations

import math

import pytest
import torch

from boltzgen.dynamics import highest_frequency
from boltzgen.units import kt_kj_per_mol

pytestmark = pytest.mark.usefixtures("single_thread")


class Quadratic:
    """``u(x) = x^T K x / 2`` per row (kT at ``temperature`` if given, else plain units)."""

    def __init__(self, stiffness: torch.Tensor, temperature=None):
        self.stiffness = stiffness
        if temperature is not None:
            self.temperature = temperature

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("bi,ij,bj->b", x, self.stiffness, x)


def test_coupled_quadratic_matches_the_largest_normal_mode():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    stiffness = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    masses = torch.tensor([1.0, 16.0, 12.0, 1.0, 14.0, 1.0], dtype=torch.float64)
    mass_weighted = stiffness / torch.sqrt(masses[:, None] * masses[None, :])
    exact = torch.linalg.eigvalsh(mass_weighted).max().sqrt()
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64)  # any point: the Hessian is constant
    omega = highest_frequency(Quadratic(stiffness), x, masses, n_iterations=300,
                              generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(omega, exact.expand(3), rtol=1e-6, atol=0)


def test_reduced_energies_are_scaled_to_kj_per_mol_and_atom_masses_expand():
    # Two atoms in 3D, a diagonal stiffness; u is in kT at 300 K, so H in kJ/mol/nm^2 is kT times it.
    stiffness = torch.diag(torch.tensor([100.0, 200.0, 300.0, 400.0, 500.0, 600.0], dtype=torch.float64))
    masses = [1.0, 2.0]  # per atom
    omega = highest_frequency(Quadratic(stiffness, temperature=300.0), torch.zeros(2, 6, dtype=torch.float64),
                              masses, n_iterations=400, generator=torch.Generator().manual_seed(2))
    per_coordinate = torch.tensor([1.0, 1, 1, 2, 2, 2], dtype=torch.float64)
    exact = math.sqrt(kt_kj_per_mol(300.0) * float((stiffness.diagonal() / per_coordinate).max()))
    assert omega.tolist() == pytest.approx([exact, exact], rel=1e-5)


def test_a_saddle_counts_by_its_magnitude_and_bad_input_is_refused():
    stiffness = torch.diag(torch.tensor([-9.0, 1.0], dtype=torch.float64))
    omega = highest_frequency(Quadratic(stiffness), torch.zeros(1, 2, dtype=torch.float64), n_iterations=60,
                              generator=torch.Generator().manual_seed(3))
    assert omega.item() == pytest.approx(3.0, rel=1e-8)
    with pytest.raises(ValueError, match="shape"):
        highest_frequency(Quadratic(stiffness), torch.zeros(2, dtype=torch.float64))

    class Infinite:
        def energy(self, x):
            return torch.full(x.shape[:1], math.inf, dtype=x.dtype) + 0 * x.sum(-1)

    with pytest.raises(ValueError, match="finite energies"):
        highest_frequency(Infinite(), torch.zeros(1, 2, dtype=torch.float64))
