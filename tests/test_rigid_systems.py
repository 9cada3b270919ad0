"""Rigid-body representation (boltzgen.rigid) and the rigid systems: tetrahedron in a field, ice XI."""

from __future__ import annotations

import functools
import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.energy import OpenMMEnergy, TorchEnergy
from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.rigid import RigidBodySystem, log_volume_constant
from boltzgen.systems.molecular_system import MolecularSystem
from boltzgen.systems.rigid import (
    PROTON_ORDERS,
    ice_xi_lattice,
    tetrahedron_dipole_concentration,
    tetrahedron_in_field,
    tetrahedron_log_partition_function,
)
from boltzgen.units import kt_kj_per_mol

F64 = torch.float64


@functools.lru_cache(maxsize=None)
def ice(proton_order: str = "genice2", electrostatics: str = "PME") -> MolecularSystem:
    return systems.load("ice_xi_tip4pew_16", proton_order=proton_order, electrostatics=electrostatics)


@functools.lru_cache(maxsize=None)
def tetrahedron() -> MolecularSystem:
    return systems.load("tetrahedron_in_field")


def rigid(system: MolecularSystem) -> RigidBodySystem:
    return RigidBodySystem.from_molecular_system(system)


def openmm_energy(system: MolecularSystem) -> OpenMMEnergy:
    return OpenMMEnergy(system.openmm_system, system.temperature, "Reference", n_workers=1, parallel="serial")


def md_frames(system: MolecularSystem, n_frames: int, steps_between: int, seed: int = 1) -> np.ndarray:
    """``[n_frames, N, 3]`` nm: Langevin MD at the system's temperature (2 fs, tight constraints, Reference)."""
    integrator = openmm.LangevinMiddleIntegrator(system.temperature * unit.kelvin, 1 / unit.picosecond,
                                                 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed)
    integrator.setConstraintTolerance(1e-10)
    context = openmm.Context(system.openmm_system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(system.positions * unit.nanometer)
    context.setVelocitiesToTemperature(system.temperature * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integrator.step(steps_between)
        context.computeVirtualSites()  # the last step leaves them 1e-9 nm off their parents
        state = context.getState(getPositions=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def ice_md(n_frames: int = 5, steps_between: int = 100) -> np.ndarray:
    return md_frames(ice(), n_frames, steps_between)


@functools.lru_cache(maxsize=None)
def tetrahedron_md() -> np.ndarray:
    return md_frames(tetrahedron(), 5, 200)


def flat(frames: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(frames.reshape(len(frames), -1))


def random_quaternions(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, k, 4, generator=generator, dtype=F64)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def torus_distance(a: torch.Tensor, b: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    d = a - b
    return (d - torch.round(d / box) * box).abs()


# ------------------------------------------------------------------ registry and builders


def test_available_lists_and_load_builds_both_rigid_systems():
    assert {"tetrahedron_in_field", "ice_xi_tip4pew_16"} <= set(systems.available())
    tet, water = tetrahedron(), ice()
    assert isinstance(tet, MolecularSystem) and isinstance(water, MolecularSystem)
    assert tet.n_atoms == 5 and tet.temperature == 100.0 and not tet.openmm_system.usesPeriodicBoundaryConditions()
    assert tet.openmm_system.getNumConstraints() == 3
    assert [tet.openmm_system.isVirtualSite(i) for i in range(5)] == [False, False, False, True, True]
    assert water.n_atoms == 64 and water.temperature == 100.0
    assert [a.name for a in list(water.topology.residues())[0].atoms()] == ["O", "H1", "H2", "M"]
    assert sum(water.openmm_system.isVirtualSite(i) for i in range(64)) == 16
    assert water.openmm_system.getNumConstraints() == 48  # rigid water: O-H1, O-H2, H1-H2
    nonbonded = next(f for f in water.openmm_system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.PME
    assert nonbonded.getCutoffDistance().value_in_unit(unit.nanometer) == pytest.approx(0.36678, abs=1e-9)
    box = [v.value_in_unit(unit.nanometer) for v in water.openmm_system.getDefaultPeriodicBoxVectors()]
    np.testing.assert_allclose(np.diag(np.array([list(v) for v in box])), [0.89846, 0.77808, 0.73358])
    rf = ice(electrostatics="reaction_field")
    nonbonded = next(f for f in rf.openmm_system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.CutoffPeriodic


@pytest.mark.parametrize("proton_order", PROTON_ORDERS)
def test_ice_lattice_obeys_the_ice_rules_and_its_polarisation(proton_order):
    oxygens, donations, box = ice_xi_lattice(proton_order)
    d = oxygens[:, None] - oxygens[None]
    d -= np.round(d / box) * box
    r = np.linalg.norm(d, axis=-1) + 10 * np.eye(16)
    neighbours = {(i, j) for i, j in zip(*np.nonzero(r < 0.3))}
    assert len(neighbours) == 64 and np.allclose(r[r < 0.3], 0.2751, atol=2e-3)  # 4 per molecule
    bonds = [tuple(b) for b in donations.tolist()]
    assert len(set(bonds)) == 32
    assert {(min(b), max(b)) for b in bonds} == {(i, j) for i, j in neighbours if i < j}  # one H per bond
    assert np.all(np.bincount(donations[:, 0], minlength=16) == 2)
    assert np.all(np.bincount(donations[:, 1], minlength=16) == 2)
    water = ice(proton_order).positions.reshape(16, 4, 3)
    dipole = ((water[:, 1] + water[:, 2]) / 2 - water[:, 0]).sum(0)
    if proton_order == "Cmc2_1":
        assert abs(dipole[0]) < 1e-9 and abs(dipole[1]) < 1e-9 and dipole[2] > 0.5  # polar along c
    else:
        assert np.abs(dipole).max() < 1e-9  # antiferroelectric


@pytest.mark.parametrize("proton_order", PROTON_ORDERS)
def test_ice_energy_per_molecule_is_a_lattice_energy(proton_order):
    water = ice(proton_order)
    u = openmm_energy(water).energy(flat(water.positions[None]))
    per_molecule = float(u) * kt_kj_per_mol(water.temperature) / 16
    print(f"ice {proton_order} PME: {per_molecule:.3f} kJ/mol per molecule")
    assert -66.0 < per_molecule < -56.0  # TIP4P/Ew ice near 0 K with PME: about -61 kJ/mol
    rf = ice(proton_order, "reaction_field")
    u_rf = openmm_energy(rf).energy(flat(rf.positions[None]))
    assert float(u_rf) * kt_kj_per_mol(rf.temperature) / 16 < -40.0


def test_ice_md_stays_crystalline():
    water = ice()
    frames = ice_md()
    box = np.array([0.89846, 0.77808, 0.73358])
    displacement = frames[-1, ::4] - water.positions[::4]  # O atoms after 1 ps
    displacement -= np.round(displacement / box) * box
    displacement -= displacement.mean(0)
    rmsd = float(np.sqrt((displacement**2).sum(1).mean()))
    assert rmsd < 0.05, rmsd
    oxygens = frames[-1, ::4]
    d = oxygens[:, None] - oxygens[None]
    d -= np.round(d / box) * box
    r = np.linalg.norm(d, axis=-1) + 10 * np.eye(16)
    assert np.all((r < 0.32).sum(1) == 4)  # four hydrogen-bonded neighbours each


# ------------------------------------------------------------------ rigid representation


def test_templates_body_frames_and_virtual_site_weights():
    water = rigid(ice())
    body = water.template.body_positions
    np.testing.assert_allclose(body[0], 0.0, atol=1e-15)
    assert np.linalg.norm(body[1]) == pytest.approx(0.09572, abs=1e-12)
    assert body[1, 0] > 0 and body[1, 0] == pytest.approx(body[2, 0]) and body[1, 1] == pytest.approx(-body[2, 1])
    np.testing.assert_allclose(body[:, 2], 0.0, atol=1e-15)  # molecule in the e1-e2 plane
    (rule,) = water.template.virtual_sites
    assert rule.kind == "average" and rule.parents == (0, 1, 2)
    np.testing.assert_allclose(rule.weights, (0.786646558, 0.106676721, 0.106676721))
    np.testing.assert_allclose(body[3], [0.0125, 0.0, 0.0], atol=1e-12)  # TIP4P/Ew O-M 0.0125 nm
    tet = rigid(tetrahedron())
    assert [rule.kind for rule in tet.template.virtual_sites] == ["out_of_plane"] * 2 and tet.box is None
    body = tet.template.body_positions
    np.testing.assert_allclose(np.linalg.norm(body[1:], axis=1), 0.109, atol=1e-12)
    h = body[1:] / 0.109
    np.testing.assert_allclose(h @ h.T, np.where(np.eye(4) > 0, 1.0, -1.0 / 3.0), atol=1e-12)  # tetrahedral


def test_opposite_quaternions_give_the_same_configuration():
    generator = torch.Generator().manual_seed(0)
    for system in (rigid(ice()), rigid(tetrahedron())):
        k = system.n_molecules
        q = random_quaternions(4, k, generator)
        p = torch.rand(4, k, 3, generator=generator, dtype=F64)
        x = system.to_cartesian(p, q)
        torch.testing.assert_close(system.to_cartesian(p, -q), x, rtol=0, atol=1e-14)
        flips = torch.where(torch.rand(4, k, 1, generator=generator) < 0.5, -1.0, 1.0).to(F64)
        torch.testing.assert_close(system.to_cartesian(p, flips * q), x, rtol=0, atol=1e-14)


def test_data_quaternions_get_random_signs_unless_canonical():
    system = rigid(ice())
    x = flat(ice_md())
    canonical = system.from_cartesian(x, random_sign=False).quaternions
    assert bool((canonical[..., 0] >= 0).all())
    signed = system.from_cartesian(x, generator=torch.Generator().manual_seed(3)).quaternions
    ratio = (signed * canonical).sum(-1)  # +1 or -1 per quaternion
    torch.testing.assert_close(ratio.abs(), torch.ones_like(ratio))
    assert 0.2 < float((ratio < 0).double().mean()) < 0.8


@pytest.mark.parametrize("which", ["ice", "tetrahedron"])
def test_cartesian_rigid_cartesian_round_trip_on_md_frames(which):
    system, frames = (rigid(ice()), ice_md()) if which == "ice" else (rigid(tetrahedron()), tetrahedron_md())
    x = flat(frames)
    assert float(system.rigidity_rmsd(x).max()) < 1e-8
    coordinates = system.from_cartesian(x)
    torch.testing.assert_close(torch.linalg.vector_norm(coordinates.quaternions, dim=-1),
                               torch.ones(x.shape[0], system.n_molecules, dtype=F64))
    assert bool((coordinates.positions[:, 0] == 0).all())
    back = system.to_cartesian(*coordinates)
    if system.periodic:  # MD positions are not wrapped: compare molecule by molecule modulo the box
        box = system.box.repeat(system.n_particles)
        assert float(torus_distance(back, x, box).max()) < 1e-6
    else:
        assert float((back - x).abs().max()) < 1e-6
    again = system.from_cartesian(back, random_sign=False)
    torch.testing.assert_close(again.positions, system.from_cartesian(x, random_sign=False).positions,
                               rtol=0, atol=1e-10)


def test_rigid_cartesian_rigid_round_trip_on_random_coordinates():
    generator = torch.Generator().manual_seed(1)
    system = rigid(ice())
    q = random_quaternions(8, 16, generator)
    p = torch.rand(8, 16, 3, generator=generator, dtype=F64) * system.box
    p[:, 0] = 0.0
    coordinates = system.from_cartesian(system.to_cartesian(p, q), random_sign=False)
    assert float(torus_distance(coordinates.positions, p, system.box).max()) < 1e-12
    alignment = (coordinates.quaternions * q).sum(-1).abs()
    torch.testing.assert_close(alignment, torch.ones_like(alignment))
    # the K - 1 free positions alone give the same configuration
    torch.testing.assert_close(system.to_cartesian(p[:, 1:], q), system.to_cartesian(p, q))


def test_virtual_sites_are_placed_as_openmm_places_them():
    water = ice()
    system = rigid(water)
    generator = torch.Generator().manual_seed(2)
    x = system.to_cartesian(torch.rand(3, 16, 3, generator=generator, dtype=F64) * system.box,
                            random_quaternions(3, 16, generator))
    context = openmm.Context(water.openmm_system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    for row in x.reshape(3, 64, 3).numpy():
        garbage = row.copy()
        garbage[3::4] += 0.3  # OpenMM must overwrite the M sites
        context.setPositions(garbage * unit.nanometer)
        context.computeVirtualSites()
        placed = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        np.testing.assert_allclose(placed, row, rtol=0, atol=1e-12)
    # and from_cartesian ignores the input M coordinates
    moved = x.clone().reshape(3, 64, 3)
    moved[:, 3::4] += 0.2
    torch.testing.assert_close(system.from_cartesian(moved.reshape(3, -1), random_sign=False).quaternions,
                               system.from_cartesian(x, random_sign=False).quaternions)


@pytest.mark.parametrize("which", ["ice", "tetrahedron"])
def test_energies_are_unchanged_by_the_rigid_round_trip(which):
    molecular, frames = (ice(), ice_md()) if which == "ice" else (tetrahedron(), tetrahedron_md())
    system = rigid(molecular)
    x = flat(frames)
    coordinates = system.from_cartesian(x)
    energy = openmm_energy(molecular)
    rigid_x = system.to_cartesian(*coordinates)
    # OpenMM's constrained frames are rigid to ~4e-9 nm (SETTLE), which moves energies by ~1e-6 kT
    torch.testing.assert_close(energy.energy(rigid_x), energy.energy(x), rtol=1e-7, atol=1e-5)
    # exactly rigid frames come back with the same energy to rounding
    reference = energy.energy(rigid_x)
    again = system.from_cartesian(rigid_x)
    torch.testing.assert_close(energy.energy(system.to_cartesian(*again)), reference, rtol=1e-11, atol=1e-9)
    if not system.periodic:  # molecule 0 at the origin: the field energy of a neutral molecule is the same
        torch.testing.assert_close(energy.energy(system.to_cartesian(again.positions, again.quaternions)),
                                   reference, rtol=1e-11, atol=1e-9)


def test_shifting_molecules_by_box_vectors_or_the_system_leaves_rigid_coordinates_unchanged():
    system = rigid(ice())
    x = flat(ice_md())
    reference = system.from_cartesian(x, random_sign=False)
    moved = x.clone().reshape(x.shape[0], 64, 3)
    box = system.box
    moved[:, 8:12] += box * torch.tensor([1.0, -2.0, 0.0], dtype=F64)  # molecule 2, whole
    moved[:, 21] -= box * torch.tensor([0.0, 0.0, 1.0], dtype=F64)  # one H of molecule 5: broken molecule
    moved[:, 0:4] += box * torch.tensor([0.0, 1.0, 1.0], dtype=F64)  # molecule 0
    shifted = system.from_cartesian(moved.reshape(x.shape[0], -1), random_sign=False)
    assert float(torus_distance(shifted.positions, reference.positions, box).max()) < 1e-12
    torch.testing.assert_close(shifted.quaternions, reference.quaternions, rtol=0, atol=1e-12)
    assert bool(((shifted.positions >= 0) & (shifted.positions < box)).all())
    # a global translation changes the origin only
    translated = system.from_cartesian(x + torch.tensor([0.31, -0.17, 0.52], dtype=F64).repeat(64), random_sign=False)
    assert float(torus_distance(translated.positions, reference.positions, box).max()) < 1e-12
    torch.testing.assert_close(translated.quaternions, reference.quaternions, rtol=0, atol=1e-12)


def test_rigidity_rmsd_detects_a_deformed_molecule():
    system = rigid(ice())
    x = flat(ice().positions[None]).clone()
    assert float(system.rigidity_rmsd(x)) < 1e-12
    x[0, 3 * 5 + 1] += 0.01  # stretch an O-H bond of molecule 1 by ~0.01 nm
    assert float(system.rigidity_rmsd(x)) > 1e-4  # rms over all 48 real atoms


# ------------------------------------------------------------------ energies


def test_torch_energy_matches_openmm_on_the_ewald_and_reaction_field_ice_and_the_tetrahedron():
    generator = torch.Generator().manual_seed(4)
    for molecular in (ice(electrostatics="Ewald"), ice(electrostatics="reaction_field"), tetrahedron()):
        system = rigid(molecular)
        base = system.from_cartesian(flat(molecular.positions[None]), random_sign=False)
        k = system.n_molecules
        q = base.quaternions + 0.05 * torch.randn(6, k, 4, generator=generator, dtype=F64)
        p = base.positions + 0.01 * torch.randn(6, k, 3, generator=generator, dtype=F64)
        x = system.to_cartesian(p, q, base.origin.expand(6, 3))
        torch_energy = TorchEnergy.from_openmm(molecular.openmm_system, molecular.temperature, dtype=F64)
        torch.testing.assert_close(torch_energy.energy(x), openmm_energy(molecular).energy(x), rtol=1e-6, atol=1e-6)


def test_ewald_ice_forces_match_openmm_and_its_energies_match_pme_up_to_a_constant():
    """Forces of the torch Ewald ice vs OpenMM (virtual-site forces spread onto the real atoms),
    and Ewald vs PME at the same error tolerance: they differ by an almost constant offset."""
    generator = torch.Generator().manual_seed(5)
    ewald = ice(electrostatics="Ewald")
    system = rigid(ewald)
    base = system.from_cartesian(flat(ewald.positions[None]), random_sign=False)
    q = base.quaternions + 0.05 * torch.randn(6, 16, 4, generator=generator, dtype=F64)
    p = base.positions + 0.01 * torch.randn(6, 16, 3, generator=generator, dtype=F64)
    x = system.to_cartesian(p, q, base.origin.expand(6, 3)).requires_grad_(True)
    torch_energy = TorchEnergy.from_openmm(ewald.openmm_system, ewald.temperature, dtype=F64)
    u = torch_energy.energy(x)
    (gradient,) = torch.autograd.grad(u.sum(), x)
    _, force = openmm_energy(ewald).energy_and_force(x.detach())
    relative_error = float((-gradient - force).norm() / force.norm())  # the metric of the force-term tests
    assert relative_error < 1e-6, relative_error
    offset = (openmm_energy(ice()).energy(x.detach()) - u.detach()) * kt_kj_per_mol(ewald.temperature)
    assert offset.abs().max() < 0.1 and offset.std() < 0.01  # kJ/mol, on energies of about -900


def test_the_pme_ice_falls_back_to_openmm():
    with pytest.raises(UnsupportedForceError):
        TorchEnergy.from_openmm(ice().openmm_system, 100.0)
    assert ice().energy(backend="auto").backend == "openmm"


def test_tetrahedron_field_energy_is_minus_sum_q_e_y():
    molecular = tetrahedron()
    system = rigid(molecular)
    generator = torch.Generator().manual_seed(5)
    q = random_quaternions(16, 1, generator)
    origin = torch.randn(16, 3, generator=generator, dtype=F64)
    x = system.to_cartesian(torch.zeros(16, 1, 3, dtype=F64), q, origin)
    charges = torch.tensor(molecular.options["charges"], dtype=F64)
    expected = -(charges * x.reshape(16, 5, 3)[..., 1]).sum(-1) * 1e4 / kt_kj_per_mol(100.0)
    torch.testing.assert_close(openmm_energy(molecular).energy(x), expected, rtol=1e-12, atol=1e-10)
    torch_energy = TorchEnergy.from_openmm(molecular.openmm_system, 100.0, dtype=F64)
    torch.testing.assert_close(torch_energy.energy(x), expected, rtol=1e-12, atol=1e-10)
    with pytest.raises(ValueError, match="sum to 0"):
        tetrahedron_in_field(charges=(0.0, 0.1, 0.0, 0.0, 0.0))


# ------------------------------------------------------------------ volume constants


def test_log_volume_constant_values():
    assert log_volume_constant(1) == pytest.approx(math.log(4.0))
    assert log_volume_constant(16, 0.5) == pytest.approx(16 * math.log(4.0) + math.log(0.5))
    assert math.log(8 * math.pi**2) - math.log(2 * math.pi**2) == pytest.approx(log_volume_constant(1))
    water = rigid(ice())
    assert water.log_volume_constant() == pytest.approx(log_volume_constant(16, 0.89846 * 0.77808 * 0.73358))
    assert rigid(tetrahedron()).log_volume_constant() == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError):
        log_volume_constant(0)


def test_s3_integral_plus_volume_constant_gives_the_haar_partition_function():
    """Monte Carlo over uniform unit quaternions: log(2 pi^2 E[exp(-u)]) + log 4 = log Z(Haar, 8 pi^2)."""
    temperature = 2000.0  # kappa = 2.6: a well-conditioned Monte Carlo average
    molecular = tetrahedron_in_field(temperature=temperature)
    system = rigid(molecular)
    energy = TorchEnergy.from_openmm(molecular.openmm_system, temperature, dtype=F64)
    q = random_quaternions(200_000, 1, torch.Generator().manual_seed(6))
    u = energy.energy(system.to_cartesian(torch.zeros(len(q), 1, 3, dtype=F64), q))
    log_z_flow = math.log(2 * math.pi**2) + float(torch.logsumexp(-u, 0)) - math.log(len(q))
    exact = tetrahedron_log_partition_function(temperature)
    assert tetrahedron_dipole_concentration(temperature) == pytest.approx(52.4387 / 20, rel=1e-4)
    assert log_z_flow + system.log_volume_constant() == pytest.approx(exact, abs=0.01)


def test_cartesian_volume_factor_is_the_gram_determinant_of_the_rigid_embedding():
    template = rigid(ice()).template
    body = torch.as_tensor(template.body_positions[template.atom_indices])
    rotation = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.5], [-0.2, 0.5, 0.0]], dtype=F64))

    def atoms(coordinates: torch.Tensor) -> torch.Tensor:
        p, w = coordinates[:3], coordinates[3:]
        skew = torch.stack([torch.stack([w.new_zeros(()), -w[2], w[1]]), torch.stack([w[2], w.new_zeros(()), -w[0]]),
                            torch.stack([-w[1], w[0], w.new_zeros(())])])
        return (p + (torch.linalg.matrix_exp(skew) @ rotation @ body.T).T).reshape(-1)

    jacobian = torch.autograd.functional.jacobian(atoms, torch.zeros(6, dtype=F64))
    log_volume = 0.5 * float(torch.logdet(jacobian.T @ jacobian))
    assert template.log_cartesian_volume_factor() == pytest.approx(log_volume, abs=1e-9)
    masses = [15.99943, 1.007947, 1.007947, 0.0]
    weights = torch.tensor(masses[:3], dtype=F64).repeat_interleave(3)
    weighted = 0.5 * float(torch.logdet(jacobian.T @ (weights[:, None] * jacobian)))
    assert template.log_cartesian_volume_factor(masses) == pytest.approx(weighted, abs=1e-9)
