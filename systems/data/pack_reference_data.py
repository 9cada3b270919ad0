"""Pack finished ``boltzgen md`` runs of one system into one compact reference-data file.

Each run directory is named by its starting structure (``--start-names``); starts are numbered
(``start_id``) in order of first appearance, and several runs of one start (other seeds) become
further replicas of it. The frames are stored in order (start, replica, time), with phi/psi from
mdtraj, and a JSON ``metadata`` string with the provenance of every run (see ``README.md`` in this
folder and `boltzgen.systems.reference_data`). How the shipped alanine dipeptide file was made::

    python systems/data/pack_reference_data.py \
        --runs /work/ad2_data/c7eq_start /work/ad2_data/c7eq_start_b /work/ad2_data/alpha_l_start \
        --start-names C7eq C7eq alpha_L \
        --output systems/data/alanine_dipeptide_implicit_reference.npz
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "boltzgen-reference-data"
FORMAT_VERSION = 1

NOT_EQUILIBRIUM = (
    "The basin populations in this file are NOT equilibrium populations: the frames come from "
    "short replicas started in chosen basins (including the rare phi > 0 basin) so that every "
    "basin is covered. Use the frames for training and coverage; get populations from reweighting "
    "or from an independent reference (umbrella sampling)."
)

#: Settings that must be the same in every packed run (the frames share one protocol).
SHARED_SETTINGS = (
    "system", "temperature_K", "friction_per_ps", "timestep_fs", "frame_interval_ps", "warmup_steps",
    "integrator", "platform", "system_options",
)


def md_command(config: dict[str, Any], start: dict[str, Any], out: str) -> str:
    """The ``boltzgen md`` command line that reproduces a run with ``config`` (run.json) and ``start``."""
    words = [
        "boltzgen md", config["system"], f"--ns {config['ns']:g}", f"--replicas {config['n_replicas']}",
        f"--seed {config['seed']}", f"--platform {config['platform']}", f"--warmup-steps {config['warmup_steps']}",
        f"--friction {config['friction_per_ps']:g}", f"--frame-interval-ps {config['frame_interval_ps']:g}",
    ]
    if start.get("file"):
        words.append(f"--start systems/data/{start['file']}")
    words.append(f"--out {out}")
    return " ".join(words)


def dihedrals(topology, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backbone phi and psi ``[F]`` float32 radians of the first residue that has both (mdtraj)."""
    import mdtraj

    trajectory = mdtraj.Trajectory(positions, topology)
    _, phi = mdtraj.compute_phi(trajectory)
    _, psi = mdtraj.compute_psi(trajectory)
    return phi[:, 0].astype(np.float32), psi[:, 0].astype(np.float32)


def _run_record(run_dir: Path, config: dict[str, Any], metadata: dict[str, Any], summary: dict[str, Any],
                phi: np.ndarray, replica_offset: int) -> dict[str, Any]:
    """Provenance and basin counts of one run (``phi``: [R, F] radians)."""
    from boltzgen.io import read_json

    start = metadata.get("start_structure", {})
    return {
        "command": md_command(config, start, str(run_dir)),
        "seed": config["seed"],
        "replica_seeds": metadata["replica_seeds"],
        "replicas_in_file": [replica_offset, replica_offset + phi.shape[0] - 1],
        "n_replicas": int(phi.shape[0]),
        "ns_per_replica": config["ns"],
        "n_frames": int(phi.size),
        "n_frames_phi_positive": int((phi > 0).sum()),
        "n_frames_phi_positive_per_replica": [int(n) for n in (phi > 0).sum(axis=1)],
        "wall_s": summary["wall_s"],
        "sessions": read_json(run_dir / "sessions.json"),
        "ns_per_day_per_core": summary.get("ns_per_day_per_core"),
        "date_started_utc": metadata.get("date_started_utc"),
        "date_finished_utc": metadata.get("date_finished_utc"),
    }


def pack(runs: list[Path], start_names: list[str], output: Path) -> dict[str, Any]:
    """Write the reference file from finished runs; return its metadata.

    ``start_names[i]`` names the start of ``runs[i]``; runs with the same name (same starting
    file, other seeds) share a ``start_id`` (numbered by first appearance) and are numbered on
    as further replicas of that start.
    """
    from boltzgen.io import read_json
    from boltzgen.md import load_trajectory

    if len({Path(run).resolve() for run in runs}) != len(runs):
        raise ValueError("a run directory is given twice")
    names = list(dict.fromkeys(start_names))
    order = sorted(range(len(runs)), key=lambda i: names.index(start_names[i]))
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("positions", "forces", "reduced_energy", "phi", "psi", "start_id", "replica", "time_ps")}
    starts = [{"start_id": i, "name": name, "start_structure": None, "runs": []} for i, name in enumerate(names)]
    shared = None
    for index in order:
        run_dir, start_id = runs[index], names.index(start_names[index])
        data = load_trajectory(run_dir)
        config = read_json(run_dir / "run.json")["config"]
        settings = {key: config.get(key, data.metadata.get(key)) for key in SHARED_SETTINGS}
        if shared is None:
            shared, first_metadata = settings, data.metadata
        elif settings != shared:
            raise ValueError(f"{run_dir} was made with other settings than the first run: {settings} vs {shared}")
        start = starts[start_id]
        structure = {key: data.metadata.get("start_structure", {}).get(key) for key in ("source", "file", "sha256")}
        if start["start_structure"] not in (None, structure):
            raise ValueError(f"{run_dir} started from {structure}, other runs of {start['name']!r} from {start['start_structure']}")
        start["start_structure"] = structure
        n_replicas, n_frames = data.positions.shape[:2]
        offset = sum(run["n_replicas"] for run in start["runs"])
        positions = data.positions.reshape(n_replicas * n_frames, *data.positions.shape[2:])
        phi, psi = dihedrals(data.mdtraj().topology, positions)
        arrays["positions"].append(positions)
        arrays["forces"].append(data.forces.reshape(positions.shape))
        arrays["reduced_energy"].append(data.reduced_energy.reshape(-1))
        arrays["phi"].append(phi)
        arrays["psi"].append(psi)
        arrays["start_id"].append(np.full(len(phi), start_id, dtype=np.int16))
        arrays["replica"].append(np.repeat(np.arange(offset, offset + n_replicas, dtype=np.int16), n_frames))
        arrays["time_ps"].append(np.tile(data.time_ps.astype(np.float32), n_replicas))
        summary = read_json(run_dir / "summary.json")
        start["runs"].append(_run_record(run_dir, config, data.metadata, summary, phi.reshape(n_replicas, n_frames), offset))
    for start in starts:
        start["n_replicas"] = sum(run["n_replicas"] for run in start["runs"])
        start["n_frames"] = sum(run["n_frames"] for run in start["runs"])
        start["n_frames_phi_positive"] = sum(run["n_frames_phi_positive"] for run in start["runs"])
        start["n_frames_phi_negative"] = start["n_frames"] - start["n_frames_phi_positive"]
    packed = {key: np.concatenate(values) for key, values in arrays.items()}
    phi = packed["phi"]
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "system": shared["system"],
        "description": first_metadata["description"],
        "forcefield_files": first_metadata["forcefield_files"],
        "n_frames": int(len(phi)),
        "n_atoms": int(packed["positions"].shape[1]),
        "n_frames_phi_positive": int((phi > 0).sum()),
        "n_frames_phi_negative": int((phi <= 0).sum()),
        "populations_are_equilibrium": False,
        "note": NOT_EQUILIBRIUM,
        "temperature_K": shared["temperature_K"],
        "integrator": shared["integrator"],
        "timestep_fs": shared["timestep_fs"],
        "friction_per_ps": shared["friction_per_ps"],
        "frame_interval_ps": shared["frame_interval_ps"],
        "warmup_steps": shared["warmup_steps"],
        "minimisation": first_metadata["minimisation"],
        "platform": shared["platform"],
        "subsampling": "none: every saved frame (1 per frame_interval_ps) of every replica",
        "frame_order": "by start_id, then replica, then time_ps",
        "starts": starts,
        "versions": first_metadata["versions"],
        "packed_by": "systems/data/pack_reference_data.py",
        "date_packed_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "units": {
            "positions": "nm", "forces": "kJ/mol/nm", "reduced_energy": "kT", "phi": "rad", "psi": "rad",
            "time_ps": "ps",
        },
        "dihedrals": "mdtraj.compute_phi / compute_psi (radians, (-pi, pi]); phi is C(ACE)-N-CA-C, psi N-CA-C-N(NME)",
    }
    np.savez_compressed(output, **packed, metadata=np.array(json.dumps(metadata, indent=1)))
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="finished `boltzgen md` directories, one per start")
    parser.add_argument(
        "--start-names", nargs="+", required=True,
        help="a short name of each run's start (e.g. C7eq C7eq alpha_L); runs with the same name share a start_id",
    )
    parser.add_argument("--output", type=Path, required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    if len(args.start_names) != len(args.runs):
        parser.error("give one --start-names entry per --runs directory")
    metadata = pack(args.runs, args.start_names, args.output)
    size_mb = args.output.stat().st_size / 1e6
    print(f"{args.output}: {metadata['n_frames']} frames, {size_mb:.1f} MB")
    for start in metadata["starts"]:
        print(f"  start {start['start_id']} ({start['name']}): {start['n_frames']} frames, "
              f"{start['n_frames_phi_positive']} with phi > 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
