"""Reference MD (`boltzgen.md`): data format, physics of the saved frames, seeds, resume, errors.

Runs are tiny (alanine dipeptide, a few ps, short warm-up) on the Reference platform, which is
deterministic: the same seed must give bit-identical trajectories, also across interruptions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import unit

from boltzgen import systems
from boltzgen.errors import BoltzgenError
from boltzgen.io import read_json
from boltzgen.md import load_trajectory, replica_seeds, run_md
from boltzgen.units import kt_kj_per_mol

SYSTEM = "alanine_dipeptide_implicit"
#: Shared by the reference run and the interrupted runs, so that their data must be identical.
SETTINGS = dict(ns=0.02, n_replicas=2, seed=11, platform="Reference", warmup_steps=200, n_workers=2, quiet=True)
N_FRAMES = 20
N_ATOMS = 22
ARRAYS = ("positions", "forces", "potential_energy", "reduced_energy", "time_ps")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run with SETTINGS (2 replicas x 20 frames)."""
    directory = tmp_path_factory.mktemp("md") / "reference"
    result = run_md(SYSTEM, directory, **SETTINGS)
    assert result.status == "finished"
    return directory


def _arrays(directory: Path) -> dict[str, np.ndarray]:
    with np.load(directory / "trajectory.npz") as data:
        return {name: data[name] for name in ARRAYS}


def test_files_shapes_and_dtypes(reference_run):
    for name in ("trajectory.npz", "metadata.json", "summary.json", "topology.pdb", "system.xml", "run.json"):
        assert (reference_run / name).is_file(), name
    assert not (reference_run / "replicas").exists(), "work areas must be removed after merging"
    with np.load(reference_run / "trajectory.npz") as data:  # plain numpy, no pickles
        assert data["positions"].shape == (2, N_FRAMES, N_ATOMS, 3) and data["positions"].dtype == np.float32
        assert data["forces"].shape == (2, N_FRAMES, N_ATOMS, 3) and data["forces"].dtype == np.float32
        assert data["potential_energy"].shape == (2, N_FRAMES) and data["potential_energy"].dtype == np.float64
        assert data["reduced_energy"].shape == (2, N_FRAMES) and data["reduced_energy"].dtype == np.float64
        np.testing.assert_allclose(data["time_ps"], np.arange(1, N_FRAMES + 1))
        assert json.loads(str(data["metadata"])) == read_json(reference_run / "metadata.json")
    loaded = load_trajectory(reference_run)
    assert loaded.n_replicas == 2 and loaded.n_frames == N_FRAMES
    np.testing.assert_array_equal(loaded.positions, _arrays(reference_run)["positions"])


def test_metadata_is_complete(reference_run):
    metadata = load_trajectory(reference_run).metadata
    system = systems.load(SYSTEM)
    assert metadata["system"] == SYSTEM
    assert metadata["description"] == system.description
    assert metadata["forcefield_files"] == ["amber99sbildn.xml", "amber99_obc.xml"]
    assert metadata["temperature_K"] == 300.0
    assert metadata["integrator"] == "LangevinMiddleIntegrator"
    assert metadata["timestep_fs"] == 1.0 and metadata["friction_per_ps"] == 1.0
    assert metadata["frame_interval_ps"] == 1.0 and metadata["steps_per_frame"] == 1000
    assert metadata["warmup_steps"] == 200
    assert metadata["platform"] == "Reference"
    assert metadata["seed"] == 11
    expected_seeds = replica_seeds(11, 2)
    assert [(s["integrator_seed"], s["velocity_seed"]) for s in metadata["replica_seeds"]] == [
        (s.integrator_seed, s.velocity_seed) for s in expected_seeds
    ]
    assert len({s.integrator_seed for s in expected_seeds}) == 2
    assert metadata["versions"]["openmm"] == openmm.__version__
    for package in ("boltzgen", "torch", "numpy", "mdtraj", "python"):
        assert metadata["versions"][package]
    assert metadata["date_started_utc"] <= metadata["date_finished_utc"]
    assert metadata["units"]["forces"] == "kJ/mol/nm"


def test_energies_and_forces_are_those_of_the_saved_positions(reference_run):
    data = _arrays(reference_run)
    system = systems.load(SYSTEM)  # built afresh, not from the run's system.xml
    context = openmm.Context(
        system.openmm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    for replica in range(2):
        for frame in (0, 7, N_FRAMES - 1):
            context.setPositions(data["positions"][replica, frame].astype(np.float64))
            state = context.getState(getEnergy=True, getForces=True)
            energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            np.testing.assert_allclose(data["potential_energy"][replica, frame], energy, rtol=1e-4)
            np.testing.assert_allclose(
                data["forces"][replica, frame], forces, rtol=1e-4, atol=1e-4 * np.abs(forces).max()
            )
    np.testing.assert_allclose(data["reduced_energy"], data["potential_energy"] / kt_kj_per_mol(300.0), rtol=1e-12)


def test_frames_follow_dynamics_and_replicas_differ(reference_run):
    positions = _arrays(reference_run)["positions"].astype(np.float64)
    # 1 ps apart at 300 K: atoms move, but by far less than the molecule's size
    displacement = np.sqrt(((positions[:, 1:] - positions[:, :-1]) ** 2).sum(-1)).mean()
    assert 0.01 < displacement < 0.3
    assert np.abs(positions[0] - positions[1]).max() > 0.05
    energies = _arrays(reference_run)["potential_energy"]
    assert not np.array_equal(energies[0], energies[1])


def test_dcd_trajectories_load_with_mdtraj(reference_run):
    positions = _arrays(reference_run)["positions"]
    for replica in range(2):
        trajectory = mdtraj.load(str(reference_run / f"replica_{replica:03d}.dcd"), top=str(reference_run / "topology.pdb"))
        assert trajectory.n_frames == N_FRAMES and trajectory.n_atoms == N_ATOMS
        np.testing.assert_allclose(trajectory.xyz, positions[replica], atol=1e-5)
    assert load_trajectory(reference_run).mdtraj().n_frames == 2 * N_FRAMES


def test_summary_counts_phi_basins(reference_run):
    summary = read_json(reference_run / "summary.json")
    assert summary["n_replicas"] == 2 and summary["n_frames"] == 2 * N_FRAMES
    assert summary["simulated_ns"] == pytest.approx(0.04)
    assert summary["platform"] == "Reference"
    assert summary["wall_s"] > 0 and summary["ns_per_day"] > 0 and summary["ns_per_day_per_core"] > 0
    [phi_stats] = summary["phi_positive"]
    trajectory = load_trajectory(reference_run).mdtraj()
    _, phi = mdtraj.compute_phi(trajectory)
    positive = (phi[:, 0] > 0).reshape(2, N_FRAMES)
    assert phi_stats["n_frames_phi_positive"] == int(positive.sum())
    assert phi_stats["n_frames_phi_positive_per_replica"] == [int(n) for n in positive.sum(axis=1)]
    assert phi_stats["fraction_phi_positive"] == pytest.approx(positive.mean())
    assert len(phi_stats["fraction_phi_positive_blocks"]) == 10
    assert phi_stats["block_length_ps"] == pytest.approx(2.0)
    np.testing.assert_allclose(
        phi_stats["fraction_phi_positive_blocks"], positive.reshape(2, 10, 2).mean(axis=(0, 2))
    )


def test_same_seed_same_data_other_seed_other_data(ad2, reference_run, tmp_path):
    settings = dict(SETTINGS, ns=0.003, n_replicas=1)
    first = run_md(ad2, tmp_path / "a", **settings)
    again = run_md(ad2, tmp_path / "b", **settings)
    other = run_md(ad2, tmp_path / "c", **dict(settings, seed=12))
    assert first.status == again.status == other.status == "finished"
    a, b, c = (_arrays(tmp_path / name)["positions"] for name in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # replica 0 depends on the seed and its index only: it starts like replica 0 of the 20 ps run
    np.testing.assert_array_equal(a[0], _arrays(reference_run)["positions"][0, :3])


def test_stopped_run_resumes_to_identical_data(reference_run, tmp_path):
    directory = tmp_path / "resumed"
    stopped = run_md(SYSTEM, directory, **SETTINGS, frames_per_chunk=3, max_frames_this_session=7)
    assert stopped.status == "stopped" and stopped.frames_done == 14
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_trajectory(directory)
    state = read_json(directory / "replicas" / "r000" / "state.json")
    assert state["frames_done"] == 7
    finished = run_md(SYSTEM, directory, **SETTINGS, frames_per_chunk=3)
    assert finished.status == "finished"
    resumed, reference = _arrays(directory), _arrays(reference_run)
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)


_KILLED_RUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from boltzgen.md import run_md

    if __name__ == "__main__":
        run_md(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]), frames_per_chunk=1)
    """
)


def test_killed_run_resumes_to_identical_data(reference_run, tmp_path):
    """SIGKILL the main process mid-run; its workers notice, and a rerun completes the same data."""
    directory = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN_SCRIPT, SYSTEM, str(directory), json.dumps(SETTINGS)],
        # not the repository root: there `python -c` would import the source tree's boltzgen,
        # which lacks boltzgen.systems (installed from the top-level systems/ folder)
        cwd=tmp_path,
    )
    state_files = [directory / "replicas" / f"r{r:03d}" / "state.json" for r in range(2)]
    deadline = time.monotonic() + 60
    try:
        while not any(path.exists() and read_json(path)["frames_done"] >= 2 for path in state_files):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no frames committed within 60 s"
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (directory / "trajectory.npz").exists(), "the run finished before it was killed"
    result = run_md(SYSTEM, directory, **SETTINGS)
    assert result.status == "finished"
    killed, reference = _arrays(directory), _arrays(reference_run)
    for name in ARRAYS:
        np.testing.assert_array_equal(killed[name], reference[name], err_msg=name)


def test_finished_run_is_not_run_again(reference_run):
    before = {p.name: p.stat().st_mtime_ns for p in reference_run.iterdir()}
    result = run_md(SYSTEM, reference_run, **SETTINGS)
    assert result.status == "already finished"
    assert result.summary == read_json(reference_run / "summary.json")
    assert {p.name: p.stat().st_mtime_ns for p in reference_run.iterdir()} == before


@pytest.mark.parametrize(
    "change, named", [({"ns": 0.03}, "ns"), ({"seed": 12}, "seed"), ({"friction_per_ps": 0.3}, "friction_per_ps")]
)
def test_other_settings_into_existing_directory_are_refused(reference_run, change, named):
    with pytest.raises(BoltzgenError, match=rf"other settings: {named}="):
        run_md(SYSTEM, reference_run, **dict(SETTINGS, **change))


def test_rerun_without_seed_or_platform_uses_the_stored_ones(reference_run):
    settings = {k: v for k, v in SETTINGS.items() if k not in ("seed", "platform")}
    assert run_md(SYSTEM, reference_run, **settings).status == "already finished"


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BoltzgenError, match="not a `boltzgen md` output directory"):
        run_md(SYSTEM, tmp_path, **SETTINGS)


@pytest.fixture(scope="module")
def ad2() -> systems.MolecularSystem:
    return systems.load(SYSTEM)


def test_toy_system_and_invalid_settings_are_refused(ad2, tmp_path):
    toy = systems.ToySystem(name="toy", description="a toy", toy_energy=None, positions=np.zeros(2))
    with pytest.raises(BoltzgenError, match="'toy' is a toy system"):
        run_md(toy, tmp_path / "toy", ns=0.001)
    with pytest.raises(ValueError, match="unknown system"):
        run_md("no_such_system", tmp_path / "x", ns=0.001)
    with pytest.raises(ValueError, match="ns must be positive"):
        run_md(ad2, tmp_path / "x", ns=-1.0)
    with pytest.raises(ValueError, match="whole number"):
        run_md(ad2, tmp_path / "x", ns=0.0015)
    with pytest.raises(ValueError, match="at least 1"):
        run_md(ad2, tmp_path / "x", ns=0.001, n_replicas=0)
    with pytest.raises(ValueError, match="friction"):
        run_md(ad2, tmp_path / "x", ns=0.001, friction_per_ps=float("nan"))
    with pytest.raises(ValueError, match="unknown OpenMM platform"):
        run_md(ad2, tmp_path / "x", ns=0.001, platform="NoSuchPlatform")
    assert not (tmp_path / "x").exists() and not (tmp_path / "toy").exists()


def test_replica_seeds_are_distinct_valid_and_stable():
    seeds = replica_seeds(2024, 8)
    values = [s.integrator_seed for s in seeds] + [s.velocity_seed for s in seeds]
    assert len(set(values)) == 16
    assert all(1 <= v < 2**31 for v in values)
    assert replica_seeds(2024, 3) == seeds[:3]
    assert replica_seeds(2025, 1) != seeds[:1]


def test_recovery_drops_uncommitted_files(tmp_path):
    """What a kill between writing a chunk and committing it leaves behind is cleaned up."""
    from boltzgen.md.replica_store import ReplicaStore

    store = ReplicaStore(tmp_path / "r000")
    frames = lambda n: (np.zeros((n, N_ATOMS, 3)), np.ones((n, N_ATOMS, 3)), np.arange(n, dtype=float))  # noqa: E731
    store.directory.mkdir()
    store.commit(0, b"after warm-up", 0.0, 0)
    store.write_chunk(0, *frames(2))
    store.commit(2, b"after frame 2", 1.0, 2000)
    store.write_chunk(2, *frames(3))  # killed before the commit of frames 2..4
    (store.directory / "checkpoint_00000005.chk").write_bytes(b"uncommitted")
    (store.directory / ".frames_00000005_00000006.npz.x1.tmp.npz").write_bytes(b"partial")
    progress = store.recover()
    assert progress.frames_done == 2 and progress.checkpoint == b"after frame 2"
    assert progress.production_steps == 2000
    assert sorted(p.name for p in store.directory.iterdir()) == [
        "checkpoint_00000002.chk", "frames_00000000_00000002.npz", "state.json"
    ]
    assert [chunk.shape for chunk in store.iter_frames("positions")] == [(2, N_ATOMS, 3)]
    (store.directory / "frames_00000000_00000002.npz").unlink()
    with pytest.raises(BoltzgenError, match="damaged"):
        store.recover()


def test_blow_up_is_a_clear_error_and_commits_nothing_bad(ad2, tmp_path):
    with pytest.raises(BoltzgenError, match="blew up|dynamics failed"):
        run_md(ad2, tmp_path / "boom", ns=0.005, platform="Reference", seed=1, warmup_steps=0, timestep_fs=50.0, quiet=True)
    assert read_json(tmp_path / "boom" / "replicas" / "r000" / "state.json")["frames_done"] == 0


# --- starting structures from a file (--start) ------------------------------------------------

ALPHA_L_PDB = Path(systems.__file__).parent / "data" / "alanine_dipeptide_alpha_l.pdb"
C7EQ_PDB = Path(systems.__file__).parent / "data" / "alanine_dipeptide.pdb"
TINY_START_SETTINGS = dict(ns=0.003, n_replicas=1, seed=5, platform="Reference", warmup_steps=100, n_workers=1, quiet=True)


def _phi_degrees(positions_nm: np.ndarray, topology) -> np.ndarray:
    _, phi = mdtraj.compute_phi(mdtraj.Trajectory(np.asarray(positions_nm, dtype=np.float32), topology))
    return np.degrees(phi[:, 0])


@pytest.fixture(scope="module")
def alpha_l_run(tmp_path_factory) -> Path:
    """A tiny run started from the shipped alpha_L structure (phi > 0)."""
    directory = tmp_path_factory.mktemp("md_start") / "alpha_l"
    result = run_md(SYSTEM, directory, start=ALPHA_L_PDB, **TINY_START_SETTINGS)
    assert result.status == "finished"
    return directory


def test_start_file_sets_the_starting_positions_and_is_recorded(alpha_l_run, ad2):
    import hashlib

    data = load_trajectory(alpha_l_run)
    # the system's own start is C7eq (phi < 0); a few ps after starting in alpha_L, phi is still > 0
    assert _phi_degrees(ad2.positions, ad2.mdtraj_topology)[0] < 0
    assert np.all(_phi_degrees(data.positions[0], ad2.mdtraj_topology) > 0)
    sha256 = hashlib.sha256(ALPHA_L_PDB.read_bytes()).hexdigest()
    assert data.metadata["start_structure"] == {
        "source": "file", "file": "alanine_dipeptide_alpha_l.pdb", "path": str(ALPHA_L_PDB.resolve()), "sha256": sha256
    }
    assert read_json(alpha_l_run / "run.json")["config"]["start_sha256"] == sha256
    # topology.pdb shows the structure the run started from
    assert _phi_degrees(mdtraj.load(str(alpha_l_run / "topology.pdb")).xyz, ad2.mdtraj_topology)[0] > 0


def test_run_without_start_records_the_system_positions(reference_run):
    metadata = load_trajectory(reference_run).metadata
    assert metadata["start_structure"] == {"source": "system", "file": None, "path": None, "sha256": None}
    assert read_json(reference_run / "run.json")["config"]["start_sha256"] is None


def test_other_start_into_existing_directory_is_refused(alpha_l_run, reference_run, tmp_path):
    with pytest.raises(BoltzgenError, match=r"other settings: start_sha256=.*alanine_dipeptide_alpha_l\.pdb"):
        run_md(SYSTEM, alpha_l_run, start=C7EQ_PDB, **TINY_START_SETTINGS)
    with pytest.raises(BoltzgenError, match=r"start_sha256=.*\(requested None\)"):
        run_md(SYSTEM, alpha_l_run, **TINY_START_SETTINGS)
    with pytest.raises(BoltzgenError, match=r"start_sha256=None.*started from the system positions"):
        run_md(SYSTEM, reference_run, start=C7EQ_PDB, **SETTINGS)
    # the same contents under another name is the same start
    copy = tmp_path / "renamed.pdb"
    copy.write_bytes(ALPHA_L_PDB.read_bytes())
    assert run_md(SYSTEM, alpha_l_run, start=copy, **TINY_START_SETTINGS).status == "already finished"


def test_start_file_in_other_formats_and_bad_files(ad2, tmp_path):
    from boltzgen.md.start import read_start_structure

    pdb = mdtraj.load(str(ALPHA_L_PDB))
    start = read_start_structure(ALPHA_L_PDB, ad2)
    np.testing.assert_allclose(start.positions_nm, pdb.xyz[0], atol=1e-6)
    assert start.positions_nm.shape == (N_ATOMS, 3) and start.positions_nm.dtype == np.float64

    pdb.save_dcd(str(tmp_path / "start.dcd"))  # no topology in the file: read with the system's
    np.testing.assert_allclose(read_start_structure(tmp_path / "start.dcd", ad2).positions_nm, pdb.xyz[0], atol=1e-5)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_start_structure(tmp_path / "missing.pdb", ad2)
    mdtraj.join([pdb, pdb]).save_pdb(str(tmp_path / "two.pdb"))
    with pytest.raises(ValueError, match="holds 2 frames"):
        read_start_structure(tmp_path / "two.pdb", ad2)
    pdb.atom_slice(pdb.topology.select("not element H")).save_pdb(str(tmp_path / "heavy.pdb"))
    with pytest.raises(ValueError, match="has 10 atoms; system 'alanine_dipeptide_implicit' has 22"):
        read_start_structure(tmp_path / "heavy.pdb", ad2)
    lines = ALPHA_L_PDB.read_text().splitlines()
    first, second = [i for i, line in enumerate(lines) if line.startswith(("ATOM", "HETATM"))][:2]
    lines[first], lines[second] = lines[second], lines[first]  # H1 before CH3
    (tmp_path / "swapped.pdb").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"atom 0 is H 'H1' .* but C 'CH3'"):
        read_start_structure(tmp_path / "swapped.pdb", ad2)
    (tmp_path / "garbage.pdb").write_text("not a structure\n")
    with pytest.raises(ValueError, match="cannot read start structure"):
        read_start_structure(tmp_path / "garbage.pdb", ad2)
    with pytest.raises(ValueError, match="holds 2 frames"):
        run_md(ad2, tmp_path / "never", start=tmp_path / "two.pdb", **TINY_START_SETTINGS)
    assert not (tmp_path / "never").exists()
