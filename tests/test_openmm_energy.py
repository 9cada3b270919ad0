"""OpenMMEnergy against direct OpenMM evaluation, autograd, bad input, pickling and platform choice."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from boltzgen import systems
from boltzgen.energy import openmm_context
from boltzgen.energy.openmm import NonFiniteEnergyWarning, OpenMMEnergy, auto_parallel_mode
from boltzgen.energy.openmm_platforms import available_platform_names
from boltzgen.units import kt_kj_per_mol

SYSTEM_NAMES = ("alanine_dipeptide_implicit", "alanine_dipeptide_vacuum")
PLATFORMS = ("Reference", "CPU")
MODES = ("serial", "threads", "processes")
N_WORKERS = 2  # explicit, so that threads and processes really split batches on any machine
BATCH = 16
KJ_PER_MOL = unit.kilojoule_per_mole
KJ_PER_MOL_NM = KJ_PER_MOL / unit.nanometer


@pytest.fixture(scope="module")
def molecules():
    return {name: systems.load(name) for name in SYSTEM_NAMES}


@pytest.fixture(scope="module")
def energies(molecules):
    """OpenMMEnergy objects by (system, platform, mode), created once and closed at the end."""
    cache: dict[tuple[str, str, str], OpenMMEnergy] = {}

    def get(name: str, platform: str, mode: str) -> OpenMMEnergy:
        key = (name, platform, mode)
        if key not in cache:
            molecule = molecules[name]
            cache[key] = OpenMMEnergy(
                molecule.openmm_system, molecule.temperature, platform=platform, n_workers=N_WORKERS, parallel=mode
            )
        return cache[key]

    yield get
    for energy in cache.values():
        energy.close()


def perturbed(molecule, batch: int = BATCH, sigma: float = 0.015, seed: int = 0) -> np.ndarray:
    """``[batch, N, 3]`` float64 nm: row 0 is the minimised structure, the others get Gaussian noise."""
    rng = np.random.default_rng(seed)
    noise = sigma * rng.standard_normal((batch, *molecule.positions.shape))
    noise[0] = 0.0
    return molecule.positions[None] + noise


def direct_openmm(molecule, platform: str, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies [B] (kT) and forces [B, 3N] (kT/nm) from a plain Context, through OpenMM's public API."""
    properties = {"Threads": "1"} if platform == "CPU" else {}  # as the pool's Contexts (n_workers > 1)
    context = openmm.Context(
        molecule.openmm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform), properties
    )
    kt = kt_kj_per_mol(molecule.temperature)
    energies, forces = [], []
    for row in positions:
        context.setPositions([openmm.Vec3(*map(float, atom)) for atom in row] * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ_PER_MOL) / kt)
        forces.append(np.asarray(state.getForces(asNumpy=True).value_in_unit(KJ_PER_MOL_NM)).reshape(-1) / kt)
    return np.asarray(energies), np.asarray(forces)


def assert_forces_close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Per row, ``|actual - expected| <= rtol * |expected|`` in the Euclidean norm."""
    error = np.linalg.norm(actual - expected, axis=-1)
    scale = np.linalg.norm(expected, axis=-1)
    assert np.all(error <= rtol * scale), f"norm-relative force errors {error / scale}"


def as_tensor(positions: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(positions.reshape(len(positions), -1), dtype=dtype)


# -- agreement with OpenMM ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", SYSTEM_NAMES)
def test_matches_direct_openmm(molecules, energies, name, platform, mode):
    molecule = molecules[name]
    energy = energies(name, platform, mode)
    positions = perturbed(molecule, seed=10 * SYSTEM_NAMES.index(name) + PLATFORMS.index(platform))
    expected_u, expected_f = direct_openmm(molecule, platform, positions)
    x = as_tensor(positions)

    u, f = energy.energy_and_force(x)

    assert u.shape == (BATCH,) and f.shape == (BATCH, 3 * molecule.n_atoms)
    assert u.dtype == f.dtype == torch.float64
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6, atol=0)
    assert_forces_close(f.numpy(), expected_f, rtol=1e-6)
    np.testing.assert_allclose(energy.energy(x).numpy(), expected_u, rtol=1e-6, atol=0)  # energy-only path
    assert_forces_close(energy.force(x).numpy(), expected_f, rtol=1e-6)
    if mode == "processes":
        assert len(energy.worker_pids) == N_WORKERS - 1


def test_huge_but_finite_energy_is_returned_as_is(molecules, energies):
    molecule = molecules["alanine_dipeptide_vacuum"]
    positions = molecule.positions[None].copy()
    positions[0, 5] = positions[0, 0] + 0.03  # two non-bonded atoms 0.03 nm apart: huge repulsion
    expected_u, expected_f = direct_openmm(molecule, "Reference", positions)
    energy = energies("alanine_dipeptide_vacuum", "Reference", "serial")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteEnergyWarning)
        u, f = energy.energy_and_force(as_tensor(positions))
    assert expected_u[0] > 1e4 and np.isfinite(expected_u[0])
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6)
    assert_forces_close(f.numpy(), expected_f, rtol=1e-6)


# -- autograd ----------------------------------------------------------------------------------


def test_backward_gives_minus_force_scaled_by_incoming_gradient(molecules, energies):
    molecule = molecules["alanine_dipeptide_implicit"]
    energy = energies("alanine_dipeptide_implicit", "Reference", "serial")
    x = as_tensor(perturbed(molecule, batch=4, seed=1)).requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)

    u = energy.energy(x)
    (weights * u).sum().backward()

    u_ref, f_ref = energy.energy_and_force(x.detach())
    np.testing.assert_allclose(u.detach().numpy(), u_ref.numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), -(weights[:, None] * f_ref).numpy(), rtol=1e-12, atol=0)
    assert u.grad_fn is not None
    with torch.no_grad():
        assert energy.energy(x).grad_fn is None


def test_float32_in_float32_out(molecules, energies):
    molecule = molecules["alanine_dipeptide_implicit"]
    energy = energies("alanine_dipeptide_implicit", "Reference", "threads")
    positions = perturbed(molecule, batch=4, seed=2)
    x32 = as_tensor(positions, torch.float32).requires_grad_(True)
    u32 = energy.energy(x32)
    u32.sum().backward()
    u64, f64 = energy.energy_and_force(as_tensor(positions))
    assert u32.dtype == x32.grad.dtype == torch.float32
    f32 = energy.force(as_tensor(positions, torch.float32))
    assert f32.dtype == torch.float32
    # float32 positions are rounded (~1e-8 nm): energies agree to float32 precision of the input
    np.testing.assert_allclose(u32.detach().double().numpy(), u64.numpy(), rtol=1e-4)
    assert_forces_close(-x32.grad.double().numpy(), f64.numpy(), rtol=1e-3)


def test_energy_difference_matches_force_times_displacement(molecules, energies):
    molecule = molecules["alanine_dipeptide_implicit"]
    energy = energies("alanine_dipeptide_implicit", "Reference", "serial")
    x = as_tensor(perturbed(molecule, batch=4, seed=3)[1:])  # off the minimum: forces are not ~0
    generator = torch.Generator().manual_seed(3)
    dx = 1e-5 * torch.randn(x.shape, dtype=torch.float64, generator=generator)
    force = energy.force(x)
    central_difference = energy.energy(x + dx) - energy.energy(x - dx)
    np.testing.assert_allclose(central_difference.numpy(), -2 * (force * dx).sum(-1).numpy(), rtol=1e-5)


def test_gradcheck(molecules, energies):
    molecule = molecules["alanine_dipeptide_vacuum"]
    energy = energies("alanine_dipeptide_vacuum", "Reference", "serial")
    x = as_tensor(perturbed(molecule, batch=2, sigma=0.005, seed=4)).requires_grad_(True)
    assert torch.autograd.gradcheck(energy.energy, (x,), eps=1e-6, atol=1e-4, rtol=1e-4)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nan_row_gets_inf_and_does_not_poison_the_pool(molecules, energies, mode):
    molecule = molecules["alanine_dipeptide_implicit"]
    energy = energies("alanine_dipeptide_implicit", "CPU", mode)  # CPU raises on NaN coordinates
    positions = perturbed(molecule, batch=8, seed=5)
    expected_u, expected_f = direct_openmm(molecule, "CPU", positions)
    bad = positions.copy()
    bad[5, 3, 1] = np.nan
    n_evaluations, n_nonfinite = energy.n_evaluations, energy.n_nonfinite

    with pytest.warns(NonFiniteEnergyWarning, match="1 of 8"):
        u, f = energy.energy_and_force(as_tensor(bad))

    assert u[5] == np.inf and torch.all(f[5] == 0)
    good = np.arange(8) != 5
    np.testing.assert_allclose(u.numpy()[good], expected_u[good], rtol=1e-6)
    assert_forces_close(f.numpy()[good], expected_f[good], rtol=1e-6)
    assert energy.n_evaluations == n_evaluations + 8
    assert energy.n_nonfinite == n_nonfinite + 1
    u, f = energy.energy_and_force(as_tensor(positions))  # the next call is exact again
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6)
    assert_forces_close(f.numpy(), expected_f, rtol=1e-6)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_overlapping_atoms_never_give_nan(molecules, energies, platform):
    molecule = molecules["alanine_dipeptide_vacuum"]
    energy = energies("alanine_dipeptide_vacuum", platform, "threads")
    positions = perturbed(molecule, batch=4, seed=6)
    expected_u, expected_f = direct_openmm(molecule, platform, positions)
    bad = positions.copy()
    bad[1, 7] = bad[1, 4]  # two atoms on top of each other
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u, f = energy.energy_and_force(as_tensor(bad))
    assert not torch.isnan(u).any() and not torch.isnan(f).any()
    if torch.isinf(u[1]):
        assert torch.all(f[1] == 0)
        assert any(issubclass(w.category, NonFiniteEnergyWarning) for w in caught)
    keep = np.arange(4) != 1
    np.testing.assert_allclose(u.numpy()[keep], expected_u[keep], rtol=1e-6)
    u, _ = energy.energy_and_force(as_tensor(positions))
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6)


@pytest.mark.parametrize("mode", ["serial", "processes"])
def test_nan_force_with_finite_energy_gets_inf(mode):
    # |r| of one particle: energy 0 but force 0/0 = NaN at the origin, -r/|r| elsewhere
    system = openmm.System()
    system.addParticle(1.0)
    distance = openmm.CustomExternalForce("sqrt(x^2 + y^2 + z^2)")
    distance.addParticle(0, [])
    system.addForce(distance)
    positions = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 0.2], [0.3, 0.0, 0.4]], dtype=torch.float64)
    kt = kt_kj_per_mol(300.0)
    with OpenMMEnergy(system, 300.0, "Reference", n_workers=2, parallel=mode) as energy:
        with pytest.warns(NonFiniteEnergyWarning, match="1 of 3"):
            u, f = energy.energy_and_force(positions)
    assert u[0] == np.inf and torch.all(f[0] == 0)
    np.testing.assert_allclose(u[1:].numpy(), [0.3 / kt, 0.5 / kt], rtol=1e-12)
    np.testing.assert_allclose(f[1:].numpy(), -(positions[1:] / positions[1:].norm(dim=1, keepdim=True)).numpy() / kt, rtol=1e-12)


class _FailingContext:
    """A real Context that raises OpenMMException for configurations whose first coordinate is 123 nm."""

    def __init__(self, context, fail_reinitialize: bool):
        self._context = context
        self._fail_reinitialize = fail_reinitialize
        self._positions = None

    def setPositions(self, positions):
        self._positions = positions
        self._context.setPositions(positions)

    def getState(self, **kwargs):
        if self._positions[0, 0] == 123.0:
            raise openmm.OpenMMException("injected failure")
        return self._context.getState(**kwargs)

    def reinitialize(self, preserveState=False):
        if self._fail_reinitialize:
            raise openmm.OpenMMException("injected reinitialize failure")
        self._context.reinitialize(preserveState)


@pytest.mark.parametrize("fail_reinitialize", [False, True])
def test_openmm_exception_gives_inf_and_recovers(molecules, monkeypatch, fail_reinitialize):
    molecule = molecules["alanine_dipeptide_vacuum"]
    real_create_context = openmm_context.create_context
    created = []

    def create_failing_context(*args, **kwargs):
        created.append(1)
        return _FailingContext(real_create_context(*args, **kwargs), fail_reinitialize)

    monkeypatch.setattr(openmm_context, "create_context", create_failing_context)
    positions = perturbed(molecule, batch=4, seed=7)
    expected_u, expected_f = direct_openmm(molecule, "Reference", positions)
    bad = positions.copy()
    bad[2, 0, 0] = 123.0
    with OpenMMEnergy(molecule.openmm_system, molecule.temperature, "Reference", n_workers=1) as energy:
        with pytest.warns(NonFiniteEnergyWarning, match="1 of 4"):
            u, f = energy.energy_and_force(as_tensor(bad))
        assert u[2] == np.inf and torch.all(f[2] == 0)
        keep = np.arange(4) != 2
        np.testing.assert_allclose(u.numpy()[keep], expected_u[keep], rtol=1e-6)
        assert_forces_close(f.numpy()[keep], expected_f[keep], rtol=1e-6)
        assert len(created) == (2 if fail_reinitialize else 1)  # recreated only if reinitialize failed
        u, f = energy.energy_and_force(as_tensor(positions))
        np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6)
        assert energy.n_nonfinite == 1


def test_crashed_worker_process_is_replaced(molecules, energies):
    molecule = molecules["alanine_dipeptide_vacuum"]
    energy = energies("alanine_dipeptide_vacuum", "Reference", "processes")
    positions = perturbed(molecule, batch=8, seed=8)
    expected_u, expected_f = direct_openmm(molecule, "Reference", positions)
    energy.energy(as_tensor(positions))
    (pid,) = energy.worker_pids
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    with pytest.warns(RuntimeWarning, match=f"worker process {pid}"):
        u, f = energy.energy_and_force(as_tensor(positions))
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-6)
    assert_forces_close(f.numpy(), expected_f, rtol=1e-6)
    assert energy.worker_pids and pid not in energy.worker_pids


@pytest.mark.parametrize(
    "shape, dtype",
    [((3, 65), torch.float64), ((66,), torch.float64), ((2, 22, 3), torch.float64), ((3, 66), torch.int64)],
    ids=["wrong-dim", "1-D", "3-D", "integer"],
)
def test_wrong_input_raises_value_error(energies, shape, dtype):
    energy = energies("alanine_dipeptide_vacuum", "Reference", "serial")
    with pytest.raises(ValueError, match="OpenMMEnergy expects"):
        energy.energy(torch.zeros(shape, dtype=dtype))
    with pytest.raises(ValueError, match="OpenMMEnergy expects"):
        energy.energy_and_force(torch.zeros(shape, dtype=dtype))


def test_invalid_arguments_raise_value_error(molecules):
    molecule = molecules["alanine_dipeptide_vacuum"]
    with pytest.raises(ValueError, match="available platforms: .*Reference"):
        OpenMMEnergy(molecule.openmm_system, 300.0, platform="NoSuchPlatform")
    with pytest.raises(ValueError, match="parallel"):
        OpenMMEnergy(molecule.openmm_system, 300.0, platform="Reference", parallel="gpu")
    with pytest.raises(ValueError, match="n_workers"):
        OpenMMEnergy(molecule.openmm_system, 300.0, platform="Reference", n_workers=0)
    with pytest.raises(ValueError, match="unknown properties"):
        OpenMMEnergy(molecule.openmm_system, 300.0, platform="Reference", platform_properties={"Threads": "1"})
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(molecule.openmm_system, -1.0, platform="Reference")


# -- platform choice, pickling, resources -------------------------------------------------------


def test_auto_platform_is_an_available_one_and_measured(molecules):
    molecule = molecules["alanine_dipeptide_implicit"]
    with OpenMMEnergy(molecule.openmm_system, molecule.temperature, n_workers=N_WORKERS) as energy:
        assert energy.platform_name in available_platform_names()
        assert set(energy.platform_timings_s) == set(available_platform_names())
        assert energy.platform_timings_s[energy.platform_name] == min(energy.platform_timings_s.values())
        positions = perturbed(molecule, batch=2, seed=9)
        expected_u, _ = direct_openmm(molecule, energy.platform_name, positions)
        np.testing.assert_allclose(energy.energy(as_tensor(positions)).numpy(), expected_u, rtol=1e-6)


@pytest.mark.parametrize("mode", ["serial", "processes"])
def test_pickle_round_trip_evaluates_identically(molecules, energies, mode):
    molecule = molecules["alanine_dipeptide_implicit"]
    energy = energies("alanine_dipeptide_implicit", "Reference", mode)
    x = as_tensor(perturbed(molecule, batch=6, seed=10))
    u, f = energy.energy_and_force(x)
    with pickle.loads(pickle.dumps(energy)) as copy:
        assert copy.platform_name == energy.platform_name and copy.parallel == mode
        u_copy, f_copy = copy.energy_and_force(x)
        assert not set(copy.worker_pids) & set(energy.worker_pids)
    np.testing.assert_array_equal(u_copy.numpy(), u.numpy())
    np.testing.assert_array_equal(f_copy.numpy(), f.numpy())


def _evaluate_in_forked_child(energy, x, queue):
    queue.put(energy.energy(x).numpy())


def test_forked_child_builds_its_own_pool(molecules):
    molecule = molecules["alanine_dipeptide_vacuum"]
    x = as_tensor(perturbed(molecule, batch=4, seed=11))
    with OpenMMEnergy(molecule.openmm_system, molecule.temperature, "CPU", n_workers=2, parallel="processes") as energy:
        u = energy.energy(x).numpy()  # the parent's Contexts and worker exist before the fork
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_evaluate_in_forked_child, args=(energy, x, queue), daemon=True)
        child.start()
        try:
            u_child = queue.get(timeout=20)  # a child using the parent's CPU Contexts would hang here
            child.join(timeout=20)
        finally:
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        np.testing.assert_allclose(u_child, u, rtol=1e-6)
        np.testing.assert_allclose(energy.energy(x).numpy(), u, rtol=1e-6)  # the parent's pool still works


def test_close_stops_worker_processes(molecules):
    molecule = molecules["alanine_dipeptide_vacuum"]
    x = as_tensor(perturbed(molecule, batch=4, seed=12))
    with OpenMMEnergy(molecule.openmm_system, molecule.temperature, "Reference", n_workers=3, parallel="processes") as energy:
        u = energy.energy(x)
        pids = energy.worker_pids
        assert len(pids) == 2
    assert energy.worker_pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped)
    np.testing.assert_array_equal(energy.energy(x).numpy(), u.numpy())  # usable again after close
    energy.close()


_LEAVE_WORKERS_RUNNING = """
import torch
from boltzgen import systems
from boltzgen.energy import OpenMMEnergy
molecule = systems.load("alanine_dipeptide_vacuum")
energy = OpenMMEnergy(molecule.openmm_system, 300.0, "Reference", n_workers=3, parallel="processes")
energy.energy(torch.as_tensor(molecule.positions).reshape(1, -1).repeat(4, 1))
print(*energy.worker_pids)
"""  # exits without close()


def test_worker_processes_end_with_the_interpreter(tmp_path):
    # cwd outside the repository: there `python -c` would import the source tree's boltzgen,
    # which lacks boltzgen.systems (installed from the top-level systems/ folder)
    result = subprocess.run(
        [sys.executable, "-c", _LEAVE_WORKERS_RUNNING], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped by the exiting interpreter


def test_auto_parallel_mode_rule():
    assert auto_parallel_mode(1, 8, 1e-3) == "serial"  # one configuration: nothing to split
    assert auto_parallel_mode(1024, 1, 1e-3) == "serial"  # one worker
    assert auto_parallel_mode(64, 2, 40e-6) == "processes"  # 2.6 ms of serial work
    assert auto_parallel_mode(8, 2, 14e-6) == "serial"  # 0.11 ms: waking a worker costs more
    assert auto_parallel_mode(4, 2, 1e-2) == "processes"  # expensive system: split even small batches
    assert auto_parallel_mode(1024, 2, None) == "processes" and auto_parallel_mode(4, 2, None) == "serial"


def test_auto_parallel_uses_processes_for_large_batches_only(molecules):
    molecule = molecules["alanine_dipeptide_implicit"]
    with OpenMMEnergy(molecule.openmm_system, molecule.temperature, "Reference", n_workers=2) as energy:
        positions = perturbed(molecule, batch=256, seed=13)
        assert energy.parallel_mode_for(1) == "serial"
        energy.energy(as_tensor(positions[:1]))
        assert energy.worker_pids == []
        assert energy.parallel_mode_for(256) == "processes"
        expected_u, _ = direct_openmm(molecule, "Reference", positions)
        np.testing.assert_allclose(energy.energy(as_tensor(positions)).numpy(), expected_u, rtol=1e-6)
        assert len(energy.worker_pids) == 1
