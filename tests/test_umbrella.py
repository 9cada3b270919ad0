"""Umbrella sampling along phi: the restraint, MBAR against an exactly solvable case, the checks,
and a tiny end-to-end CLI run (resume, reproducibility, redoing the MBAR from umbrella.npz)."""

from __future__ import annotations

import numpy as np
import pytest

from boltzgen import systems
from boltzgen.cli import main
from boltzgen.io import read_json
from boltzgen.umbrella import diagnostics
from boltzgen.umbrella.config import UmbrellaConfig
from boltzgen.umbrella.mbar import mbar_phi_free_energy
from boltzgen.umbrella.restraint import (
    backbone_torsions,
    bias_kj_mol,
    dihedrals,
    restraint_width,
    torsion_restraint,
    wrap_angle,
)
from boltzgen.units import kt_kj_per_mol

KT = kt_kj_per_mol(300.0)


# --- the restraint ---------------------------------------------------------------------------------


def _four_atoms_with_dihedral(angle: float) -> np.ndarray:
    """Positions [4, 3] nm whose dihedral 0-1-2-3 is ``angle`` (rad)."""
    return np.array(
        [
            [0.1, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.15, 0.0],
            [0.1 * np.cos(angle), 0.15, -0.1 * np.sin(angle)],
        ]
    )


@pytest.mark.parametrize(
    "theta_deg, center_deg",
    [(-170.0, 170.0), (170.0, -170.0), (30.0, -40.0), (179.0, -179.5), (-90.0, 90.0 - 1e-3), (0.0, 0.0), (100.0, -150.0)],
)
def test_restraint_energy_in_openmm_is_the_wrapped_harmonic(theta_deg, center_deg):
    import openmm
    from openmm import unit

    k = 500.0
    system = openmm.System()
    for _ in range(4):
        system.addParticle(12.0)
    system.addForce(torsion_restraint([0, 1, 2, 3], np.deg2rad(center_deg), k, force_group=3))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    positions = _four_atoms_with_dihedral(np.deg2rad(theta_deg))
    context.setPositions(positions)
    energy = context.getState(getEnergy=True, groups={3}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    theta = dihedrals(positions, [0, 1, 2, 3])
    assert np.rad2deg(theta) == pytest.approx(theta_deg, abs=1e-9)
    d = np.deg2rad((theta_deg - center_deg + 180.0) % 360.0 - 180.0)
    assert energy == pytest.approx(0.5 * k * d * d, rel=1e-6, abs=1e-9)
    assert float(bias_kj_mol(theta, np.deg2rad(center_deg), k)) == pytest.approx(0.5 * k * d * d, rel=1e-9, abs=1e-12)


def test_restraint_on_alanine_dipeptide_phi_agrees_with_mdtraj():
    import mdtraj
    import openmm
    from openmm import unit

    ad2 = systems.load("alanine_dipeptide_implicit")
    torsions = backbone_torsions(ad2.mdtraj_topology)
    frame = mdtraj.Trajectory(ad2.positions[None].astype(np.float32), ad2.mdtraj_topology)
    assert float(dihedrals(ad2.positions, torsions["phi"])) == pytest.approx(float(mdtraj.compute_phi(frame)[1][0, 0]), abs=1e-5)
    assert float(dihedrals(ad2.positions, torsions["psi"])) == pytest.approx(float(mdtraj.compute_psi(frame)[1][0, 0]), abs=1e-5)

    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(ad2.openmm_system))
    center = np.deg2rad(150.0)  # phi is near -74 degrees: the restraint wraps across +-180
    system.addForce(torsion_restraint(torsions["phi"], center, 500.0, force_group=31))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ad2.positions)
    energy = context.getState(getEnergy=True, groups={31}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    expected = bias_kj_mol(dihedrals(ad2.positions, torsions["phi"]), center, 500.0)
    assert energy == pytest.approx(float(expected), rel=1e-6)


def test_wrap_angle():
    assert wrap_angle(np.pi) == pytest.approx(-np.pi)
    assert np.allclose(wrap_angle([3 * np.pi / 2, -3 * np.pi / 2, 0.1]), [-np.pi / 2, np.pi / 2, 0.1])


# --- MBAR against an exactly solvable case ---------------------------------------------------------


def _toy_u0(phi):
    """Reduced potential on the circle: deep basin near -80 degrees, shallow one near +60, barriers."""
    return 2.0 * np.cos(phi) + 1.5 * np.cos(2 * phi - 0.5) + 0.8 * np.sin(phi)


def test_mbar_recovers_exact_free_energy_from_exactly_sampled_windows():
    grid = np.linspace(-np.pi, np.pi, 200_001)[:-1]
    p0 = np.exp(-_toy_u0(grid))
    exact_df = -np.log(p0[grid > 0].sum() / p0[grid < 0].sum())
    n_windows, k, n_samples = 24, 150.0, 400
    centers = -np.pi + 2 * np.pi * np.arange(n_windows) / n_windows
    rng = np.random.default_rng(7)
    phi_windows = []
    for center in centers:  # inverse CDF of exp(-u0 - bias) on the fine grid: exact, independent samples
        density = np.exp(-_toy_u0(grid) - bias_kj_mol(grid, center, k) / KT)
        cdf = np.cumsum(density) / density.sum()
        phi_windows.append(grid[np.searchsorted(cdf, rng.random(n_samples))])

    result = mbar_phi_free_energy(phi_windows, centers, k, KT, bins=36)

    assert np.isfinite(result.delta_f_mbar_err_kT) and 0.01 < result.delta_f_mbar_err_kT < 0.5
    assert abs(result.delta_f_kT - exact_df) < 3.5 * result.delta_f_mbar_err_kT
    edges = result.bin_edges
    p_bins = np.array([p0[(grid >= lo) & (grid < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    exact_profile = -np.log(p_bins / p_bins.sum() / np.diff(edges))
    exact_profile -= exact_profile.min()
    reference_bin = int(np.argmin(result.profile_kT))
    exact_profile -= exact_profile[reference_bin]  # the estimate is shifted to its own minimum bin
    assert result.profile_err_kT[reference_bin] == 0.0
    others = np.arange(36) != reference_bin
    z = (result.profile_kT - exact_profile)[others] / result.profile_err_kT[others]
    assert np.all(np.isfinite(z)) and np.max(np.abs(z)) < 4.0
    # the unbiased weights are normalised and reproduce P(phi > 0)
    weights = np.exp(np.concatenate(result.log_weights))
    assert weights.sum() == pytest.approx(1.0)
    assert weights[np.concatenate(phi_windows) > 0].sum() == pytest.approx(result.p_phi_positive, rel=1e-6)
    assert np.all(result.neighbour_overlap > 0.03)
    assert np.all(result.statistical_inefficiency >= 1.0)


def test_mbar_rejects_bad_input():
    centers = np.array([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="4 window centres"):
        mbar_phi_free_energy([np.zeros(5)] * 3, centers, 100.0, KT)
    with pytest.raises(ValueError, match="finite"):
        mbar_phi_free_energy([np.array([0.0, np.nan])] * 4, centers, 100.0, KT)


# --- checks ----------------------------------------------------------------------------------------


def test_drift_flag_fires_on_a_displaced_window_only():
    rng = np.random.default_rng(0)
    width = restraint_width(500.0, KT)
    center = np.deg2rad(130.0)
    good = wrap_angle(center + rng.normal(0.0, width, 500))
    _, flags = diagnostics.window_phi_checks(good, center, width, window=3, repeat=0, force_constant=500.0)
    assert flags == []

    pushed = wrap_angle(center + 1.8 * width + rng.normal(0.0, width, 500))
    stats, flags = diagnostics.window_phi_checks(pushed, center, width, window=3, repeat=0, force_constant=500.0)
    assert [f["kind"] for f in flags] == ["drift"] and "pushed" in flags[0]["reason"]
    assert stats["offset_widths"] == pytest.approx(1.8, abs=0.2)

    # the failure seen here: the 130-degree window sat at 80 degrees in one run (METHODS.md §0)
    escaped = wrap_angle(np.deg2rad(80.0) + rng.normal(0.0, width, 500))
    _, flags = diagnostics.window_phi_checks(escaped, center, width, window=3, repeat=1)
    assert flags[0]["kind"] == "drift" and "escaped" in flags[0]["reason"]

    split = np.concatenate([escaped[:250], wrap_angle(np.deg2rad(179.0) + rng.normal(0.0, width, 250))])
    _, flags = diagnostics.window_phi_checks(split, center, width, window=3, repeat=1)
    assert "spread" in {f["kind"] for f in flags}


def test_drift_check_handles_windows_across_the_periodic_seam():
    rng = np.random.default_rng(1)
    width = restraint_width(500.0, KT)
    samples = wrap_angle(np.pi + rng.normal(0.0, width, 500))  # centred on +-180 degrees
    stats, flags = diagnostics.window_phi_checks(samples, -np.pi, width, window=0, repeat=0)
    assert flags == [] and abs(stats["mean_offset_deg"]) < 1.0


def test_psi_transitions_and_slow_psi_flag():
    alpha, beta = np.deg2rad(-40.0), np.deg2rad(150.0)
    transition_region = np.deg2rad(95.0)
    series = np.array([alpha, alpha, transition_region, beta, beta, transition_region, beta, alpha, alpha])
    assert diagnostics.psi_transitions(series) == 2
    assert list(diagnostics.psi_cores(series)) == [0, 0, -1, 1, 1, -1, 1, 0, 0]

    fast = np.tile(np.repeat([alpha, beta], 5), 10)  # 19 transitions in 100 frames
    stuck_alpha = np.full(100, alpha)
    stuck_beta = np.full(100, beta)
    stats = [diagnostics.psi_statistics(s, 1.0) for s in (fast, fast)]
    assert stats[0]["psi_transitions"] == 19 and stats[0]["psi_beta_fraction"] == pytest.approx(0.5)
    assert diagnostics.psi_flags(stats, 0.5, window=2, center=0.0) == []
    stuck = [diagnostics.psi_statistics(s, 1.0) for s in (stuck_alpha, stuck_beta)]
    flags = diagnostics.psi_flags(stuck, 0.5, window=2, center=0.0)
    assert len(flags) == 1 and flags[0]["kind"] == "psi_slow"
    assert "transitions" in flags[0]["reason"] and "disagree" in flags[0]["reason"]
    # a window that is in one basin only, in every repeat, has nothing to mix
    assert diagnostics.psi_flags([stuck[0], stuck[0]], 0.0, window=2, center=0.0) == []


def test_repeat_consistency_flags_repeats_that_disagree_beyond_their_mbar_errors():
    result, flags = diagnostics.repeat_consistency([1.0, 1.05, 0.98], [0.1, 0.1, 0.1])
    assert flags == [] and result["dof"] == 2
    result, flags = diagnostics.repeat_consistency([1.0, 2.6], [0.05, 0.08])
    assert flags and flags[0]["kind"] == "repeats_disagree" and result["p_value"] < 0.01


def test_config_validation_and_seeds():
    base = dict(
        system="alanine_dipeptide_implicit", n_windows=36, force_constant=500.0, ps_per_window=10.0,
        repeats=2, seed=3, platform="Reference", temperature_K=300.0, friction_per_ps=1.0,
    )
    config = UmbrellaConfig(**base)
    assert np.rad2deg(config.centers_rad[[0, 1, -1]]) == pytest.approx([-180.0, -170.0, 170.0])
    seeds = {config.window_seeds(r, k) for r in range(2) for k in range(36)} | {config.chain_seeds(0), config.chain_seeds(1)}
    assert len(seeds) == 74
    assert UmbrellaConfig(**base).window_seeds(1, 5) == config.window_seeds(1, 5)
    assert UmbrellaConfig.from_dict(config.to_dict()) == config
    for change, message in [
        ({"n_windows": 3}, "at least 4"),
        ({"force_constant": 0.0}, "force constant"),
        ({"ps_per_window": 2.5}, "whole number"),
        ({"repeats": 0}, "repeats"),
    ]:
        with pytest.raises(ValueError, match=message):
            UmbrellaConfig(**{**base, **change})


# --- end to end --------------------------------------------------------------------------------------

TINY = [
    "--windows", "6", "--force-constant", "20", "--ps-per-window", "4", "--repeats", "2",
    "--equilibration-ps", "1", "--seeding-ps", "1", "--seed", "5", "--platform", "Reference", "--quiet",
]


def _single_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_tiny_cli_run_writes_a_complete_summary_resumes_and_can_be_reanalysed(tmp_path, capsys):
    out = tmp_path / "umbrella"
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY]) == 0
    assert "dF = F(phi>0) - F(phi<0)" in capsys.readouterr().out
    summary = read_json(out / "summary.json")
    for key in ("delta_f_kT", "delta_f_err_kT", "delta_f_pooled_kT", "wall_s", "force_constant_kj_mol_rad2"):
        assert np.isfinite(summary[key]), key
    assert len(summary["delta_f_mbar_err_kT"]) == 2 and np.all(np.isfinite(summary["delta_f_mbar_err_kT"]))
    assert summary["n_windows"] == 6 and summary["ps_per_window"] == 4.0 and summary["repeats"] == 2
    assert [s["name"] for s in summary["starts"]] == ["c7eq", "alpha_l"]
    assert np.isclose(np.mean(summary["delta_f_per_repeat_kT"]), summary["delta_f_kT"])
    profile = summary["profile"]
    assert len(profile["bin_centers_deg"]) == 36 and len(profile["free_energy_kT"]) == 36
    assert isinstance(summary["flags"], list) and all({"kind", "reason"} <= set(f) for f in summary["flags"])
    assert len(summary["windows"]) == 6 and "psi_transitions" in summary["windows"][0]["repeats"][0]
    for name in ("profile.png", "umbrella.npz", "frames.npz", "run.json"):
        assert (out / name).is_file()

    # anyone can redo the MBAR from umbrella.npz
    with np.load(out / "umbrella.npz") as data:
        assert data["u_kln"].shape == (2, 6, 6, 4) and data["phi"].shape == (2, 6, 4)
        kt = float(data["kt_kj_mol"])
        k = float(data["force_constant_kj_mol_rad2"])
        redone = mbar_phi_free_energy(list(data["phi"][1]), data["centers_rad"], k, kt)
        u_diag = data["u_kln"][0, 2, 2] - data["reduced_potential"][0, 2]
        assert np.allclose(u_diag, bias_kj_mol(data["phi"][0, 2], data["centers_rad"][2], k) / kt)
    assert redone.delta_f_kT == pytest.approx(summary["delta_f_per_repeat_kT"][1], rel=1e-6)

    # same command again: nothing to do
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY]) == 0
    assert "nothing to do" in capsys.readouterr().out

    # an interrupted run redoes only the missing windows, and reproduces them exactly (same seeds)
    lost = out / "windows" / "r01_w003.npz"
    kept = out / "windows" / "r00_w000.npz"
    with np.load(lost) as data:
        phi_before = data["phi"].copy()
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    (out / "summary.json").unlink()
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert kept.stat().st_mtime_ns == kept_mtime
    with np.load(lost) as data:
        assert np.array_equal(data["phi"], phi_before)
    assert read_json(out / "summary.json")["delta_f_kT"] == pytest.approx(summary["delta_f_kT"])

    # other settings in the same directory: one clear error
    changed = [a if a != "5" else "6" for a in TINY]
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *changed]) == 2
    assert "other settings" in _single_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["alanine_dipeptide_implicit", "--windows", "2"], "at least 4"),
        (["alanine_dipeptide_implicit", "--ps-per-window", "2.5"], "whole number"),
        (["alanine_dipeptide_implicit", "--platform", "NoSuchPlatform"], "NoSuchPlatform"),
        (["no_such_system"], "unknown system"),
        (["double_well"], "toy system"),
    ],
)
def test_bad_settings_give_one_clear_error(tmp_path, capsys, arguments, message):
    out = tmp_path / "bad"
    command = ["umbrella", *arguments, "--out", str(out), "--quiet"]
    if "--platform" not in arguments:
        command += ["--platform", "Reference"]
    assert main(command) == 2
    assert message in _single_error_line(capsys.readouterr().err)
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "arguments, complaint",
    [
        (["--ps-per-window", "0"], "positive"),
        (["--force-constant", "-5"], "positive"),
        (["--repeats", "0"], ">= 1"),
        (["--windows", "many"], "invalid"),
        ([], "--out"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, capsys, arguments, complaint):
    out = [] if not arguments else ["--out", str(tmp_path / "bad")]
    assert main(["umbrella", "alanine_dipeptide_implicit", *out, *arguments]) == 2
    error = capsys.readouterr().err
    assert "usage: boltzgen umbrella" in error and complaint in error and "Traceback" not in error


def test_foreign_output_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY]) == 2
    assert "not a `boltzgen umbrella` output directory" in _single_error_line(capsys.readouterr().err)


# --- 2-D umbrella on (phi, psi) ------------------------------------------------------------------------


def _toy_u0_2d(phi, psi):
    """Reduced potential on the torus: the 1-D toy along phi, two psi basins, and a phi-psi coupling."""
    return _toy_u0(phi) + 1.2 * np.cos(psi - 0.4) + 0.6 * np.cos(2 * psi) + 0.7 * np.cos(phi - psi)


def test_2d_config_windows_seeds_and_default_psi_force_constant():
    from boltzgen.umbrella.config import default_psi_force_constant

    base = dict(
        system="alanine_dipeptide_implicit", n_windows=4, force_constant=500.0, ps_per_window=10.0,
        repeats=2, seed=3, platform="Reference", temperature_K=300.0, friction_per_ps=1.0,
    )
    one_d = UmbrellaConfig(**base)
    assert one_d.psi_windows == 1 and one_d.psi_force_constant == 0.0 and one_d.n_total_windows == 4
    config = UmbrellaConfig(**base, psi_windows=3, psi_force_constant=10.0)
    assert config.n_total_windows == 12 and config.two_dimensional
    assert np.rad2deg(config.window_phi_centers_rad[[0, 2, 3, 11]]) == pytest.approx([-180, -180, -90, 90])
    assert np.rad2deg(config.window_psi_centers_rad[[0, 1, 2, 3]]) == pytest.approx([-180, -60, 60, -180])
    assert (config.phi_index(7), config.psi_index(7)) == (2, 1)
    seeds = {config.window_seeds(r, w) for r in range(2) for w in range(12)} | {config.chain_seeds(0), config.chain_seeds(1)}
    assert len(seeds) == 26
    assert UmbrellaConfig.from_dict(config.to_dict()) == config
    # a run.json written before psi windows existed reads as a 1-D run
    old = one_d.to_dict()
    del old["psi_windows"], old["psi_force_constant"]
    assert UmbrellaConfig.from_dict(old) == one_d
    # default: restraint width 0.45 of the psi spacing
    k12 = default_psi_force_constant(12, KT)
    assert np.rad2deg(restraint_width(k12, KT)) == pytest.approx(0.45 * 30.0, rel=2e-3)
    assert default_psi_force_constant(1, KT) == 0.0
    with pytest.raises(ValueError, match="needs psi windows"):
        UmbrellaConfig(**base, psi_force_constant=10.0)
    with pytest.raises(ValueError, match="psi force constant must be positive"):
        UmbrellaConfig(**base, psi_windows=3)


def test_2d_mbar_recovers_exact_free_energy_from_exactly_sampled_windows():
    n_grid = 240
    axis = -np.pi + (np.arange(n_grid) + 0.5) * 2 * np.pi / n_grid  # no grid point at phi = 0
    phi_grid, psi_grid = np.meshgrid(axis, axis, indexing="ij")
    phi_flat, psi_flat = phi_grid.ravel(), psi_grid.ravel()
    u0 = _toy_u0_2d(phi_flat, psi_flat)
    p0 = np.exp(-(u0 - u0.min()))
    exact_df = -np.log(p0[phi_flat > 0].sum() / p0[phi_flat < 0].sum())
    n_phi, n_psi, k_phi, n_samples = 12, 4, 60.0, 150
    from boltzgen.umbrella.config import default_psi_force_constant

    k_psi = default_psi_force_constant(n_psi, KT)
    phi_c = np.repeat(-np.pi + 2 * np.pi * np.arange(n_phi) / n_phi, n_psi)
    psi_c = np.tile(-np.pi + 2 * np.pi * np.arange(n_psi) / n_psi, n_phi)
    rng = np.random.default_rng(11)
    phi_windows, psi_windows = [], []
    for a, b in zip(phi_c, psi_c):  # exact, independent samples of the biased grid density
        density = p0 * np.exp(-(bias_kj_mol(phi_flat, a, k_phi) + bias_kj_mol(psi_flat, b, k_psi)) / KT)
        idx = rng.choice(len(density), size=n_samples, p=density / density.sum())
        phi_windows.append(phi_flat[idx])
        psi_windows.append(psi_flat[idx])

    result = mbar_phi_free_energy(
        phi_windows, phi_c, k_phi, KT, psi_windows=psi_windows, psi_centers_rad=psi_c, psi_force_constant=k_psi,
        n_bootstrap=30,
    )
    assert np.isfinite(result.delta_f_mbar_err_kT) and 0.01 < result.delta_f_mbar_err_kT < 0.5
    assert abs(result.delta_f_kT - exact_df) < 3.5 * result.delta_f_mbar_err_kT
    # the phi profile (36 bins) against the exact marginal
    edges = result.bin_edges
    p_phi = p0.reshape(n_grid, n_grid).sum(axis=1)
    p_bins = np.array([p_phi[(axis >= lo) & (axis < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    exact_profile = -np.log(p_bins / p_bins.sum() / np.diff(edges))
    reference_bin = int(np.argmin(result.profile_kT))
    exact_profile -= exact_profile[reference_bin]
    others = np.arange(36) != reference_bin
    z = (result.profile_kT - exact_profile)[others] / result.profile_err_kT[others]
    assert np.all(np.isfinite(z)) and np.max(np.abs(z)) < 4.5
    # overlap is reported along both directions; the weights are normalised
    assert result.psi_neighbour_overlap is not None and np.all(result.psi_neighbour_overlap > 0.03)
    assert np.all(result.neighbour_overlap > 0.03)
    assert np.exp(np.concatenate(result.log_weights)).sum() == pytest.approx(1.0)
    # the unbiased psi distribution is recovered too (the weights undo both restraints)
    weights = np.exp(np.concatenate(result.log_weights))
    psi_all = np.concatenate(psi_windows)
    exact_alpha = p0[np.abs(psi_flat) < np.pi / 2].sum() / p0.sum()
    assert weights[np.abs(psi_all) < np.pi / 2].sum() == pytest.approx(exact_alpha, abs=0.05)


def test_2d_seeding_chain_reaches_every_window():
    from boltzgen.md.config import replica_seeds
    from boltzgen.umbrella.starts import RestrainedSimulation, seed_windows_2d

    ad2 = systems.load("alanine_dipeptide_implicit")
    torsions = backbone_torsions(ad2.mdtraj_topology)
    import openmm

    phi_c = np.deg2rad([-180.0, -90.0, 0.0, 90.0])
    psi_c = np.deg2rad([-180.0, -60.0, 60.0])
    seeds = replica_seeds(1, 1)[0]
    simulation = RestrainedSimulation(
        openmm.XmlSerializer.serialize(ad2.openmm_system), torsions["phi"], 300.0, 0.0,
        temperature_K=300.0, friction_per_ps=1.0, timestep_fs=1.0, platform="Reference",
        integrator_seed=seeds.integrator_seed, psi_atoms=torsions["psi"], psi_center_rad=0.0, psi_force_constant=300.0,
    )
    visited = []
    positions = seed_windows_2d(
        simulation, ad2.positions, phi_c, psi_c, torsions["phi"], torsions["psi"], 1500, seeds.velocity_seed,
        report=visited.append,
    )
    assert positions.shape == (12, ad2.positions.shape[0], 3) and np.all(np.isfinite(positions))
    assert sorted(visited) == list(range(12))
    phi = dihedrals(positions, torsions["phi"])
    psi = dihedrals(positions, torsions["psi"])
    assert np.all(np.abs(np.rad2deg(wrap_angle(phi - np.repeat(phi_c, 3)))) < 30.0)
    assert np.all(np.abs(np.rad2deg(wrap_angle(psi - np.tile(psi_c, 4)))) < 30.0)


TINY_2D = [
    "--windows", "4", "--psi-windows", "2", "--force-constant", "20", "--psi-force-constant", "5",
    "--ps-per-window", "4", "--repeats", "1", "--equilibration-ps", "1", "--seeding-ps", "1", "--seed", "5",
    "--platform", "Reference", "--quiet",
]


def test_tiny_2d_cli_run_finishes_resumes_and_its_bias_is_the_openmm_restraint(tmp_path, capsys):
    import openmm
    from openmm import unit

    from boltzgen.umbrella.restraint import CENTER_PARAMETER, PSI_CENTER_PARAMETER

    out = tmp_path / "umbrella2d"
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY_2D]) == 0
    printed = capsys.readouterr().out
    assert "2-D umbrella on (phi, psi): 4 phi x 2 psi windows" in printed and "dF = F(phi>0)" in printed
    summary = read_json(out / "summary.json")
    assert np.isfinite(summary["delta_f_kT"]) and np.isfinite(summary["delta_f_mbar_err_kT"][0])
    assert summary["psi_windows"] == 2 and summary["psi_force_constant_kj_mol_rad2"] == 5.0
    assert summary["n_total_windows"] == 8 and len(summary["windows"]) == 8
    assert [w["psi_center_deg"] for w in summary["windows"][:2]] == pytest.approx([-180.0, 0.0])
    assert "psi_spread_widths" in summary["windows"][0]["repeats"][0]
    free = np.array([np.nan if v is None else v for v in summary["profile"]["free_energy_kT"]])
    assert len(free) == 36 and np.isfinite(free).sum() >= 4 and np.nanmin(free) == 0.0
    assert read_json(out / "run.json")["config"]["psi_windows"] == 2
    assert sorted(p.name for p in (out / "windows").iterdir()) == [f"r00_w{w:03d}.npz" for w in range(8)]

    # the reduced bias MBAR used = the OpenMM restraint energies (a Context holding only the restraints)
    ad2 = systems.load("alanine_dipeptide_implicit")
    torsions = backbone_torsions(ad2.mdtraj_topology)
    system = openmm.System()
    for _ in range(ad2.positions.shape[0]):
        system.addParticle(1.0)
    system.addForce(torsion_restraint(torsions["phi"], 0.0, 20.0, force_group=0))
    system.addForce(torsion_restraint(torsions["psi"], 0.0, 5.0, force_group=0, psi=True))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    with np.load(out / "umbrella.npz") as data, np.load(out / "frames.npz") as frames:
        u_kln = data["u_kln"][0]
        u0 = data["reduced_potential"][0]
        kt = float(data["kt_kj_mol"])
        phi_c, psi_c = data["centers_rad"], data["psi_centers_rad"]
        assert u_kln.shape == (8, 8, 4) and float(data["psi_force_constant_kj_mol_rad2"]) == 5.0
        positions = frames["positions"][0]
        for k in range(8):
            for t in (0, 3):
                context.setPositions(positions[k, t].astype(np.float64))
                for window in range(8):
                    context.setParameter(CENTER_PARAMETER, float(phi_c[window]))
                    context.setParameter(PSI_CENTER_PARAMETER, float(psi_c[window]))
                    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                    assert u_kln[k, window, t] - u0[k, t] == pytest.approx(energy / kt, rel=1e-4, abs=1e-5)
        # redoing the MBAR from umbrella.npz reproduces the summary
        redone = mbar_phi_free_energy(
            list(data["phi"][0]), phi_c, float(data["force_constant_kj_mol_rad2"]), kt, psi_windows=list(data["psi"][0]),
            psi_centers_rad=psi_c, psi_force_constant=float(data["psi_force_constant_kj_mol_rad2"]),
        )
    assert redone.delta_f_kT == pytest.approx(summary["delta_f_per_repeat_kT"][0], rel=1e-6)
    with np.load(out / "windows" / "r00_w005.npz") as window:
        assert np.allclose(window["bias_kT"], u_kln[5, 5] - u0[5])

    # resume: a lost window is redone exactly, the others are kept
    lost = out / "windows" / "r00_w005.npz"
    with np.load(lost) as data:
        psi_before = data["psi"].copy()
    lost.unlink()
    (out / "summary.json").unlink()
    assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *TINY_2D]) == 0
    capsys.readouterr()
    with np.load(lost) as data:
        assert np.array_equal(data["psi"], psi_before)
    assert read_json(out / "summary.json")["delta_f_kT"] == pytest.approx(summary["delta_f_kT"])

    # the compact reference records the 2-D protocol
    from boltzgen.umbrella.reference import compact_reference

    record = compact_reference(out)
    assert record["protocol"]["psi_windows"] == 2 and record["protocol"]["psi_force_constant_kj_mol_rad2"] == 5.0
    assert record["protocol"]["method"].startswith("2-D") and "psi_center_deg" in record["windows"][0]

    # other psi settings, or a 1-D command, in the same directory: one clear error
    for changed in (
        [a if a != "5" or i != TINY_2D.index("--psi-force-constant") + 1 else "6" for i, a in enumerate(TINY_2D)],
        [a if a != "2" else "3" for a in TINY_2D],
        [a for i, a in enumerate(TINY_2D) if i not in (2, 3, 6, 7)],
    ):
        assert main(["umbrella", "alanine_dipeptide_implicit", "--out", str(out), *changed]) == 2
        assert "other settings" in _single_error_line(capsys.readouterr().err)


def test_psi_force_constant_without_psi_windows_is_an_error(tmp_path, capsys):
    command = ["umbrella", "alanine_dipeptide_implicit", "--out", str(tmp_path / "x"), "--psi-force-constant", "5",
               "--platform", "Reference", "--quiet"]
    assert main(command) == 2
    assert "needs psi windows" in _single_error_line(capsys.readouterr().err)


def test_combining_umbrella_records_weights_every_repeat_equally():
    from boltzgen.umbrella.reference import combine_compact_references

    edges = [-180.0, 0.0, 180.0]

    def record(values, errors, profiles):
        return {
            "system": "s", "description": "d", "observable": "o", "delta_f_mbar_err_method": "m",
            "delta_f_per_repeat_kT": values, "delta_f_mbar_err_kT": errors, "windows": [{"big": 1}],
            "profile": {"bin_edges_deg": edges, "bin_edges_rad": [np.radians(e) for e in edges],
                        "bin_centers_deg": [-90.0, 90.0], "per_repeat_free_energy_kT": profiles},
        }

    a = record([3.0, 4.0], [0.5, 0.5], [[0.0, 3.0], [0.0, 4.0]])
    b = record([5.0], [1.0], [[0.0, 5.0]])
    combined = combine_compact_references([a, b], note="why")
    assert combined["delta_f_kT"] == 4.0
    assert combined["delta_f_err_kT"] == pytest.approx(1.0 / np.sqrt(3), abs=1e-4)  # rounded to 4 digits
    assert combined["delta_f_err_from_mbar_kT"] == pytest.approx(np.sqrt(1.5) / 3, abs=1e-4)
    assert combined["repeat_consistency"]["dof"] == 2
    assert combined["profile"]["free_energy_kT"] == [0.0, 4.0]
    assert combined["p_phi_positive"] == pytest.approx(1 / (1 + np.exp(4.0)), abs=1e-5)
    assert combined["note"] == "why" and len(combined["runs"]) == 2 and "windows" not in combined["runs"][0]
    with pytest.raises(ValueError, match="different observable"):
        combine_compact_references([a, {**b, "observable": "other"}])
    with pytest.raises(ValueError, match="at least two"):
        combine_compact_references([a])
