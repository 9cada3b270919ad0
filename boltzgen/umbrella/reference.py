"""A compact, shippable record of an umbrella run: the reference free energy other code checks against.

:func:`compact_reference` turns a finished run directory (its ``summary.json`` and ``run.json``)
into a small dict (read by ``boltzgen.systems.umbrella_reference``): dF with its error from repeats, per-repeat values and MBAR errors, the phi
profile with errors, the protocol, seeds, flags (kinds, counts and the windows concerned), the
command and versions. ``systems/data/alanine_dipeptide_implicit_umbrella.json`` was written by it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from boltzgen.io import read_json, write_json_atomic
from boltzgen.umbrella.storage import UmbrellaDirectory


def _rounded(values, digits: int = 4):
    if values is None:
        return None
    if isinstance(values, (list, tuple)):
        return [_rounded(v, digits) for v in values]
    return round(float(values), digits)


def compact_reference(run_dir: str | Path) -> dict[str, Any]:
    """The reference record of the finished umbrella run in ``run_dir``."""
    run = UmbrellaDirectory(run_dir)
    summary = read_json(run.summary_json)
    stored = read_json(run.run_json)
    config = stored["config"]
    flags_by_kind: dict[str, dict[str, Any]] = {}
    for flag in summary["flags"]:
        entry = flags_by_kind.setdefault(flag["kind"], {"count": 0, "center_deg": [], "examples": []})
        entry["count"] += 1
        if flag.get("center_deg") is not None and flag["center_deg"] not in entry["center_deg"]:
            entry["center_deg"].append(flag["center_deg"])
        if len(entry["examples"]) < 3:
            entry["examples"].append(flag["reason"])
    psi = [
        {
            "center_deg": w["center_deg"],
            **({"psi_center_deg": w["psi_center_deg"]} if "psi_center_deg" in w else {}),
            "psi_transitions": [r.get("psi_transitions") for r in w["repeats"]],
            "psi_beta_fraction": _rounded([r.get("psi_beta_fraction") for r in w["repeats"]], 3),
            "mean_offset_deg": _rounded([r["mean_offset_deg"] for r in w["repeats"]], 2),
        }
        for w in summary["windows"]
    ]
    profile = summary["profile"]
    psi_windows = int(summary.get("psi_windows", config.get("psi_windows", 1)) or 1)
    method = (
        f"2-D umbrella sampling on phi (C-N-CA-C) and psi (N-CA-C-N): {summary['n_windows']} x {psi_windows} windows, "
        "the sum of two periodic harmonic restraints, MBAR (pymbar 4) per repeat"
        if psi_windows > 1
        else "1-D umbrella sampling along phi (C-N-CA-C), periodic harmonic restraint, MBAR (pymbar 4) per repeat"
    )
    return {
        "system": summary["system"],
        "description": summary["description"],
        "observable": summary["delta_f_definition"],
        "delta_f_kT": _rounded(summary["delta_f_kT"]),
        "delta_f_err_kT": _rounded(summary["delta_f_err_kT"]),
        "delta_f_err_method": summary["delta_f_err_method"],
        "delta_f_err_from_mbar_kT": _rounded(summary.get("delta_f_err_from_mbar_kT")),
        "delta_f_err_from_mbar_method": summary.get("delta_f_err_from_mbar_method"),
        "delta_f_per_repeat_kT": _rounded(summary["delta_f_per_repeat_kT"]),
        "delta_f_mbar_err_kT": _rounded(summary["delta_f_mbar_err_kT"]),
        "delta_f_mbar_err_method": summary["delta_f_mbar_err_method"],
        "delta_f_naive_mbar_err_kT": _rounded(summary["delta_f_naive_mbar_err_kT"]),
        "delta_f_naive_mbar_err_method": summary.get("delta_f_naive_mbar_err_method"),
        "delta_f_pooled_kT": _rounded(summary["delta_f_pooled_kT"]),
        "delta_f_pooled_mbar_err_kT": _rounded(summary["delta_f_pooled_mbar_err_kT"]),
        "p_phi_positive": _rounded(summary["p_phi_positive"], 5),
        "p_phi_positive_err": _rounded(summary["p_phi_positive_err"], 5),
        "repeat_consistency": summary["repeat_consistency"],
        "profile": {
            "bin_edges_rad": [math.radians(e) for e in profile["bin_edges_deg"]],
            "bin_edges_deg": profile["bin_edges_deg"],
            "bin_centers_deg": profile["bin_centers_deg"],
            "free_energy_kT": _rounded(profile["free_energy_kT"], 3),
            "free_energy_err_kT": _rounded(profile["free_energy_err_kT"], 3),
            "free_energy_err_method": profile["free_energy_err_method"],
            "per_repeat_free_energy_kT": _rounded(profile["per_repeat_free_energy_kT"], 3),
            "per_repeat_mbar_err_kT": _rounded(profile["per_repeat_mbar_err_kT"], 3),
        },
        "protocol": {
            "method": method,
            "n_windows": summary["n_windows"],
            "window_spacing_deg": summary["window_spacing_deg"],
            "force_constant_kj_mol_rad2": summary["force_constant_kj_mol_rad2"],
            "restraint_width_deg": _rounded(summary["restraint_width_deg"], 2),
            "psi_windows": psi_windows,
            "psi_force_constant_kj_mol_rad2": summary.get("psi_force_constant_kj_mol_rad2", 0.0),
            "psi_restraint_width_deg": _rounded(summary.get("psi_restraint_width_deg"), 2),
            "psi_window_spacing_deg": summary.get("psi_window_spacing_deg"),
            "ps_per_window": summary["ps_per_window"],
            "equilibration_ps": summary["equilibration_ps"],
            "seeding_ps": summary["seeding_ps"],
            "repeats": summary["repeats"],
            "starts": [
                {key: start.get(key) for key in ("repeat", "name", "source", "phi_deg", "psi_deg")}
                for start in summary["starts"]
            ],
            "temperature_K": summary["temperature_K"],
            "integrator": summary["integrator"],
            "timestep_fs": summary["timestep_fs"],
            "friction_per_ps": summary["friction_per_ps"],
            "frame_interval_ps": summary["frame_interval_ps"],
            "platform": summary["platform"],
            "seed": summary["seed"],
            "config": config,
        },
        "flags": {"total": summary["n_flags"], "by_kind": flags_by_kind},
        "windows": psi,
        "cost": {
            "wall_s": _rounded(summary["wall_s"], 1),
            "core_s": _rounded(summary["core_s"], 1),
            "simulated_ns": _rounded(summary["simulated_ns"], 3),
            "ns_per_day_per_core": _rounded(summary["ns_per_day_per_core"], 0),
            "n_workers": summary["n_workers"],
            "machine": "2 shared CPU cores (other jobs running), no GPU",
        },
        "command": summary["command"],
        "versions": summary["versions"],
        "date_finished_utc": summary["date_finished_utc"],
    }


def write_compact_reference(run_dir: str | Path, path: str | Path, **extra: Any) -> dict[str, Any]:
    """Write :func:`compact_reference` of ``run_dir`` (plus ``extra`` entries) to ``path`` as JSON."""
    record = {**compact_reference(run_dir), **extra}
    write_json_atomic(path, record)
    return record


def combine_compact_references(records: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One reference from several runs' :func:`compact_reference` records, every repeat weighted equally.

    dF is the mean of all repeats' dF (kT) with the standard error over repeats; the error the
    repeats' MBAR errors predict and the chi^2 consistency of the repeats are recomputed over all
    of them. The phi profile is the mean over all repeats of their profiles (each shifted to
    minimum 0), shifted to minimum 0, with the standard error over repeats. The runs must use the
    same system, observable and profile bins. Each run's record is kept under ``"runs"`` (without
    its per-window table).
    """
    from boltzgen.umbrella.diagnostics import repeat_consistency

    if len(records) < 2:
        raise ValueError("combine at least two umbrella records")
    first = records[0]
    for record in records[1:]:
        for key in ("system", "observable"):
            if record[key] != first[key]:
                raise ValueError(f"cannot combine umbrella records with different {key}: {first[key]!r} vs {record[key]!r}")
        if record["profile"]["bin_edges_deg"] != first["profile"]["bin_edges_deg"]:
            raise ValueError("cannot combine umbrella records with different profile bins")
    values = np.concatenate([np.asarray(r["delta_f_per_repeat_kT"], dtype=np.float64) for r in records])
    errors = np.concatenate([np.asarray(r["delta_f_mbar_err_kT"], dtype=np.float64) for r in records])
    n = len(values)
    consistency, _ = repeat_consistency(values.tolist(), errors.tolist())
    profiles = np.concatenate([np.asarray(r["profile"]["per_repeat_free_energy_kT"], dtype=np.float64) for r in records])
    profile_mean = np.mean(profiles, axis=0)
    profile_mean = profile_mean - np.nanmin(profile_mean)
    profile_sem = np.std(profiles, axis=0, ddof=1) / math.sqrt(len(profiles))
    delta_f = float(np.mean(values))
    p_positive = 1.0 / (1.0 + math.exp(delta_f))
    delta_f_err = float(np.std(values, ddof=1) / math.sqrt(n))
    return {
        "system": first["system"],
        "description": first["description"],
        "observable": first["observable"],
        "delta_f_kT": _rounded(delta_f),
        "delta_f_err_kT": _rounded(delta_f_err),
        "delta_f_err_method": f"standard error over all {n} repeats of {len(records)} runs (each repeat weighted equally)",
        "delta_f_err_from_mbar_kT": _rounded(float(np.sqrt(np.sum(errors**2))) / n),
        "delta_f_err_from_mbar_method": "sqrt(sum of the repeats' squared MBAR errors) / number of repeats",
        "delta_f_per_repeat_kT": _rounded(values.tolist()),
        "delta_f_mbar_err_kT": _rounded(errors.tolist()),
        "delta_f_mbar_err_method": first.get("delta_f_mbar_err_method"),
        "p_phi_positive": _rounded(p_positive, 5),
        "p_phi_positive_err": _rounded(p_positive * (1.0 - p_positive) * delta_f_err, 5),
        "repeat_consistency": consistency,
        "profile": {
            "bin_edges_rad": first["profile"]["bin_edges_rad"],
            "bin_edges_deg": first["profile"]["bin_edges_deg"],
            "bin_centers_deg": first["profile"]["bin_centers_deg"],
            "free_energy_kT": _rounded(profile_mean.tolist(), 3),
            "free_energy_err_kT": _rounded(profile_sem.tolist(), 3),
            "free_energy_err_method": "standard error over all repeats of -ln(P_bin / width), each repeat shifted to minimum 0",
            "per_repeat_free_energy_kT": _rounded(profiles.tolist(), 3),
        },
        "note": note,
        "runs": [{key: value for key, value in record.items() if key != "windows"} for record in records],
    }


def write_combined_reference(run_dirs: list[str | Path], path: str | Path, note: str = "", **extra: Any) -> dict[str, Any]:
    """Write :func:`combine_compact_references` of the finished runs in ``run_dirs`` to ``path`` as JSON."""
    record = {**combine_compact_references([compact_reference(d) for d in run_dirs], note), **extra}
    write_json_atomic(path, record)
    return record
