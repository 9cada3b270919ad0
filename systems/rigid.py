"""Rigid-molecule systems of the rigid-body-flow paper (Köhler, Invernizzi, de Haan, Noé 2023).

- :func:`tetrahedron_in_field`: one rigid methane-like tetrahedron (C + 4 H, C-H 0.109 nm) in a
  uniform external field, ``U = -sum_i q_i E y_i`` with ``E = 1e4 kJ/mol/(e nm)``, 100 K. Rigid in
  OpenMM MD: C, H1, H2 are real atoms held by three distance constraints (a triangle), H3 and H4
  are ``OutOfPlaneSite`` virtual sites of (C, H1, H2). (Constraining all 10 pairs, or 9
  independent ones, of five massive particles makes OpenMM 8's CCMA return NaN at the first step.)
  With a neutral molecule the energy depends on the
  orientation only, ``U(R) = -E (R d)_y`` with ``d = sum_i q_i b_i`` the body-frame dipole, so the
  orientational density is a von Mises-Fisher law of the dipole direction with concentration
  ``kappa = E |d| / kT``; :func:`tetrahedron_log_partition_function` gives its exact log Z.
- :func:`ice_xi_tip4pew_16`: 16 rigid TIP4P/Ew waters on the proton-ordered ice lattice of the
  paper in the orthorhombic box 0.89846 x 0.77808 x 0.73358 nm, built in code (no genice2
  needed); cutoff ``min(box)/2 - 1e-5 nm = 0.36678 nm`` (the "0.367 nm" of the paper: OpenMM
  allows at most half the box), no switching function, dispersion correction on, 100 K target
  (250 K base in the paper).

Proton order. The paper generated its structure with GenIce2 (``Lattice("XI")``, i.e. GenIce2's
lattice 11: 16 waters, 2a x b x c, every hydrogen bond direction fixed). That order is
antiferroelectric (zero net dipole); its molecule orientations match, one for one, the paper's
equilibrated N = 16 model (noegroup/rigid-flows, ``MDdata/ice/trajectories/model-iceXI_T100_N16.json``).
It is the default, ``proton_order="genice2"``, since the published free energies belong to it.
``proton_order="Cmc2_1"`` builds the ferroelectric ice XI of the crystallographic literature
(Hirsch & Ojamäe, J. Phys. Chem. B 108, 15856 (2004), structure 1: a = 0.449225, b = 0.778080,
c = 0.733581 nm, 2 x 1 x 1 cells, polarised along z = c) from its space group and positions.

Electrostatics. The paper's setup (noegroup/rigid-flows, ``WaterModel``) used PME with that
cutoff, and so does the default here (Ewald error tolerance 1e-4, as there). The alternative
``electrostatics="reaction_field"`` (``NonbondedForce.CutoffPeriodic``, OpenMM's default
dielectric 78.3) is what `boltzgen.energy.TorchEnergy` can compile, but it is NOT a usable ice
model in this box: the 0.367 nm cutoff keeps only the four hydrogen-bonded neighbours (the next
shell is at 0.449 nm), and in 100 K MD the lattice collapses (O RMSD 0.13 nm after 1 ps, 0.18 nm
after 10 ps, 2-8 neighbours within 0.33 nm, potential energy sliding from -49 to -55 kJ/mol per
molecule), while with PME it stays crystalline (O RMSD about 0.02 nm). Use the reaction-field
variant only for numerical checks of the energy code. With PME, ``MolecularSystem.energy()``
(backend "auto") falls back to `OpenMMEnergy`. The published reference dF(250 -> 100 K, N = 16)
= -669.711 kT belongs to the default system (``proton_order="genice2"``, PME).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from boltzgen.systems.molecular_system import MolecularSystem

# --------------------------------------------------------------------------------------------
# Tetrahedron in an external field
# --------------------------------------------------------------------------------------------

TETRAHEDRON_TEMPERATURE_K = 100.0
#: Field strength E in kJ/mol/(e nm) (METHODS.md §4).
TETRAHEDRON_FIELD = 1.0e4
#: C-H bond length in nm.
TETRAHEDRON_BOND_NM = 0.109
#: Partial charges (e) of C, H1, H2, H3, H4: methane's OPLS-AA C charge, one "polar" hydrogen.
#: Neutral, body-frame dipole 0.04 e x 0.109 nm along C->H1, so kappa = E |d| / kT = 52.4 at 100 K.
TETRAHEDRON_CHARGES = (-0.24, 0.09, 0.05, 0.05, 0.05)
#: Masses (amu) of C, H1, H2, H3, H4: H3 and H4 are massless virtual sites, their mass is on C so that
#: the total is methane's (masses change the dynamics, not the configurational distribution).
_TETRAHEDRON_MASSES = (12.011 + 2 * 1.008, 1.008, 1.008, 0.0, 0.0)
#: Unit vectors C -> H of a regular tetrahedron.
_TETRAHEDRAL_DIRECTIONS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(3.0)
#: Distance constraints of the real atoms C, H1, H2 (SETTLE-like triangle).
TETRAHEDRON_CONSTRAINTS = ((0, 1), (0, 2), (1, 2))


def tetrahedron_positions(bond: float = TETRAHEDRON_BOND_NM) -> np.ndarray:
    """``[5, 3]`` nm: C at the origin, the four H on the tetrahedral directions at ``bond`` nm."""
    return np.vstack([np.zeros((1, 3)), bond * _TETRAHEDRAL_DIRECTIONS]).astype(np.float64)


def tetrahedron_site_weights(positions: np.ndarray) -> np.ndarray:
    """OutOfPlaneSite weights ``[2, 3]`` ``(w12, w13, wcross)`` of H3 and H4 on (C, H1, H2).

    Solves ``r_H = r_C + w12 r_CH1 + w13 r_CH2 + wcross (r_CH1 x r_CH2)`` for ``positions`` ``[5, 3]``.
    """
    r12, r13 = positions[1] - positions[0], positions[2] - positions[0]
    basis = np.stack([r12, r13, np.cross(r12, r13)], axis=1)
    return np.linalg.solve(basis, (positions[3:5] - positions[0]).T).T


def _tetrahedron_topology():
    from openmm import app

    topology = app.Topology()
    residue = topology.addResidue("TET", topology.addChain())
    carbon = topology.addAtom("C", app.element.carbon, residue)
    for k in range(1, 5):
        topology.addBond(carbon, topology.addAtom(f"H{k}", app.element.hydrogen, residue))
    return topology


def _field_force(charges: Sequence[float], field: float):
    """``CustomExternalForce`` ``-q E y`` with per-particle charge ``q`` (e) and global ``E``."""
    import openmm

    force = openmm.CustomExternalForce("-q*E*y")
    force.addPerParticleParameter("q")
    force.addGlobalParameter("E", float(field))
    for index, charge in enumerate(charges):
        force.addParticle(index, [float(charge)])
    return force


def tetrahedron_in_field(
    temperature: float = TETRAHEDRON_TEMPERATURE_K,
    field: float = TETRAHEDRON_FIELD,
    charges: Sequence[float] = TETRAHEDRON_CHARGES,
) -> MolecularSystem:
    """A rigid methane-like tetrahedron in the field ``E`` along y (``U = -sum q_i E y_i``).

    Args:
        temperature: K (default 100).
        field: E in kJ/mol/(e nm) (default 1e4).
        charges: 5 partial charges (e) of C, H1..H4; they must sum to 0 (then U does not depend
            on the position, only on the orientation).

    The System has no bonded or nonbonded forces, only the field; C, H1, H2 are held by the
    constraints :data:`TETRAHEDRON_CONSTRAINTS` and H3, H4 are OutOfPlaneSites of (C, H1, H2)
    (:func:`tetrahedron_site_weights`), so OpenMM MD keeps the molecule rigid. Non-periodic.
    """
    import openmm

    charges = tuple(float(q) for q in charges)
    if len(charges) != 5:
        raise ValueError(f"charges must hold 5 values (C, H1..H4), got {len(charges)}")
    if abs(sum(charges)) > 1e-12:
        raise ValueError(f"charges must sum to 0 (a neutral molecule), got {sum(charges)!r}")
    positions = tetrahedron_positions()
    system = openmm.System()
    for mass in _TETRAHEDRON_MASSES:
        system.addParticle(mass)
    for i, j in TETRAHEDRON_CONSTRAINTS:
        system.addConstraint(i, j, float(np.linalg.norm(positions[i] - positions[j])))
    for site, weights in zip((3, 4), tetrahedron_site_weights(positions)):
        system.setVirtualSite(site, openmm.OutOfPlaneSite(0, 1, 2, *weights))
    system.addForce(_field_force(charges, field))
    return MolecularSystem(
        name="tetrahedron_in_field",
        description=(
            f"Rigid methane-like tetrahedron (C-H {TETRAHEDRON_BOND_NM} nm, charges {charges} e) in "
            f"an external field U = -sum q E y, E = {field:g} kJ/mol/(e nm), {temperature:g} K; "
            "H3, H4 virtual sites of the constrained C-H1-H2 triangle"
        ),
        openmm_system=system,
        topology=_tetrahedron_topology(),
        positions=positions,
        temperature=float(temperature),
        forcefield=(),
        friction_per_ps=1.0,
        options={"field": float(field), "charges": charges},
    )


def tetrahedron_dipole_concentration(
    temperature: float = TETRAHEDRON_TEMPERATURE_K,
    field: float = TETRAHEDRON_FIELD,
    charges: Sequence[float] = TETRAHEDRON_CHARGES,
) -> float:
    """``kappa = E |d| / kT`` (dimensionless), ``d = sum_i q_i b_i`` the dipole in e nm."""
    from boltzgen.units import kt_kj_per_mol

    dipole = np.asarray(charges, dtype=np.float64) @ tetrahedron_positions()
    return float(field) * float(np.linalg.norm(dipole)) / kt_kj_per_mol(temperature)


def tetrahedron_log_partition_function(
    temperature: float = TETRAHEDRON_TEMPERATURE_K,
    field: float = TETRAHEDRON_FIELD,
    charges: Sequence[float] = TETRAHEDRON_CHARGES,
) -> float:
    """Exact ``log Z = log int_SO(3) exp(-u(R)) dR`` over orientations, Haar measure of volume 8 pi^2.

    Under Haar the dipole direction ``R d / |d|`` is uniform on S^2, so
    ``Z = 8 pi^2 sinh(kappa) / kappa``. The same integral over unit quaternions with the S^3
    surface measure (what a flow on S^3 estimates) is ``Z / 4``: see
    `boltzgen.rigid.log_volume_constant`.
    """
    kappa = tetrahedron_dipole_concentration(temperature, field, charges)
    if kappa == 0.0:
        return math.log(8 * math.pi**2)
    # log(sinh k / k) = k + log1p(-exp(-2k)) - log(2k), stable for large k
    return math.log(8 * math.pi**2) + kappa + math.log1p(-math.exp(-2 * kappa)) - math.log(2 * kappa)


# --------------------------------------------------------------------------------------------
# Ice XI, TIP4P/Ew, 16 molecules
# --------------------------------------------------------------------------------------------

ICE_TEMPERATURE_K = 100.0
ICE_BASE_TEMPERATURE_K = 250.0
#: Orthorhombic cell of ice XI (nm), Hirsch & Ojamäe, J. Phys. Chem. B 108, 15856 (2004), Table 1.
CMC21_CELL_NM = (0.449225, 0.778080, 0.733581)
#: Box of the Cmc2_1 structure: 2 x 1 x 1 cells (nm).
CMC21_BOX_NM = (2 * CMC21_CELL_NM[0], CMC21_CELL_NM[1], CMC21_CELL_NM[2])
#: Box of GenIce2's lattice 11 and of the paper (nm).
GENICE_BOX_NM = (0.89846, 0.77808, 0.73358)

#: Cmc2_1 (No. 36): the general-position operations and the C-centring translation.
_CMC21_OPERATIONS = (
    lambda x, y, z: (x, y, z),
    lambda x, y, z: (-x, -y, z + 0.5),
    lambda x, y, z: (x, -y, z + 0.5),
    lambda x, y, z: (-x, y, z),
)
_C_CENTRING = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.0))
#: Asymmetric unit of ferroelectric ice XI (Hirsch & Ojamäe 2004, structure 1, fractional).
_CMC21_OXYGENS = ((0.0, 1.0 / 3.0, 0.5625), (0.5, 1.0 / 6.0, 0.4375))
_CMC21_HYDROGENS = ((0.0, 0.4510, 0.5244), (0.0, 0.3386, 0.6929), (0.6685, 0.2282, 0.4836))

#: GenIce2's lattice "11" / "XI" (16 waters in the same 2a x b x c box, fractional), an
#: antiferroelectric proton order (zero net dipole), the one genice2 produced for the paper.
_GENICE_OXYGENS = tuple(
    (x, y, z)
    for x in (0.25, 0.75)
    for y, z in ((0.0, 0.125), (1 / 3, 0.0), (0.0, 0.5), (1 / 3, 0.625))
) + tuple(
    (x, y, z)
    for x in (0.0, 0.5)
    for y, z in ((0.5, 0.125), (5 / 6, 0.0), (0.5, 0.5), (5 / 6, 0.625))
)
#: Its hydrogen bonds as directed pairs (donor, acceptor), GenIce2's ``fixed`` edges.
_GENICE_DONATIONS = (
    (0, 1), (0, 13), (1, 3), (1, 12), (2, 11), (2, 0), (3, 2), (3, 10),
    (4, 5), (4, 9), (5, 8), (5, 7), (6, 15), (6, 4), (7, 6), (7, 14),
    (8, 1), (8, 10), (9, 8), (9, 0), (10, 11), (10, 7), (11, 6), (11, 9),
    (12, 5), (12, 14), (13, 12), (13, 4), (14, 15), (14, 3), (15, 2), (15, 13),
)
PROTON_ORDERS = ("Cmc2_1", "genice2")
ELECTROSTATICS = ("PME", "Ewald", "reaction_field")
#: Ewald error tolerance of the PME variant (the paper's value; OpenMM's default is 5e-4).
ICE_EWALD_TOLERANCE = 1e-4


def ice_cutoff_nm(box: Sequence[float]) -> float:
    """Nonbonded cutoff (nm): half the shortest box edge less 1e-5 nm, as in the paper (OpenMM
    refuses a cutoff above half the box)."""
    return 0.5 * min(box) - 1e-5


def _unique_fractional(points: list[tuple[float, float, float]], tol: float = 1e-6) -> np.ndarray:
    """Points wrapped into [0, 1)^3 with duplicates (modulo lattice vectors) removed: ``[M, 3]``."""
    unique: list[np.ndarray] = []
    for point in points:
        p = np.mod(np.asarray(point, dtype=np.float64), 1.0)
        if not any(np.all(np.abs((p - q + 0.5) % 1.0 - 0.5) < tol) for q in unique):
            unique.append(p)
    return np.array(unique)


def _expand_cmc21(asymmetric: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """All symmetry-equivalent positions in one cell, fractional ``[M, 3]``."""
    points = [
        tuple(np.add(op(*site), shift))
        for site in asymmetric for op in _CMC21_OPERATIONS for shift in _C_CENTRING
    ]
    return _unique_fractional(points)


def _minimum_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    return d - np.round(d / box) * box


def _cmc21_oxygens_and_donations() -> tuple[np.ndarray, np.ndarray]:
    """Ferroelectric ice XI in the 2 x 1 x 1 box: O positions ``[16, 3]`` nm, donations ``[32, 2]``.

    Each crystallographic H belongs to its nearest O (the donor) and points at the nearest other
    O (the acceptor).
    """
    cell, box = np.array(CMC21_CELL_NM), np.array(CMC21_BOX_NM)
    replicas = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0)]
    oxygens = np.concatenate([(_expand_cmc21(_CMC21_OXYGENS) + r) * cell for r in replicas])
    hydrogens = np.concatenate([(_expand_cmc21(_CMC21_HYDROGENS) + r) * cell for r in replicas])
    distances = np.linalg.norm(_minimum_image(hydrogens[:, None] - oxygens[None], box), axis=-1)
    nearest = np.argsort(distances, axis=1)
    return oxygens, nearest[:, :2].astype(np.int64)


def _genice_oxygens_and_donations() -> tuple[np.ndarray, np.ndarray]:
    return np.array(_GENICE_OXYGENS) * np.array(GENICE_BOX_NM), np.array(_GENICE_DONATIONS, dtype=np.int64)


def ice_xi_lattice(proton_order: str = "genice2") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oxygen positions ``[16, 3]`` nm, hydrogen bonds ``[32, 2]`` and the box edges ``[3]`` nm.

    Row ``(i, j)`` of the second array: molecule ``i`` donates a hydrogen to molecule ``j``.
    ``proton_order``: ``"genice2"`` (GenIce2's lattice 11, antiferroelectric, the paper's) or
    ``"Cmc2_1"`` (ferroelectric ice XI, polarised along z = c).
    """
    if proton_order == "Cmc2_1":
        return (*_cmc21_oxygens_and_donations(), np.array(CMC21_BOX_NM))
    if proton_order == "genice2":
        return (*_genice_oxygens_and_donations(), np.array(GENICE_BOX_NM))
    raise ValueError(f"proton_order must be one of {PROTON_ORDERS}, got {proton_order!r}")


def place_waters(
    oxygens: np.ndarray, donations: np.ndarray, box: np.ndarray, r_oh: float, r_hh: float
) -> np.ndarray:
    """Rigid waters on an ice lattice: ``[K, 3, 3]`` nm positions of O, H1, H2 per molecule.

    Molecule ``i``'s hydrogens lie in the plane of its two donated bonds ``u1``, ``u2`` (unit
    vectors O -> acceptor O, minimum image), symmetric about their bisector, with O-H ``r_oh`` and
    H-H ``r_hh`` (nm); H1 on the side of the first donation.
    """
    half_angle = math.asin(0.5 * r_hh / r_oh)
    waters = np.empty((len(oxygens), 3, 3))
    for i, oxygen in enumerate(oxygens):
        acceptors = donations[donations[:, 0] == i, 1]
        if len(acceptors) != 2:
            raise ValueError(f"molecule {i} donates {len(acceptors)} hydrogens, not 2")
        u = _minimum_image(oxygens[acceptors] - oxygen, box)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        bisector = (u[0] + u[1]) / np.linalg.norm(u[0] + u[1])
        across = (u[0] - u[1]) / np.linalg.norm(u[0] - u[1])
        along = r_oh * math.cos(half_angle) * bisector
        sideways = r_oh * math.sin(half_angle) * across
        waters[i] = [oxygen, oxygen + along + sideways, oxygen + along - sideways]
    return waters


def _water_topology(n_waters: int, box: Sequence[float]):
    """Topology of ``n_waters`` HOH residues (O, H1, H2) with the periodic box (nm)."""
    import openmm
    from openmm import app, unit

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(n_waters):
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    vectors = [openmm.Vec3(*(float(box[k]) if j == k else 0.0 for j in range(3))) for k in range(3)]
    topology.setPeriodicBoxVectors(unit.Quantity(vectors, unit.nanometer))
    return topology


def _rigid_water_lengths(system) -> tuple[float, float]:
    """(O-H, H-H) constraint lengths (nm) of the first water of a rigid-water System."""
    from openmm import unit

    lengths = {}
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        if max(i, j) < 3:
            lengths[(min(i, j), max(i, j))] = length.value_in_unit(unit.nanometer)
    return lengths[(0, 1)], lengths[(1, 2)]


def _with_virtual_sites(system, positions: np.ndarray) -> np.ndarray:
    """``positions`` ``[N, 3]`` with the virtual sites recomputed by OpenMM (Reference platform)."""
    import openmm
    from openmm import unit

    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions * unit.nanometer)
    context.computeVirtualSites()
    state = context.getState(getPositions=True)
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)


def ice_xi_tip4pew_16(
    proton_order: str = "genice2", electrostatics: str = "PME", temperature: float = ICE_TEMPERATURE_K
) -> MolecularSystem:
    """16 rigid TIP4P/Ew waters in proton-ordered ice XI (see the module docstring).

    Args:
        proton_order: ``"genice2"`` (default: the paper's antiferroelectric order, GenIce2's
            lattice 11) or ``"Cmc2_1"`` (ferroelectric ice XI, Hirsch & Ojamäe 2004 structure 1).
        electrostatics: ``"PME"`` (default, as the paper), ``"Ewald"`` (the exact lattice sum that
            PME approximates, same cutoff and error tolerance; compiles to `TorchEnergy`, which then
            matches OpenMM to rounding) or ``"reaction_field"`` (``CutoffPeriodic``; compiles to
            `TorchEnergy` but does not keep the crystal stable).
        temperature: K (default 100, the paper's target; its base temperature was 250 K).

    Particles per molecule in OpenMM order: O, H1, H2, M (M a ThreeParticleAverageSite). The
    structure is the ideal lattice with exactly rigid TIP4P/Ew waters (no minimisation); rigid
    water by OpenMM constraints (SETTLE in MD).
    """
    from openmm import app, unit

    if electrostatics not in ELECTROSTATICS:
        raise ValueError(f"electrostatics must be one of {ELECTROSTATICS}, got {electrostatics!r}")
    oxygens, donations, box = ice_xi_lattice(proton_order)
    cutoff = ice_cutoff_nm(box)
    forcefield = app.ForceField("tip4pew.xml")
    modeller = app.Modeller(_water_topology(len(oxygens), box), np.zeros((3 * len(oxygens), 3)) * unit.nanometer)
    modeller.addExtraParticles(forcefield)
    method = {"PME": app.PME, "Ewald": app.Ewald, "reaction_field": app.CutoffPeriodic}[electrostatics]
    system = forcefield.createSystem(
        modeller.topology, nonbondedMethod=method, nonbondedCutoff=cutoff * unit.nanometer,
        constraints=None, rigidWater=True, removeCMMotion=True,
    )
    nonbonded = next(f for f in system.getForces() if type(f).__name__ == "NonbondedForce")
    nonbonded.setUseSwitchingFunction(False)
    nonbonded.setUseDispersionCorrection(True)
    if electrostatics in ("PME", "Ewald"):
        nonbonded.setEwaldErrorTolerance(ICE_EWALD_TOLERANCE)
    waters = place_waters(oxygens, donations, box, *_rigid_water_lengths(system))
    positions = np.zeros((4 * len(oxygens), 3))
    positions.reshape(len(oxygens), 4, 3)[:, :3] = waters
    positions = _with_virtual_sites(system, positions)
    coulomb = {"PME": "PME", "Ewald": "Ewald", "reaction_field": "CutoffPeriodic reaction field"}[electrostatics]
    return MolecularSystem(
        name="ice_xi_tip4pew_16",
        description=(
            f"Ice XI ({proton_order} proton order), 16 rigid TIP4P/Ew waters, box "
            f"{box[0]:.6g} x {box[1]:.6g} x {box[2]:.6g} nm, {coulomb}, cutoff "
            f"{cutoff:.5f} nm, dispersion correction, {temperature:g} K "
            f"(base {ICE_BASE_TEMPERATURE_K:g} K)"
        ),
        openmm_system=system,
        topology=modeller.topology,
        positions=positions,
        temperature=float(temperature),
        forcefield=("tip4pew.xml",),
        friction_per_ps=1.0,
        options={"proton_order": proton_order, "electrostatics": electrostatics,
                 "cutoff_nm": cutoff, "base_temperature": ICE_BASE_TEMPERATURE_K},
    )
