"""Virtual sites (e.g. the M site of TIP4P water) placed from their parent atoms, batched.

OpenMM recomputes a virtual site's position from its parents before every energy evaluation and
hands the site's force on to the parents. `VirtualSitePlacer` does the first in torch; autograd
does the second, because the site's position is a function of the parents' positions (the site's
own input coordinates are overwritten and get zero gradient).

Supported: ``TwoParticleAverageSite``, ``ThreeParticleAverageSite``, ``OutOfPlaneSite`` (the sites
of rigid water models). ``LocalCoordinatesSite`` raises `UnsupportedForceError`.
"""

from __future__ import annotations

import openmm
import torch

from boltzgen.energy.torch_forces.base import UnsupportedForceError, as_float_buffer, as_index_buffer


class VirtualSitePlacer(torch.nn.Module):
    """Recompute virtual-site positions: ``forward(positions [B, N, 3] nm) -> [B, N, 3] nm``.

    Average sites: ``r = sum_k w_k r_parent_k`` (two or three parents, padded to three with weight 0).
    Out-of-plane sites: ``r = r1 + w12 r12 + w13 r13 + wcross (r12 x r13)`` with ``r1k = r_k - r_1``.
    """

    def __init__(self, average_sites, average_parents, average_weights, plane_sites, plane_parents, plane_weights):
        super().__init__()
        self.register_buffer("average_sites", as_index_buffer(average_sites, 1)[:, 0])
        self.register_buffer("average_parents", as_index_buffer(average_parents, 3))
        self.register_buffer("average_weights", as_float_buffer(average_weights, 3))
        self.register_buffer("plane_sites", as_index_buffer(plane_sites, 1)[:, 0])
        self.register_buffer("plane_parents", as_index_buffer(plane_parents, 3))
        self.register_buffer("plane_weights", as_float_buffer(plane_weights, 3))

    @classmethod
    def from_openmm(cls, system: openmm.System) -> "VirtualSitePlacer | None":
        """The placer for ``system``'s virtual sites, or ``None`` when it has none."""
        average = ([], [], [])
        plane = ([], [], [])
        for index in range(system.getNumParticles()):
            if not system.isVirtualSite(index):
                continue
            site = system.getVirtualSite(index)
            n_parents = site.getNumParticles()
            parents = [site.getParticle(k) for k in range(n_parents)]
            if isinstance(site, openmm.OutOfPlaneSite):
                plane[0].append([index])
                plane[1].append(parents)
                plane[2].append([site.getWeight12(), site.getWeight13(), site.getWeightCross()])
            elif isinstance(site, (openmm.TwoParticleAverageSite, openmm.ThreeParticleAverageSite)):
                weights = [site.getWeight(k) for k in range(n_parents)]
                average[0].append([index])
                average[1].append(parents + [parents[0]] * (3 - n_parents))
                average[2].append(weights + [0.0] * (3 - n_parents))
            else:
                raise UnsupportedForceError(
                    f"particle {index} is a {type(site).__name__} virtual site, which TorchEnergy does not "
                    "place; supported: TwoParticleAverageSite, ThreeParticleAverageSite, OutOfPlaneSite "
                    "(use the OpenMM energy for this system)"
                )
        if not average[0] and not plane[0]:
            return None
        return cls(*average, *plane)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # Sites may depend on other sites only in chains OpenMM itself resolves in particle order;
        # rigid water models never do, and one pass suffices for them.
        positions = positions.clone()
        if len(self.average_sites):
            parents = positions[:, self.average_parents, :]  # [B, S, 3, 3]
            weights = self.average_weights.to(positions.dtype)
            positions[:, self.average_sites, :] = (weights.unsqueeze(-1) * parents).sum(-2)
        if len(self.plane_sites):
            r1 = positions[:, self.plane_parents[:, 0], :]
            r12 = positions[:, self.plane_parents[:, 1], :] - r1
            r13 = positions[:, self.plane_parents[:, 2], :] - r1
            w = self.plane_weights.to(positions.dtype)
            cross = torch.linalg.cross(r12, r13, dim=-1)
            positions[:, self.plane_sites, :] = r1 + w[:, 0:1] * r12 + w[:, 1:2] * r13 + w[:, 2:3] * cross
        return positions
