"""`TorchEnergy` on whole systems against OpenMM (Reference platform, float64), and its contract.

The per-force exactness tests live in tests/test_torch_{bonded,nonbonded,gbsa,custom_gb,...}.py;
here every shipped system and a few force-field variants are compared as a whole, through the
same `Energy` interface as `OpenMMEnergy` (energies in kT, forces in kT/nm).
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from boltzgen import systems
from boltzgen.energy import ENERGY_BACKENDS, NonFiniteEnergyWarning, OpenMMEnergy, TorchEnergy, system_energy
from boltzgen.energy.torch_forces.base import UnsupportedForceError

TEMPERATURE = 300.0


@functools.lru_cache(maxsize=None)
def ad2():
    return systems.load("alanine_dipeptide_implicit")


def amber14_ad2(solvent_xml: str | None, **create_options) -> openmm.System:
    files = ["amber14-all.xml"] + ([solvent_xml] if solvent_xml else [])
    return app.ForceField(*files).createSystem(ad2().topology, constraints=None, **create_options)


@functools.lru_cache(maxsize=None)
def water_box():
    """About 100 TIP4P-Ew waters (ThreeParticleAverageSite M sites), CutoffPeriodic 0.6 nm."""
    forcefield = app.ForceField("tip4pew.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, model="tip4pew", boxSize=openmm.Vec3(1.5, 1.5, 1.5) * unit.nanometer)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.CutoffPeriodic,
                                     nonbondedCutoff=0.6 * unit.nanometer, rigidWater=False)
    positions = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    return system, positions


SYSTEMS = {
    "ad2_implicit_shipped": lambda: (ad2().openmm_system, ad2().positions),
    "ad2_vacuum_shipped": lambda: (systems.load("alanine_dipeptide_vacuum").openmm_system, ad2().positions),
    "ad2_implicit_cutoff_nonperiodic": lambda: (
        app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(
            ad2().topology, nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=0.6 * unit.nanometer,
            constraints=None),
        ad2().positions),
    "ad2_amber14_obc1": lambda: (amber14_ad2("implicit/obc1.xml"), ad2().positions),
    "ad2_amber14_obc2": lambda: (amber14_ad2("implicit/obc2.xml"), ad2().positions),
    "ad2_amber14_gbn": lambda: (amber14_ad2("implicit/gbn.xml"), ad2().positions),
    "ad2_amber14_gbn2": lambda: (amber14_ad2("implicit/gbn2.xml"), ad2().positions),
    "tip4pew_water_box_periodic": water_box,
}


def perturbed(positions: np.ndarray, scales=(0.0, 0.005, 0.01, 0.02, 0.04), per_scale: int = 2, seed: int = 0):
    """``[B, 3N]`` float64: copies of ``positions`` with Gaussian noise of each scale (nm); larger ones are high-energy."""
    rng = np.random.default_rng(seed)
    rows = [positions.reshape(-1) + s * rng.standard_normal(positions.size) for s in scales for _ in range(per_scale)]
    return torch.tensor(np.stack(rows), dtype=torch.float64)


def real_particle_columns(system: openmm.System) -> torch.Tensor:
    """Flat coordinate columns of the particles that are not virtual sites."""
    real = [i for i in range(system.getNumParticles()) if not system.isVirtualSite(i)]
    return torch.tensor([3 * i + k for i in real for k in range(3)])


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_whole_system_matches_openmm_in_float64(name):
    system, positions = SYSTEMS[name]()
    x = perturbed(positions, per_scale=1 if system.getNumParticles() > 100 else 2)
    reference = OpenMMEnergy(system, TEMPERATURE, "Reference", n_workers=1, parallel="serial")
    torch_energy = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64)
    u_ref, f_ref = reference.energy_and_force(x)
    u, f = torch_energy.energy_and_force(x)
    assert u.dtype == torch.float64 and f.shape == x.shape
    assert torch.isfinite(u_ref).all()
    energy_scale = u_ref.abs().clamp_min(1.0)
    assert ((u - u_ref).abs() / energy_scale).max() < 1e-6, (u - u_ref)
    force_error = torch.linalg.vector_norm(f - f_ref, dim=1) / torch.linalg.vector_norm(f_ref, dim=1)
    assert force_error.max() < 1e-6, force_error
    if name.startswith("tip4pew"):
        sites = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
        assert sites and f.reshape(len(x), -1, 3)[:, sites].abs().max() == 0  # -du/dx of a site is 0
        assert f_ref.reshape(len(x), -1, 3)[:, sites].abs().max() == 0


def test_float32_is_close_to_float64():
    system, positions = SYSTEMS["ad2_implicit_shipped"]()
    x = perturbed(positions, scales=(0.0, 0.01, 0.02))
    u64, f64 = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64).energy_and_force(x)
    energy32 = TorchEnergy.from_openmm(system, TEMPERATURE)  # float32 by default
    assert energy32.dtype == torch.float32
    u32, f32 = energy32.energy_and_force(x.float())
    assert u32.dtype == torch.float32
    assert (u32.double() - u64).abs().max() < 1e-3  # kT, of totals of order 100 kT
    # Near the minimum the force is a small difference of large terms (|F| ~ 15 kT/nm against
    # terms of 1e3-1e4), so float32 is judged on the absolute error: about 1e-6 of the term scale.
    assert (f32.double() - f64).abs().max() < 0.05  # kT/nm
    relative_force_error = torch.linalg.vector_norm(f32.double() - f64, dim=1) / torch.linalg.vector_norm(f64, dim=1)
    assert relative_force_error[2:].max() < 1e-5  # perturbed configurations, |F| ~ 1e4 kT/nm
    # computing in float64 but returning in the input's dtype
    u_mixed = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64).energy(x.float())
    assert u_mixed.dtype == torch.float32


def test_virtual_site_input_coordinates_are_ignored_by_both_backends():
    system, positions = water_box()
    x = torch.tensor(positions.reshape(1, -1))
    moved = x.clone().reshape(1, -1, 3)
    sites = [i for i in range(system.getNumParticles()) if system.isVirtualSite(i)]
    moved[:, sites] += 0.05
    moved = moved.reshape(1, -1)
    for energy in (TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64),
                   OpenMMEnergy(system, TEMPERATURE, "Reference", n_workers=1, parallel="serial")):
        assert torch.allclose(energy.energy(x), energy.energy(moved), rtol=1e-12, atol=0)


def test_energy_is_differentiable_and_its_gradient_is_minus_the_force():
    system, positions = SYSTEMS["ad2_implicit_shipped"]()
    target = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64)
    x = perturbed(positions, scales=(0.01,), per_scale=3).requires_grad_(True)
    target.energy(x).sum().backward()
    _, force = target.energy_and_force(x.detach())
    assert torch.allclose(x.grad, -force, rtol=1e-12, atol=1e-9)


def test_non_finite_rows_get_infinite_energy_zero_force_and_no_nan_gradient():
    system, positions = SYSTEMS["ad2_implicit_shipped"]()
    target = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64)
    x = perturbed(positions, scales=(0.01,), per_scale=3)
    x[1, 5] = float("nan")
    overlapping = x[2].reshape(-1, 3).clone()
    overlapping[1] = overlapping[0]  # two atoms on top of each other: Coulomb 1/r at r = 0
    x[2] = overlapping.reshape(-1)
    with pytest.warns(NonFiniteEnergyWarning, match="2 of 3"):
        u, f = target.energy_and_force(x)
    assert torch.isfinite(u[0]) and torch.isinf(u[1:]).all() and (u[1:] > 0).all()
    assert torch.isfinite(f).all() and (f[1:] == 0).all()
    assert target.n_evaluations == 3 and target.n_nonfinite == 2
    # through a differentiable map, a row of overlapping atoms sends no NaN back
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteEnergyWarning)
        u = target.energy(x[[0, 2]] * scale)
    assert torch.isinf(u[1])
    u[torch.isfinite(u)].sum().backward()
    assert torch.isfinite(scale.grad)


def test_unsupported_forces_and_options_give_clear_errors():
    system = copy.deepcopy(ad2().openmm_system)
    system.addForce(openmm.CustomCentroidBondForce(2, "distance(g1, g2)"))
    with pytest.raises(UnsupportedForceError, match="CustomCentroidBondForce.*supported forces: HarmonicBondForce"):
        TorchEnergy.from_openmm(system, TEMPERATURE)
    barostat = copy.deepcopy(water_box()[0])
    barostat.addForce(openmm.MonteCarloBarostat(1.0, TEMPERATURE))
    with pytest.raises(UnsupportedForceError, match="MonteCarloBarostat"):
        TorchEnergy.from_openmm(barostat, TEMPERATURE)
    pme = app.ForceField("tip4pew.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(pme, model="tip4pew", boxSize=openmm.Vec3(1.2, 1.2, 1.2) * unit.nanometer)
    with pytest.raises(UnsupportedForceError, match="PME"):
        TorchEnergy.from_openmm(pme.createSystem(modeller.topology, nonbondedMethod=app.PME), TEMPERATURE)
    local = openmm.System()
    for _ in range(4):
        local.addParticle(1.0)
    local.setVirtualSite(3, openmm.LocalCoordinatesSite([0, 1, 2], [1, 0, 0], [-1, 1, 0], [0, -1, 1], [0.1, 0, 0]))
    with pytest.raises(UnsupportedForceError, match="LocalCoordinatesSite"):
        TorchEnergy.from_openmm(local, TEMPERATURE)
    with pytest.raises(TypeError, match="openmm.System"):
        TorchEnergy.from_openmm("not a system", TEMPERATURE)
    with pytest.raises(ValueError, match=r"expects positions of shape \[batch, 66\]"):
        TorchEnergy.from_openmm(ad2().openmm_system, TEMPERATURE).energy(torch.zeros(2, 65))


def test_backend_choice():
    assert set(ENERGY_BACKENDS) == {"auto", "torch", "openmm"}
    auto = ad2().energy()
    assert isinstance(auto, TorchEnergy) and auto.backend == "torch"
    openmm_energy = ad2().energy(backend="openmm", platform="Reference")
    assert isinstance(openmm_energy, OpenMMEnergy) and openmm_energy.backend == "openmm"
    x = perturbed(ad2().positions, scales=(0.01,), per_scale=2)
    # float32 -> float64 recasts from the float64 originals: as exact as building in float64
    assert torch.allclose(auto.to(torch.float64).energy(x), openmm_energy.energy(x), rtol=1e-9)
    unsupported = copy.deepcopy(ad2().openmm_system)
    unsupported.addForce(openmm.CustomCentroidBondForce(2, "distance(g1, g2)"))
    fallback = system_energy(unsupported, TEMPERATURE, platform="Reference")
    assert isinstance(fallback, OpenMMEnergy) and "CustomCentroidBondForce" in fallback.backend_note
    with pytest.raises(UnsupportedForceError):
        system_energy(unsupported, TEMPERATURE, backend="torch")
    with pytest.raises(ValueError, match="unknown energy backend"):
        system_energy(unsupported, TEMPERATURE, backend="gpu")


def ad2_periodic_gb() -> openmm.System:
    """AD2 with amber99sbildn + OBC in a 2.5 nm periodic box, CutoffPeriodic 1.0 nm (GB, nonbonded and bonded terms all periodic)."""
    topology = copy.deepcopy(ad2().topology)
    topology.setPeriodicBoxVectors(np.eye(3) * 2.5 * unit.nanometer)
    return app.ForceField("amber99sbildn.xml", "amber99_obc.xml").createSystem(
        topology, nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=1.0 * unit.nanometer, constraints=None)


@pytest.mark.slow
@pytest.mark.parametrize("builder", [lambda: ad2().openmm_system, ad2_periodic_gb], ids=["nocutoff", "periodic_gb"])
def test_compiled_energy_matches_eager(builder):
    """torch.compile'd evaluation (`TorchEnergy.compiled`) gives eager's energies and forces (float64)."""
    system = builder()
    x = perturbed(ad2().positions, scales=(0.0, 0.01, 0.03), per_scale=2)
    eager = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64)
    compiled = TorchEnergy.from_openmm(system, TEMPERATURE, dtype=torch.float64).compiled()
    u, f = eager.energy_and_force(x)
    u_c, f_c = compiled.energy_and_force(x)
    assert torch.allclose(u_c, u, rtol=1e-10, atol=1e-9)
    assert torch.allclose(f_c, f, rtol=1e-9, atol=1e-7)
    reference = OpenMMEnergy(system, TEMPERATURE, "Reference", n_workers=1, parallel="serial")
    u_ref, f_ref = reference.energy_and_force(x)
    assert ((u_c - u_ref).abs() / u_ref.abs().clamp_min(1.0)).max() < 1e-6
    assert (torch.linalg.vector_norm(f_c - f_ref, dim=1) / torch.linalg.vector_norm(f_ref, dim=1)).max() < 1e-6


def test_malloc_tuning_is_applied_once_and_can_be_disabled(tmp_path):
    import subprocess
    import sys

    from boltzgen.energy.allocator import keep_freed_memory_in_process

    first = keep_freed_memory_in_process()
    assert keep_freed_memory_in_process() is first
    assert TorchEnergy.from_openmm(ad2().openmm_system, TEMPERATURE).malloc_tuned is first
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert first is True
    code = "from boltzgen.energy.allocator import keep_freed_memory_in_process as k; print(k())"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**__import__("os").environ, "BOLTZGEN_KEEP_MALLOC_DEFAULTS": "1"})
    assert result.stdout.strip() == "False", result.stderr
