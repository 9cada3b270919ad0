"""The periodic harmonic torsion restraint of umbrella sampling, and the backbone torsions it acts on.

The bias of a window centred at ``theta0`` with force constant ``k`` (kJ/mol/rad^2) is

    b(theta) = 0.5 * k * d^2,   d = wrap(theta - theta0) in [-pi, pi),

i.e. a harmonic well on the circle. Its value is continuous everywhere (d^2 is the same at
d = -pi and d = +pi); only its force flips sign at the antipode of the centre, which a window
never samples. OpenMM evaluates it with a `CustomTorsionForce` whose centre
and force constant are *global* parameters, so one Context can move the centre (steered
seeding) without being rebuilt; numpy evaluates the same formula for MBAR (:func:`bias_kj_mol`).

A 2-D umbrella window restrains psi too: its bias is the sum of two such terms,
``b(phi, psi) = 0.5 k_phi wrap(phi - phi0)^2 + 0.5 k_psi wrap(psi - psi0)^2``, evaluated by a second
`CustomTorsionForce` with its own global parameters (``PSI_CENTER_PARAMETER``,
``PSI_FORCE_CONSTANT_PARAMETER``) in the same force group, and by :func:`window_bias_kj_mol`.
"""

from __future__ import annotations

import math

import numpy as np

#: Names of the CustomTorsionForce's global parameters (centre in rad, force constant in kJ/mol/rad^2).
CENTER_PARAMETER = "umbrella_theta0"
FORCE_CONSTANT_PARAMETER = "umbrella_k"
#: The same for the psi restraint of 2-D windows (and of the steering of starting structures).
PSI_CENTER_PARAMETER = "psi_theta0"
PSI_FORCE_CONSTANT_PARAMETER = "psi_k"

#: OpenMM energy expression of the restraint (``theta`` is the torsion angle in radians).
ENERGY_EXPRESSION = (
    f"0.5*{FORCE_CONSTANT_PARAMETER}*d^2; "
    "d = dtheta - 6.283185307179586*floor((dtheta + 3.141592653589793)/6.283185307179586); "
    f"dtheta = theta - {CENTER_PARAMETER}"
)


def wrap_angle(angle) -> np.ndarray:
    """Angles (rad) mapped onto ``[-pi, pi)``."""
    angle = np.asarray(angle, dtype=np.float64)
    return angle - 2.0 * np.pi * np.floor((angle + np.pi) / (2.0 * np.pi))


def bias_kj_mol(theta, centers, force_constant: float) -> np.ndarray:
    """Restraint energy ``0.5 k wrap(theta - centre)^2`` in kJ/mol.

    ``theta`` and ``centers`` broadcast against each other (e.g. ``theta[None, :]`` against
    ``centers[:, None]`` gives the ``[K, N]`` bias of N samples in K windows).
    """
    d = wrap_angle(np.asarray(theta, dtype=np.float64) - np.asarray(centers, dtype=np.float64))
    return 0.5 * float(force_constant) * d * d


def window_bias_kj_mol(phi, psi, phi_centers, psi_centers, force_constant: float, psi_force_constant: float) -> np.ndarray:
    """Bias of 2-D windows: ``bias_kj_mol(phi, phi_centers, k) + bias_kj_mol(psi, psi_centers, k_psi)``.

    With ``psi_force_constant == 0`` (psi free) the psi term vanishes and ``psi`` may be None.
    All arguments broadcast as in :func:`bias_kj_mol`.
    """
    bias = bias_kj_mol(phi, phi_centers, force_constant)
    if psi_force_constant:
        bias = bias + bias_kj_mol(psi, psi_centers, psi_force_constant)
    return bias


def restraint_width(force_constant: float, kt_kj_mol: float) -> float:
    """The thermal width ``sqrt(kT / k)`` (rad) of the harmonic restraint alone."""
    return math.sqrt(kt_kj_mol / force_constant)


def torsion_restraint(atoms, center_rad: float, force_constant: float, force_group: int, *, psi: bool = False):
    """A `CustomTorsionForce` restraining the torsion of ``atoms`` (4 indices) to ``center_rad``.

    ``psi=True`` names its global parameters ``PSI_CENTER_PARAMETER`` / ``PSI_FORCE_CONSTANT_PARAMETER``,
    so that it can sit beside the phi restraint in one Context.
    """
    import openmm

    center_name, k_name = (PSI_CENTER_PARAMETER, PSI_FORCE_CONSTANT_PARAMETER) if psi else (
        CENTER_PARAMETER, FORCE_CONSTANT_PARAMETER
    )
    force = openmm.CustomTorsionForce(
        ENERGY_EXPRESSION.replace(CENTER_PARAMETER, center_name).replace(FORCE_CONSTANT_PARAMETER, k_name)
    )
    force.addGlobalParameter(center_name, float(center_rad))
    force.addGlobalParameter(k_name, float(force_constant))
    force.addTorsion(*(int(a) for a in atoms), [])
    force.setForceGroup(int(force_group))
    force.setName("UmbrellaPsiRestraint" if psi else "UmbrellaTorsionRestraint")
    return force


def free_force_group(openmm_system) -> int:
    """A force group (0..31) that no force of ``openmm_system`` uses (the highest one)."""
    used = {openmm_system.getForce(i).getForceGroup() for i in range(openmm_system.getNumForces())}
    for group in range(31, -1, -1):
        if group not in used:
            return group
    raise ValueError("every OpenMM force group (0-31) is in use; cannot add the umbrella restraint")


def backbone_torsions(mdtraj_topology) -> dict[str, np.ndarray]:
    """Atom indices ``[4]`` of the backbone phi (C-N-CA-C) and, if present, psi (N-CA-C-N).

    Raises ValueError unless the molecule has exactly one backbone phi: a 1-D umbrella along phi
    needs to know which one. ``psi`` is absent from the result when the molecule has none.
    """
    import mdtraj

    frame = mdtraj.Trajectory(np.zeros((1, mdtraj_topology.n_atoms, 3), dtype=np.float32), mdtraj_topology)
    phi_atoms, _ = mdtraj.compute_phi(frame)
    psi_atoms, _ = mdtraj.compute_psi(frame)
    if len(phi_atoms) != 1:
        raise ValueError(
            f"umbrella sampling along phi needs a molecule with exactly one backbone phi (C-N-CA-C); "
            f"this one has {len(phi_atoms)}"
        )
    torsions = {"phi": np.asarray(phi_atoms[0], dtype=np.int64)}
    if len(psi_atoms):
        torsions["psi"] = np.asarray(psi_atoms[0], dtype=np.int64)
    return torsions


def dihedrals(positions_nm, atoms) -> np.ndarray:
    """Dihedral angles (rad, in ``(-pi, pi]``, IUPAC sign as mdtraj/OpenMM) of ``atoms`` (4 indices)
    in ``positions_nm`` ``[..., N, 3]``; returns the leading shape."""
    x = np.asarray(positions_nm, dtype=np.float64)
    p0, p1, p2, p3 = (x[..., int(a), :] for a in atoms)
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n12 = np.cross(b1, b2)
    n23 = np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n23, axis=-1)
    return np.arctan2(y, np.sum(n12 * n23, axis=-1))
