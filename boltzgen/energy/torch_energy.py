"""`TorchEnergy`: the energy of an OpenMM System as batched PyTorch, on CPU or GPU, differentiable.

>>> from boltzgen import systems
>>> ad2 = systems.load("alanine_dipeptide_implicit")
>>> target = TorchEnergy.from_openmm(ad2.openmm_system, ad2.temperature)   # doctest: +SKIP
>>> u, f = target.energy_and_force(x)     # x: [B, 66] nm -> u: [B] kT, f: [B, 66] kT/nm

Every force of the System is compiled once into a `ForceTerm` (``boltzgen/energy/torch_forces``);
an evaluation is a handful of batched tensor operations per force, with forces by autograd, so
the energy sits in the same autograd graph as a flow and runs on the flow's device.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import openmm
import torch

from boltzgen.energy.allocator import keep_freed_memory_in_process
from boltzgen.energy.base import Energy
from boltzgen.energy.openmm import NonFiniteEnergyWarning
from boltzgen.energy.torch_forces.base import ForceTerm
from boltzgen.energy.torch_forces.registry import compile_forces
from boltzgen.energy.torch_forces.virtual_sites import VirtualSitePlacer
from boltzgen.units import kt_kj_per_mol


class _FiniteGradient(torch.autograd.Function):
    """Identity whose backward pass zeroes the rows of the gradient that are not finite.

    A configuration whose energy is not finite (overlapping atoms) gets energy +inf and force 0,
    as in `OpenMMEnergy`; without this, 0 * inf inside its graph would send NaN back into a flow.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        finite_rows = torch.isfinite(grad).all(dim=-1, keepdim=True)
        return torch.where(finite_rows, grad, torch.zeros_like(grad))


class TorchEnergy(Energy):
    """Reduced energy u(x) = E(x) / kT of an OpenMM System, computed by compiled torch terms.

    Build it with :meth:`from_openmm`. Shapes and units: ``x`` is ``[B, 3N]`` positions in nm (N
    includes virtual sites, whose input coordinates are ignored and recomputed from their parents,
    so their force entries are 0: the force on a site acts on its parents);
    energies ``[B]`` in kT, forces ``[B, 3N]`` in kT/nm, returned in the dtype and device of ``x``.
    The computation runs in this module's dtype and device (:attr:`dtype`, :attr:`device`; change
    them with ``.to(...)``): float64 agrees with OpenMM's Reference platform to about 1e-7 relative.

    Bad rows never raise: rows with non-finite coordinates or a non-finite result get energy +inf
    and force 0 (and no gradient); each call with such rows emits one `NonFiniteEnergyWarning`;
    :attr:`n_evaluations` and :attr:`n_nonfinite` count configurations over the object's life.
    """

    def __init__(
        self,
        terms: Sequence[ForceTerm],
        n_particles: int,
        temperature: float,
        box: torch.Tensor | None = None,
        virtual_sites: VirtualSitePlacer | None = None,
    ):
        super().__init__(3 * int(n_particles), temperature)
        #: Whether glibc keeps freed memory in the process (about 2x faster evaluations on CPU;
        #: see `boltzgen.energy.allocator`).
        self.malloc_tuned = keep_freed_memory_in_process()
        self.n_particles = int(n_particles)
        #: k_B T in kJ/mol.
        self.kt = kt_kj_per_mol(temperature)
        self.terms = torch.nn.ModuleList(terms)
        self.virtual_sites = virtual_sites
        self.register_buffer("box", None if box is None else torch.as_tensor(box, dtype=torch.float64))
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=torch.float64))
        self.n_evaluations = 0
        self.n_nonfinite = 0
        self._compiled_sum = None
        # Float64 originals of every floating buffer, so that float32 -> float64 loses nothing.
        self._float64_buffers = {
            name: buffer.detach().to("cpu", torch.float64).clone()
            for name, buffer in self.named_buffers() if buffer.is_floating_point()
        }

    @classmethod
    def from_openmm(
        cls,
        openmm_system: openmm.System,
        temperature: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "TorchEnergy":
        """Compile ``openmm_system`` at ``temperature`` (K) into a `TorchEnergy` in ``dtype`` on ``device``.

        Raises `boltzgen.energy.torch_forces.base.UnsupportedForceError` naming any force (or
        force option, or virtual-site type) that cannot be compiled, with the supported list.
        """
        if not isinstance(openmm_system, openmm.System):
            raise TypeError(f"openmm_system must be an openmm.System, got {type(openmm_system).__name__}")
        if temperature is None or not float(temperature) > 0:
            raise ValueError(f"temperature must be positive (K), got {temperature!r}")
        terms = compile_forces(openmm_system)
        box = None
        if openmm_system.usesPeriodicBoundaryConditions():
            vectors = openmm_system.getDefaultPeriodicBoxVectors()
            box = torch.tensor([[float(c) for c in v.value_in_unit(openmm.unit.nanometer)] for v in vectors])
        energy = cls(terms, openmm_system.getNumParticles(), float(temperature), box,
                     VirtualSitePlacer.from_openmm(openmm_system))
        return energy.to(device=device, dtype=dtype)

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.double()``, ``.cuda()``...: cast the buffers from their float64 originals."""
        super()._apply(fn, recurse)
        originals = self.__dict__.get("_float64_buffers") or {}
        for name, current in list(self.named_buffers()):
            if name in originals:
                owner_name, _, leaf = name.rpartition(".")
                owner = self.get_submodule(owner_name) if owner_name else self
                owner._buffers[leaf] = originals[name].to(device=current.device, dtype=current.dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type the terms compute in."""
        return self._dtype_probe.dtype

    @property
    def device(self) -> torch.device:
        """The device the terms compute on."""
        return self._dtype_probe.device

    # -- evaluation -----------------------------------------------------------------------------

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3N]`` -> ``[B, N, 3]`` in the module's dtype and device, virtual sites placed."""
        positions = x.to(device=self.device, dtype=self.dtype).reshape(x.shape[0], self.n_particles, 3)
        if self.virtual_sites is not None:
            positions = self.virtual_sites(positions)
        return positions

    def term_energies(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each force's potential energy ``[B]`` in kJ/mol, keyed ``"<index>:<OpenMM force name>"``."""
        positions = self._positions(self.check_input(x))
        box = None if self.box is None else self.box.to(self.dtype)
        return {f"{k}:{term.openmm_name}": term(positions, box) for k, term in enumerate(self.terms)}

    def _sum_of_terms(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        total = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        for term in self.terms:
            total = total + term(positions, box)
        return total

    def potential_energy(self, positions: torch.Tensor) -> torch.Tensor:
        """Total potential energy ``[B]`` in kJ/mol of ``positions`` ``[B, N, 3]`` nm (module dtype/device, sites placed)."""
        box = None if self.box is None else self.box.to(self.dtype)
        evaluate = self._compiled_sum if self._compiled_sum is not None else self._sum_of_terms
        return evaluate(positions, box)

    def compiled(self, **compile_options) -> "TorchEnergy":
        """Evaluate the terms through ``torch.compile`` from now on (options passed on); returns ``self``.

        The first call per batch shape compiles (seconds to a minute); forces, by autograd, run
        the compiled backward. See ``benchmarks/energy_throughput.py`` for when it pays.
        """
        self._compiled_sum = torch.compile(self._sum_of_terms, **compile_options)
        return self

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``[B]`` (kT) of ``x`` ``[B, 3N]`` (nm); differentiable with respect to ``x``."""
        x = self.check_input(x)
        finite_input = torch.isfinite(x).all(dim=-1)
        all_finite_input = bool(finite_input.all())
        if not all_finite_input:
            x = torch.where(finite_input.unsqueeze(-1), x, torch.zeros_like(x))
        if x.requires_grad:
            x = _FiniteGradient.apply(x)
        energy_kj = self.potential_energy(self._positions(x))
        good = torch.isfinite(energy_kj) & finite_input.to(energy_kj.device)
        n_bad = int((~good).sum())
        self.n_evaluations += int(x.shape[0])
        if n_bad:
            self.n_nonfinite += n_bad
            warnings.warn(
                f"{n_bad} of {x.shape[0]} configurations had non-finite coordinates or energy; "
                "they get energy +inf and force 0",
                NonFiniteEnergyWarning,
                stacklevel=2,
            )
            energy_kj = torch.where(good, energy_kj, torch.full_like(energy_kj, float("inf")))
        return (energy_kj / self.kt).to(device=x.device, dtype=x.dtype)

    def close(self) -> None:
        """Nothing to release (present so that `TorchEnergy` and `OpenMMEnergy` are interchangeable)."""

    def __enter__(self) -> "TorchEnergy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def extra_repr(self) -> str:
        forces = ", ".join(term.openmm_name for term in self.terms)
        return (
            f"n_particles={self.n_particles}, temperature={self.temperature}, dtype={self.dtype}, "
            f"device={self.device}, forces=[{forces}]"
        )
