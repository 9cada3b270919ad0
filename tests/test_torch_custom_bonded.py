"""CustomBond/Angle/Torsion/ExternalForce compiled to torch against OpenMM's Reference platform.

Energies and forces (``-d energy / d positions``) on random configurations, float64, rtol 1e-6;
global parameters, several per-term parameters, periodic boxes; float32 close to float64.
"""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch

from boltzgen.energy.torch_forces.base import UnsupportedForceError
from boltzgen.energy.torch_forces.custom_bonded import (
    CustomAngleTerm,
    CustomBondTerm,
    CustomExternalTerm,
    CustomTorsionTerm,
)
from boltzgen.geometry import dihedrals
from force_term_checks import openmm_reference, single_force_system, torch_evaluate

N_ATOMS = 10
N_CONFIGS = 4
BOX = np.array([[2.2, 0.0, 0.0], [0.4, 2.4, 0.0], [-0.5, 0.6, 2.6]])


def _system(force: openmm.Force, periodic_box: np.ndarray | None = None) -> openmm.System:
    return single_force_system(force, [12.0] * N_ATOMS, periodic_box)


def _configurations(seed: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-spread, spread, size=(N_CONFIGS, N_ATOMS, 3))


def assert_term_matches(term_class, force, configurations, periodic_box=None, parameters=None, rtol=1e-6):
    system = _system(force, periodic_box)
    expected_energy, expected_forces = openmm_reference(system, configurations, parameters=parameters)
    term = term_class.from_openmm(force, system)
    for name, value in (parameters or {}).items():
        term.set_global_parameter(name, value)
    energy, forces = torch_evaluate(term, configurations, periodic_box)
    np.testing.assert_allclose(energy, expected_energy, rtol=rtol, atol=1e-10)
    scale = np.abs(expected_forces).max()
    np.testing.assert_allclose(forces, expected_forces, rtol=rtol, atol=rtol * 1e-3 * scale)
    # float32 agrees with float64 to float32 accuracy
    energy32, forces32 = torch_evaluate(term, configurations, periodic_box, torch.float32)
    np.testing.assert_allclose(energy32, energy, rtol=1e-4, atol=1e-4 * np.abs(energy).max())
    np.testing.assert_allclose(forces32, forces, rtol=1e-3, atol=1e-4 * scale)
    return term


def _bond_force(periodic: bool = False) -> openmm.CustomBondForce:
    force = openmm.CustomBondForce("scale*k*(r - r0)^2 + eps*exp(-r/width) + step(r - r0)*c*(r - r0)^3")
    for name in ("k", "r0", "eps", "c"):
        force.addPerBondParameter(name)
    force.addGlobalParameter("scale", 1.5)
    force.addGlobalParameter("width", 0.3)
    rng = np.random.default_rng(1)
    for i in range(N_ATOMS - 1):
        force.addBond(i, i + 1, [rng.uniform(100, 500), rng.uniform(0.1, 0.3), rng.uniform(1, 5), rng.uniform(-10, 10)])
    force.addBond(0, N_ATOMS - 1, [200.0, 0.5, 1.0, 2.0])
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


def test_custom_bond_matches_openmm():
    assert_term_matches(CustomBondTerm, _bond_force(), _configurations(10))


def test_custom_bond_global_parameter_changes_match_openmm():
    assert_term_matches(CustomBondTerm, _bond_force(), _configurations(11), parameters={"scale": -0.7, "width": 0.8})


def test_custom_bond_periodic_matches_openmm():
    configurations = _configurations(12, spread=3.0)
    term = assert_term_matches(CustomBondTerm, _bond_force(periodic=True), configurations, periodic_box=BOX)
    assert term.periodic
    # box=None falls back to the System's default box, as an OpenMM Context would
    with_box = term.to(torch.float64)(torch.tensor(configurations), torch.tensor(BOX))
    default = term(torch.tensor(configurations), None)
    torch.testing.assert_close(with_box, default)


def _angle_force(periodic: bool = False) -> openmm.CustomAngleForce:
    force = openmm.CustomAngleForce("0.5*k*(theta - theta0)^2 + a*cos(theta)^2 + b*sin(theta)*offset; offset = 1 + g")
    for name in ("k", "theta0", "a", "b"):
        force.addPerAngleParameter(name)
    force.addGlobalParameter("g", 0.25)
    rng = np.random.default_rng(2)
    for i in range(N_ATOMS - 2):
        k, theta0, a, b = rng.uniform(50, 400), rng.uniform(1.5, 2.2), rng.uniform(-3, 3), rng.uniform(-3, 3)
        force.addAngle(i, i + 1, i + 2, [k, theta0, a, b])
    force.addAngle(N_ATOMS - 1, 0, 3, [100.0, 1.9, 1.0, 0.5])
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


def test_custom_angle_matches_openmm():
    assert_term_matches(CustomAngleTerm, _angle_force(), _configurations(20))


def test_custom_angle_periodic_matches_openmm():
    assert_term_matches(CustomAngleTerm, _angle_force(True), _configurations(21, spread=3.0), periodic_box=BOX)


def _torsion_force(periodic: bool = False) -> openmm.CustomTorsionForce:
    # k*theta is odd in theta: it checks OpenMM's sign convention for the dihedral.
    force = openmm.CustomTorsionForce("k*(1 + cos(n*theta - phase)) + lin*theta + quad*theta^2 * s")
    for name in ("k", "n", "phase", "lin", "quad"):
        force.addPerTorsionParameter(name)
    force.addGlobalParameter("s", 0.8)
    rng = np.random.default_rng(3)
    for i in range(N_ATOMS - 3):
        k, n, phase = rng.uniform(1, 10), float(rng.integers(1, 4)), rng.uniform(-np.pi, np.pi)
        force.addTorsion(i, i + 1, i + 2, i + 3, [k, n, phase, rng.uniform(-5, 5), rng.uniform(0, 2)])
    force.addTorsion(9, 2, 5, 0, [3.0, 2.0, 0.3, 4.0, 0.0])
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


def test_custom_torsion_matches_openmm():
    assert_term_matches(CustomTorsionTerm, _torsion_force(), _configurations(30))


def test_custom_torsion_periodic_matches_openmm():
    assert_term_matches(CustomTorsionTerm, _torsion_force(True), _configurations(31, spread=3.0), periodic_box=BOX)


def test_torsion_theta_is_geometry_dihedral():
    """OpenMM's theta has the sign of boltzgen.geometry.dihedral_angle (IUPAC, as mdtraj)."""
    force = openmm.CustomTorsionForce("theta")
    quads = [(0, 1, 2, 3), (4, 5, 6, 7), (9, 8, 1, 0), (2, 7, 3, 5)]
    for quad in quads:
        force.addTorsion(*quad, [])
    configurations = _configurations(32)
    system = _system(force)
    term = CustomTorsionTerm.from_openmm(force, system)
    for positions in configurations:
        per_torsion = []
        for quad in quads:  # one torsion at a time
            single = openmm.CustomTorsionForce("theta")
            single.addTorsion(*quad, [])
            energy, _ = openmm_reference(_system(single), positions[None])
            per_torsion.append(energy[0])
        ours = dihedrals(torch.tensor(positions)[None], quads)[0].numpy()
        np.testing.assert_allclose(ours, per_torsion, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(term(torch.tensor(positions)[None], None)[0]), sum(per_torsion), rtol=1e-9)


def _external_force(expression: str) -> openmm.CustomExternalForce:
    force = openmm.CustomExternalForce(expression)
    for name in ("k", "x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    force.addGlobalParameter("lam", 0.6)
    rng = np.random.default_rng(4)
    for i in range(0, N_ATOMS, 2):
        force.addParticle(i, [rng.uniform(10, 100), *rng.uniform(-1, 1, 3)])
    return force


def test_custom_external_matches_openmm():
    force = _external_force("lam*k*((x - x0)^2 + (y - y0)^2 + (z - z0)^2) + sin(3*z)*x0 - lam*y^3")
    assert_term_matches(CustomExternalTerm, force, _configurations(40))


def test_custom_external_periodic_distance_matches_openmm():
    force = _external_force("lam*k*periodicdistance(x, y, z, x0, y0, z0)^2 + periodicdistance(x, y, z, x0, y0, z0)")
    assert force.usesPeriodicBoundaryConditions()
    term = assert_term_matches(CustomExternalTerm, force, _configurations(41, spread=3.0), periodic_box=BOX)
    assert term.periodic


def test_more_forces_and_empty_forces():
    empty = openmm.CustomBondForce("k*r^2")
    empty.addPerBondParameter("k")
    term = CustomBondTerm.from_openmm(empty, _system(empty))
    positions = torch.tensor(_configurations(50), requires_grad=True)
    energy = term(positions, None)
    assert energy.shape == (N_CONFIGS,) and torch.all(energy == 0)
    # An expression that does not depend on the geometry still gives one energy per configuration.
    constant = openmm.CustomAngleForce("c + 2")
    constant.addPerAngleParameter("c")
    constant.addAngle(0, 1, 2, [1.5])
    constant.addAngle(3, 4, 5, [2.5])
    system = _system(constant)
    expected, _ = openmm_reference(system, _configurations(51))
    got = CustomAngleTerm.from_openmm(constant, system)(torch.tensor(_configurations(51)), None)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_to_float32_moves_every_buffer():
    force = _bond_force()
    term = CustomBondTerm.from_openmm(force, _system(force)).to(torch.float32)
    for name, buffer in term.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float32, name
        else:
            assert buffer.dtype == torch.long, name
    energy = term(torch.tensor(_configurations(60), dtype=torch.float32), None)
    assert energy.dtype == torch.float32


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: openmm.CustomBondForce("k*(r - "), "unexpected end"),
        (lambda: openmm.CustomBondForce("k*r^2 + foo(r)"), "unknown function 'foo'"),
        (lambda: openmm.CustomBondForce("k*r^2"), "unknown variable(s) k"),
        (lambda: openmm.CustomAngleForce("theta*periodicdistance(theta, 0, 0, 1, 1, 1)"), "periodicdistance"),
        (lambda: openmm.CustomTorsionForce("r"), "unknown variable(s) r"),
    ],
)
def test_bad_expressions_give_clear_errors(make, fragment):
    force = make()
    term_class = {
        "CustomBondForce": CustomBondTerm,
        "CustomAngleForce": CustomAngleTerm,
        "CustomTorsionForce": CustomTorsionTerm,
    }[type(force).__name__]
    with pytest.raises(UnsupportedForceError) as info:
        term_class.from_openmm(force, _system(force))
    assert fragment in str(info.value)
    assert force.getEnergyFunction() in str(info.value)
