"""Shipped reference MD data (`boltzgen.systems.reference_data`): format, physics, coverage, packaging."""

from __future__ import annotations

import configparser
import fnmatch
from importlib import resources
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import unit

from boltzgen import systems
from boltzgen.units import kt_kj_per_mol

SYSTEM = "alanine_dipeptide_implicit"
FILE_NAME = "alanine_dipeptide_implicit_reference.npz"
N_ATOMS = 22
ROOT = Path(__file__).resolve().parents[1]
#: Lower bounds on the frames per basin, a little below what the shipped file holds (46,000 frames:
#: 38,049 with phi < 0, 7,951 with phi > 0, 7,947 of them from the alpha_L start; see data/README.md).
MIN_FRAMES_PHI_NEGATIVE = 35_000
MIN_FRAMES_PHI_POSITIVE = 7_000
MIN_FRAMES_PHI_POSITIVE_FROM_ALPHA_L = 7_000


@pytest.fixture(scope="module")
def data() -> systems.ReferenceData:
    return systems.reference_data(SYSTEM)


@pytest.fixture(scope="module")
def sample_frames(data) -> np.ndarray:
    """A few frames from both starts and both basins (indices into the file)."""
    rng = np.random.default_rng(0)
    picks = []
    for start_id in (0, 1):
        for positive in (False, True):
            candidates = np.flatnonzero((data.start_id == start_id) & ((data.phi > 0) == positive))
            if len(candidates):
                picks.extend(rng.choice(candidates, size=min(3, len(candidates)), replace=False))
    return np.array(sorted(picks) + [0, data.n_frames - 1])


def test_shapes_dtypes_and_read_only(data):
    n = data.n_frames
    assert n >= 45_000
    expected = {
        "positions": ((n, N_ATOMS, 3), np.float32),
        "forces": ((n, N_ATOMS, 3), np.float32),
        "reduced_energy": ((n,), np.float64),
        "phi": ((n,), np.float32),
        "psi": ((n,), np.float32),
        "start_id": ((n,), np.int16),
        "replica": ((n,), np.int16),
        "time_ps": ((n,), np.float32),
    }
    for name, (shape, dtype) in expected.items():
        array = getattr(data, name)
        assert array.shape == shape and array.dtype == dtype, name
        assert np.all(np.isfinite(array)), name
        assert not array.flags.writeable, name
    assert data.n_atoms == N_ATOMS and data.system == SYSTEM
    flat = data.positions_flat()
    assert flat.shape == (n, 3 * N_ATOMS) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[5].reshape(N_ATOMS, 3), data.positions[5])


def test_units_are_nm_and_kj_per_mol_nm(data, sample_frames):
    topology = systems.load(SYSTEM).mdtraj_topology
    ca = topology.select("name CA")[0]
    cb = topology.select("name CB")[0]
    bond = np.linalg.norm(data.positions[:, ca] - data.positions[:, cb], axis=-1)
    assert 0.14 < bond.mean() < 0.17  # C-C bond, nm
    # forces of thermal frames: tens to thousands of kJ/mol/nm per atom
    assert 100 < np.linalg.norm(data.forces[sample_frames], axis=-1).mean() < 3000
    kt = kt_kj_per_mol(data.temperature_K)
    np.testing.assert_allclose(
        data.forces_flat_kT_per_nm()[sample_frames], data.forces[sample_frames].reshape(len(sample_frames), -1) / kt, rtol=1e-6
    )


def test_energies_and_forces_match_a_fresh_openmm_evaluation(data, sample_frames):
    system = systems.load(SYSTEM)
    context = openmm.Context(
        system.openmm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    kt = kt_kj_per_mol(system.temperature)
    assert data.temperature_K == system.temperature == 300.0
    for frame in sample_frames:
        context.setPositions(data.positions[frame].astype(np.float64))
        state = context.getState(getEnergy=True, getForces=True)
        energy_kt = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kt
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        np.testing.assert_allclose(data.reduced_energy[frame], energy_kt, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(data.forces[frame], forces, rtol=1e-5, atol=1e-5 * np.abs(forces).max())


def test_dihedrals_are_mdtrajs(data, sample_frames):
    topology = systems.load(SYSTEM).mdtraj_topology
    trajectory = mdtraj.Trajectory(data.positions[sample_frames], topology)
    _, phi = mdtraj.compute_phi(trajectory)
    _, psi = mdtraj.compute_psi(trajectory)
    np.testing.assert_allclose(data.phi[sample_frames], phi[:, 0], atol=1e-6)
    np.testing.assert_allclose(data.psi[sample_frames], psi[:, 0], atol=1e-6)


def test_both_basins_are_covered(data):
    positive = data.phi > 0
    assert (~positive).sum() > MIN_FRAMES_PHI_NEGATIVE
    assert positive.sum() > MIN_FRAMES_PHI_POSITIVE
    assert (positive & (data.start_id == 1)).sum() > MIN_FRAMES_PHI_POSITIVE_FROM_ALPHA_L
    assert (~positive & (data.start_id == 0)).sum() > MIN_FRAMES_PHI_NEGATIVE


def test_frames_are_ordered_by_start_replica_and_time(data):
    assert set(np.unique(data.start_id)) == {0, 1}
    key = data.start_id.astype(np.int64) * 10**9 + data.replica.astype(np.int64) * 10**6 + data.time_ps.astype(np.int64)
    assert np.all(np.diff(key) > 0)
    for start_id in (0, 1):
        in_start = data.start_id == start_id
        replicas = np.unique(data.replica[in_start])
        np.testing.assert_array_equal(replicas, np.arange(len(replicas)))
        first = in_start & (data.replica == 0)
        np.testing.assert_allclose(data.time_ps[first], np.arange(1, first.sum() + 1))


def test_metadata_documents_provenance_and_counts(data):
    metadata = data.metadata
    assert metadata["system"] == SYSTEM and metadata["n_frames"] == data.n_frames
    assert metadata["populations_are_equilibrium"] is False
    assert "NOT equilibrium populations" in metadata["note"]
    assert metadata["integrator"] == "LangevinMiddleIntegrator"
    assert metadata["timestep_fs"] == 1.0 and metadata["friction_per_ps"] == 1.0
    assert metadata["warmup_steps"] == 50_000 and metadata["frame_interval_ps"] == 1.0
    assert metadata["forcefield_files"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert metadata["versions"]["openmm"]
    starts = metadata["starts"]
    assert [start["start_id"] for start in starts] == [0, 1]
    assert [start["start_structure"]["file"] for start in starts] == [
        "alanine_dipeptide.pdb", "alanine_dipeptide_alpha_l.pdb"
    ]
    seeds = []
    for start in starts:
        in_start = data.start_id == start["start_id"]
        assert start["n_frames"] == in_start.sum()
        assert start["n_frames_phi_positive"] == (in_start & (data.phi > 0)).sum()
        assert start["n_replicas"] == len(np.unique(data.replica[in_start]))
        for run in start["runs"]:
            first, last = run["replicas_in_file"]
            in_run = in_start & (data.replica >= first) & (data.replica <= last)
            assert run["n_frames"] == in_run.sum() and run["n_frames_phi_positive"] == (in_run & (data.phi > 0)).sum()
            assert run["command"].startswith(f"boltzgen md {SYSTEM} ") and f"--seed {run['seed']}" in run["command"]
            assert f"--start systems/data/{start['start_structure']['file']}" in run["command"]
            assert len(run["replica_seeds"]) == run["n_replicas"] == last - first + 1
            assert run["wall_s"] > 0
            seeds.append(run["seed"])
    assert len(set(seeds)) == len(seeds), "every run has its own seed"
    assert metadata["n_frames_phi_positive"] == (data.phi > 0).sum()


def test_shipped_start_structures_match_the_recorded_hashes(data):
    import hashlib

    folder = resources.files("boltzgen.systems") / "data"
    for start in data.metadata["starts"]:
        recorded = start["start_structure"]
        assert hashlib.sha256((folder / recorded["file"]).read_bytes()).hexdigest() == recorded["sha256"]


def test_unknown_system_names_those_with_reference_data():
    with pytest.raises(ValueError) as error:
        systems.reference_data("alanine_dipeptide_vacuum")
    message = str(error.value)
    assert "alanine_dipeptide_vacuum" in message and SYSTEM in message
    assert systems.systems_with_reference_data() == [SYSTEM]


def test_reference_file_is_packaged():
    """Found through importlib.resources, and matched by setup.cfg's package_data (non-editable installs)."""
    resource = resources.files("boltzgen.systems") / "data" / FILE_NAME
    assert resource.is_file()
    with resources.as_file(resource) as path:
        assert path.stat().st_size < 30e6
        with np.load(path) as archive:
            assert "metadata" in archive.files
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["boltzgen.systems"].split(",")]
    for packaged in (f"data/{FILE_NAME}", "data/README.md", "data/alanine_dipeptide_alpha_l.pdb"):
        assert any(fnmatch.fnmatch(packaged, pattern) for pattern in patterns), packaged
