"""The OpenMM plugin: a trained flow's energy as an OpenMM force (through OpenMM-Torch).

Needs the ``openmmtorch`` package (``pip install "boltzgen[openmm-torch]"``; openmmtorch 1.5 from
PyPI loads beside torch 2.9.1). Importing this module works without it; building a force raises a
clear error then.
"""

from boltzgen.openmm.flow_force import (
    FlowPotential,
    add_flow_force,
    flow_force,
    flow_potential_system,
    openmm_torch_available,
)

__all__ = ["FlowPotential", "add_flow_force", "flow_force", "flow_potential_system", "openmm_torch_available"]
