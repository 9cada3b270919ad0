"""The `boltzgen` command line: version, systems list, `md` runs and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import boltzgen
from boltzgen import systems
from boltzgen.cli import main
from boltzgen.io import read_json

TINY_MD = ["--ns", "0.003", "--replicas", "2", "--workers", "1", "--seed", "3", "--platform", "Reference", "--warmup-steps", "100", "--quiet"]


def _single_error_line(stderr: str) -> str:
    """The stderr of an expected error: exactly one line, no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"boltzgen {boltzgen.__version__}"


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("boltzgen")
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0 and boltzgen.__version__ in completed.stdout


def test_systems_lists_every_system_with_its_description(capsys):
    assert main(["systems"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == systems.available()
    implicit = next(line for line in lines if line.startswith("alanine_dipeptide_implicit"))
    assert "amber99sbildn" in implicit


def test_md_tiny_run_writes_summary_and_is_not_repeated(tmp_path, capsys):
    out = tmp_path / "md"
    assert main(["md", "alanine_dipeptide_implicit", *TINY_MD, "--out", str(out)]) == 0
    summary = read_json(out / "summary.json")
    assert summary["n_frames"] == 6 and summary["n_replicas"] == 2
    assert summary["simulated_ns"] == pytest.approx(0.006)
    for key in ("wall_s", "ns_per_day", "ns_per_day_per_core", "platform", "phi_positive"):
        assert key in summary
    assert (out / "replica_001.dcd").is_file()
    assert "finished" in capsys.readouterr().out

    assert main(["md", "alanine_dipeptide_implicit", *TINY_MD, "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out

    changed = [arg if arg != "3" else "4" for arg in TINY_MD]  # --seed 4
    assert main(["md", "alanine_dipeptide_implicit", *changed, "--out", str(out)]) == 2
    message = _single_error_line(capsys.readouterr().err)
    assert "seed=3 (requested 4)" in message and str(out) in message


def test_md_unknown_system_lists_the_available_ones(tmp_path, capsys):
    assert main(["md", "no_such_system", "--ns", "0.001", "--out", str(tmp_path / "x")]) == 2
    message = _single_error_line(capsys.readouterr().err)
    assert "unknown system 'no_such_system'" in message
    for name in systems.available():
        assert name in message
    assert not (tmp_path / "x").exists()


def test_md_toy_system_is_a_clear_error(tmp_path, capsys):
    assert main(["md", "double_well", "--ns", "0.001", "--out", str(tmp_path / "x")]) == 2
    message = _single_error_line(capsys.readouterr().err)
    assert "double_well" in message and "toy system" in message


def test_md_unknown_platform_is_a_clear_error(tmp_path, capsys):
    args = ["md", "alanine_dipeptide_vacuum", "--ns", "0.001", "--platform", "Nope", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "unknown OpenMM platform 'Nope'" in _single_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "bad_args, complaint",
    [
        (["--ns", "-1"], "--ns"),
        (["--ns", "0"], "--ns"),
        (["--ns", "0.001", "--replicas", "0"], "--replicas"),
        (["--ns", "0.001", "--seed", "-5"], "--seed"),
        (["--ns", "0.001", "--friction", "-1"], "--friction"),
        (["--replicas", "2"], "--ns"),
    ],
)
def test_md_bad_arguments_are_usage_errors(bad_args, complaint, tmp_path, capsys):
    assert main(["md", "alanine_dipeptide_implicit", *bad_args, "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "usage: boltzgen md" in error and complaint in error and "Traceback" not in error
    assert not (tmp_path / "x").exists()


def test_missing_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: boltzgen" in capsys.readouterr().err


def test_md_start_file_is_used_recorded_and_part_of_the_settings(tmp_path, capsys):
    data_dir = Path(systems.__file__).parent / "data"
    out = tmp_path / "md"
    args = ["md", "alanine_dipeptide_implicit", *TINY_MD, "--out", str(out)]
    assert main([*args, "--start", str(data_dir / "alanine_dipeptide_alpha_l.pdb")]) == 0
    assert read_json(out / "metadata.json")["start_structure"]["file"] == "alanine_dipeptide_alpha_l.pdb"
    capsys.readouterr()

    assert main([*args, "--start", str(data_dir / "alanine_dipeptide.pdb")]) == 2
    message = _single_error_line(capsys.readouterr().err)
    assert "start_sha256" in message and "alanine_dipeptide_alpha_l.pdb" in message and str(out) in message


def test_md_unreadable_start_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nothing.pdb"
    assert main(["md", "alanine_dipeptide_implicit", "--ns", "0.001", "--start", str(missing), "--out", str(tmp_path / "x")]) == 2
    assert f"start structure {missing} does not exist" in _single_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
