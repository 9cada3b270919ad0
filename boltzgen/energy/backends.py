"""Choosing the energy backend of an OpenMM System: ``"torch"`` (`TorchEnergy`), ``"openmm"`` (`OpenMMEnergy`) or ``"auto"``.

``"auto"`` takes `TorchEnergy` whenever every force of the System compiles: on batches it is much
faster than a loop over OpenMM Contexts (``benchmarks/energy_throughput.py``) and it runs on the
flow's device. Systems with a force TorchEnergy does not support fall back to OpenMM.
"""

from __future__ import annotations

import openmm
import torch

from boltzgen.energy.base import Energy
from boltzgen.energy.torch_forces.base import UnsupportedForceError

#: Accepted values of ``backend`` (and of ``--energy`` on the command line).
ENERGY_BACKENDS = ("auto", "torch", "openmm")


def system_energy(
    openmm_system: openmm.System,
    temperature: float,
    backend: str = "auto",
    platform: str = "auto",
    device: torch.device | str | None = None,
    **openmm_options,
) -> Energy:
    """The reduced energy of ``openmm_system`` at ``temperature`` (K) from the chosen backend.

    Args:
        backend: ``"torch"``, ``"openmm"`` or ``"auto"`` (torch when every force compiles).
        platform: OpenMM platform of the OpenMM backend (ignored by torch).
        device: torch device of the torch backend (default CPU; ignored by OpenMM, which always
            returns results on the input's device).
        openmm_options: further `OpenMMEnergy` arguments (``n_workers``, ``parallel``, ...).

    The chosen backend's name is in the result's ``backend`` attribute; with ``"auto"``, a
    fallback to OpenMM leaves the reason in ``backend_note``.
    """
    if backend not in ENERGY_BACKENDS:
        raise ValueError(f"unknown energy backend {backend!r}; choose one of {', '.join(ENERGY_BACKENDS)}")
    note = ""
    if backend in ("torch", "auto"):
        from boltzgen.energy.torch_energy import TorchEnergy

        try:
            energy = TorchEnergy.from_openmm(openmm_system, temperature, device=device)
        except UnsupportedForceError as error:
            if backend == "torch":
                raise
            note = f"torch backend unavailable: {error}"
        else:
            energy.backend, energy.backend_note = "torch", ""
            return energy
    from boltzgen.energy.openmm import OpenMMEnergy

    energy = OpenMMEnergy(openmm_system, temperature, platform=platform, **openmm_options)
    energy.backend, energy.backend_note = "openmm", note
    return energy
