"""Batched molecular dynamics on any `Energy`: velocity Verlet (NVE) and Langevin BAOAB (NVT).

Many independent replicas run at once: positions ``x [B, D]`` in nm (D = 3N), velocities
``v [B, D]`` in nm/ps, masses in amu (g/mol) per atom, time in ps. The energy is a boltzgen
`Energy` (reduced, kT, forces in kT/nm); with a temperature T it is converted to OpenMM's units
(kJ/mol, kJ/mol/nm) with kT = R T, so that ``force / mass`` is an acceleration in nm/ps^2 exactly
as in OpenMM. An energy without a temperature (a toy) runs in reduced units: kT = 1 and masses 1
unless given.

Replicas whose energy or force stops being finite (a flow potential outside its support, an
explosion) are frozen and flagged in ``MDState.failed``; they never turn the batch into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from boltzgen.dynamics.kernels import energy_and_force
from boltzgen.units import kt_kj_per_mol


@dataclass
class MDState:
    """State of B replicas: ``x``, ``v`` ``[B, D]``; ``potential`` ``[B]`` (kJ/mol, or kT for
    toys); ``force`` ``[B, D]`` (kJ/mol/nm); ``failed`` ``[B]`` bool; ``time_ps``."""

    x: torch.Tensor
    v: torch.Tensor
    potential: torch.Tensor
    force: torch.Tensor
    failed: torch.Tensor
    time_ps: float = 0.0


def _energy_scale(energy) -> float:
    """kJ/mol per kT of the energy's temperature (1 for a reduced toy energy)."""
    temperature = getattr(energy, "temperature", None)
    return 1.0 if temperature is None else kt_kj_per_mol(temperature)


def per_coordinate_masses(
    masses: Optional[Union[Sequence[float], torch.Tensor]], dim: int, dtype=None, device=None
) -> torch.Tensor:
    """Masses ``[D]`` (one per coordinate) from per-atom masses ``[D / 3]`` (amu), per-coordinate
    masses ``[D]``, or None (all 1)."""
    if masses is None:
        return torch.ones(dim, dtype=dtype, device=device)
    m = torch.as_tensor(masses, dtype=dtype, device=device).reshape(-1)
    if m.numel() * 3 == dim:
        m = m.repeat_interleave(3)
    if m.numel() != dim:
        raise ValueError(f"got {m.numel()} masses for {dim} coordinates (need {dim // 3} atoms or {dim} values)")
    if not bool((m > 0).all()):
        raise ValueError("masses must be positive (virtual sites cannot be integrated)")
    return m


class _Integrator:
    def __init__(self, energy, timestep_ps: float, masses=None):
        if not timestep_ps > 0:
            raise ValueError(f"timestep must be positive (ps), got {timestep_ps!r}")
        self.energy = energy
        self.timestep = float(timestep_ps)
        self.masses = masses
        self.scale = _energy_scale(energy)

    def _masses_like(self, x: torch.Tensor) -> torch.Tensor:
        return per_coordinate_masses(self.masses, x.shape[1], x.dtype, x.device)

    def evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Potential ``[B]`` and force ``[B, D]`` in kJ/mol(/nm), and a ``[B]`` flag of non-finite rows."""
        u, f = energy_and_force(self.energy, x)
        bad = ~torch.isfinite(u) | ~torch.isfinite(f).all(-1)
        f = torch.where(bad.unsqueeze(-1), torch.zeros_like(f), f)
        return u * self.scale, f * self.scale, bad

    def initial_state(self, x: torch.Tensor, v: torch.Tensor) -> MDState:
        """State at positions ``x`` and velocities ``v`` ``[B, D]`` (one force evaluation)."""
        potential, force, bad = self.evaluate(x)
        return MDState(x, v, potential, force, bad)

    def kinetic_energy(self, state: MDState) -> torch.Tensor:
        """``sum m v^2 / 2`` ``[B]`` in kJ/mol (kT for toys)."""
        return 0.5 * (self._masses_like(state.x) * state.v**2).sum(-1)

    def _finish(self, state: MDState, x, v, potential, force, bad) -> MDState:
        failed = state.failed | bad
        keep = failed.unsqueeze(-1)
        return MDState(
            torch.where(keep, state.x, x), torch.where(keep, state.v, v),
            torch.where(failed, state.potential, potential), torch.where(keep, state.force, force),
            failed, state.time_ps + self.timestep,
        )


class VelocityVerlet(_Integrator):
    """Velocity Verlet (NVE): ``v += dt/2 a; x += dt v; v += dt/2 a(x)`` — the same update as
    OpenMM's ``VerletIntegrator`` (leapfrog), time-reversible and symplectic.

    Args:
        energy: a boltzgen `Energy` (kT; kT/nm), evaluated in batches.
        timestep_ps: dt in ps (1 fs = 0.001).
        masses: per-atom masses in amu ``[N]`` (or ``[D]``), None for unit masses.
    """

    @torch.no_grad()
    def step(self, state: MDState) -> MDState:
        inverse_mass = 1.0 / self._masses_like(state.x)
        v_half = state.v + 0.5 * self.timestep * state.force * inverse_mass
        x = state.x + self.timestep * v_half
        potential, force, bad = self.evaluate(x)
        v = v_half + 0.5 * self.timestep * force * inverse_mass
        return self._finish(state, x, v, potential, force, bad)


class LangevinBAOAB(_Integrator):
    """Langevin dynamics (NVT) with the BAOAB splitting (Leimkuhler & Matthews 2013).

    Args:
        energy, timestep_ps, masses: as for `VelocityVerlet`.
        friction_per_ps: collision rate gamma (1/ps).
        temperature: bath temperature in K; default the energy's own temperature (required for
            a molecular energy; a toy without one uses kT = 1).
        generator: torch random generator for the noise (None: the global one).
    """

    def __init__(self, energy, timestep_ps: float, friction_per_ps: float = 1.0, masses=None,
                 temperature: Optional[float] = None, generator: Optional[torch.Generator] = None):
        super().__init__(energy, timestep_ps, masses)
        if not friction_per_ps >= 0:
            raise ValueError(f"friction must be >= 0 (1/ps), got {friction_per_ps!r}")
        self.friction = float(friction_per_ps)
        temperature = temperature if temperature is not None else getattr(energy, "temperature", None)
        self.kt = 1.0 if temperature is None else kt_kj_per_mol(temperature)
        self.generator = generator

    @torch.no_grad()
    def step(self, state: MDState) -> MDState:
        inverse_mass = 1.0 / self._masses_like(state.x)
        dt = self.timestep
        v = state.v + 0.5 * dt * state.force * inverse_mass                      # B
        x = state.x + 0.5 * dt * v                                               # A
        decay = math.exp(-self.friction * dt)                                    # O
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=self.generator)
        v = decay * v + torch.sqrt((1 - decay**2) * self.kt * inverse_mass) * noise
        x = x + 0.5 * dt * v                                                     # A
        potential, force, bad = self.evaluate(x)
        v = v + 0.5 * dt * force * inverse_mass                                  # B
        return self._finish(state, x, v, potential, force, bad)


def maxwell_boltzmann_velocities(
    masses: torch.Tensor, temperature_kt: float, n_replicas: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Velocities ``[n_replicas, D]`` (nm/ps) drawn from exp(-m v^2 / 2 kT), kT in kJ/mol.

    ``masses``: per-coordinate masses ``[D]`` (amu), e.g. from `per_coordinate_masses`.
    """
    noise = torch.randn((n_replicas, masses.numel()), dtype=masses.dtype, device=masses.device, generator=generator)
    return noise * torch.sqrt(temperature_kt / masses)


@dataclass
class MDRecord:
    """What `simulate` records every ``report_interval`` steps (S reports, initial state included):
    ``positions [S, B, D]`` nm, ``potential``, ``kinetic``, ``total`` ``[S, B]`` (kJ/mol, kT for
    toys), ``time_ps [S]``, and ``failed [B]`` (replicas that were frozen)."""

    positions: torch.Tensor
    potential: torch.Tensor
    kinetic: torch.Tensor
    time_ps: torch.Tensor
    failed: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.potential + self.kinetic


def simulate(integrator: _Integrator, state: MDState, n_steps: int, report_interval: int = 1,
             keep_positions: bool = True) -> tuple[MDState, MDRecord]:
    """Run ``n_steps`` steps from ``state``; returns the final state and the record."""
    if n_steps < 0 or report_interval < 1:
        raise ValueError("n_steps must be >= 0 and report_interval >= 1")
    positions, potential, kinetic, times = [], [], [], []

    def report(s: MDState) -> None:
        if keep_positions:
            positions.append(s.x.detach().cpu())
        potential.append(s.potential.detach().cpu())
        kinetic.append(integrator.kinetic_energy(s).detach().cpu())
        times.append(s.time_ps)

    report(state)
    for step in range(1, n_steps + 1):
        state = integrator.step(state)
        if step % report_interval == 0:
            report(state)
    stacked = torch.stack(positions) if keep_positions else torch.empty(0)
    record = MDRecord(stacked, torch.stack(potential), torch.stack(kinetic),
                      torch.tensor(times, dtype=torch.float64), state.failed.cpu())
    return state, record
