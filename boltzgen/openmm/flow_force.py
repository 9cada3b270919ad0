"""A flow's learned potential ``U_theta(x) = -kT log q_X(x)`` as an OpenMM ``TorchForce``.

`flow_force` traces the generator's log density into TorchScript and wraps it in an
``openmmtorch.TorchForce``: a plain OpenMM ``Simulation`` then runs on the learned potential
(`flow_potential_system`: the molecule's particles and masses, only the flow force), or on the
force field plus a weighted flow term (`add_flow_force`: ``U_ff + weight * U_theta``, e.g. a
correction or a bias). Forces are ``-dU/dx`` by autograd inside OpenMM-Torch.

Units: OpenMM hands the module positions ``[N, 3]`` in nm; it returns the energy in kJ/mol
(``kT`` at the given temperature times the reduced energy ``-log q_X``). The log density of the
molecular flows is invariant under rigid motions, so the force has no net force or torque.

Limits: the trace is made at a fixed number of particles; configurations outside the flow's
support (a bond or angle beyond the intervals fitted on the training data) have no density — the
traced module then clamps them into the support like the layers' rounding guards do, so keep
simulations near the data (smooth flows were made for this: `boltzgen.flows.smooth`).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from boltzgen.units import kt_kj_per_mol

try:  # optional dependency
    import openmmtorch as _openmmtorch
except ImportError:  # pragma: no cover - depends on the environment
    _openmmtorch = None


def openmm_torch_available() -> bool:
    """True when the OpenMM-Torch plugin (``openmmtorch``) can be imported."""
    return _openmmtorch is not None


class FlowPotential(torch.nn.Module):
    """``positions [N, 3]`` (nm) -> ``kT * (-log q_X(x))`` (kJ/mol, scalar): the flow's potential.

    Args:
        generator: a `BoltzmannGenerator` (a copy of its prior and flow is used; not its target).
        temperature: K; sets kT.
        weight: factor on the potential (1: the flow's full energy).
        dtype: dtype the flow is evaluated in (positions are cast to it; the energy is returned
            in float64).
    """

    def __init__(self, generator, temperature: float, weight: float = 1.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        from boltzgen.generator import BoltzmannGenerator

        density = BoltzmannGenerator(copy.deepcopy(generator.prior), copy.deepcopy(generator.flow))
        density = density.to(dtype).eval()
        for parameter in density.parameters():
            parameter.requires_grad_(False)
        self.density = density
        self.scale = float(weight) * float(kt_kj_per_mol(temperature))
        self.dtype = dtype

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(self.dtype).reshape(1, -1)
        return (-self.scale * self.density.log_prob(x)).sum().to(torch.float64)


def _require_openmm_torch() -> None:
    if _openmmtorch is None:
        raise ImportError(
            "the OpenMM plugin needs openmmtorch: pip install 'boltzgen[openmm-torch]' "
            "(openmmtorch 1.5 from PyPI loads beside torch 2.9.1)"
        )


def flow_force(generator, temperature: float, example_positions, weight: float = 1.0,
               dtype: torch.dtype = torch.float64, force_group: Optional[int] = None):
    """An ``openmmtorch.TorchForce`` whose energy is the flow's potential ``-kT log q_X(x)``.

    Args:
        generator: a trained `BoltzmannGenerator` over Cartesian configurations ``[B, 3N]``.
        temperature: K (kT of the learned potential).
        example_positions: one configuration ``[N, 3]`` or ``[3N]`` (nm) inside the flow's
            support, used to trace the module.
        weight: factor on the potential (1: the flow's full energy).
        dtype: evaluation dtype of the flow inside OpenMM.
        force_group: OpenMM force group to put the force in (None: default group 0).

    Returns:
        the TorchForce (add it to an ``openmm.System``).
    """
    _require_openmm_torch()
    module = FlowPotential(generator, temperature, weight, dtype)
    example = torch.as_tensor(example_positions, dtype=dtype).reshape(-1, 3)
    try:
        with torch.no_grad():
            energy = module(example)
    except ValueError as error:  # a layer rejected the input: outside the flow's domain
        raise ValueError(f"the example positions lie outside the flow's support ({error})") from None
    if not torch.isfinite(energy):
        raise ValueError("the example positions lie outside the flow's support (its energy is not finite)")
    with torch.jit.optimized_execution(False):
        traced = torch.jit.trace(module, (example,), check_trace=False)
    force = _openmmtorch.TorchForce(traced)
    if force_group is not None:
        force.setForceGroup(int(force_group))
    return force


def flow_potential_system(openmm_system, generator, temperature: float, example_positions,
                          dtype: torch.dtype = torch.float64):
    """A new ``openmm.System`` with the particles (and masses) of ``openmm_system`` and one force:
    the flow's potential. Constraints and virtual sites are copied; the force field is not."""
    import openmm

    system = openmm.XmlSerializer.clone(openmm_system)
    for index in reversed(range(system.getNumForces())):
        system.removeForce(index)
    system.addForce(flow_force(generator, temperature, example_positions, dtype=dtype))
    return system


def add_flow_force(openmm_system, generator, temperature: float, example_positions, weight: float = 1.0,
                   dtype: torch.dtype = torch.float64, force_group: Optional[int] = None):
    """Add ``weight * (-kT log q_X)`` to ``openmm_system`` (in place) next to its force field;
    returns the added force. ``weight`` scales the learned potential (1: the full flow energy)."""
    force = flow_force(generator, temperature, example_positions, weight, dtype, force_group)
    openmm_system.addForce(force)
    return force
