"""The main job, ``boltzgen run``: train a Boltzmann generator for a molecule, sample, reweight, analyse.

Steps: load the data (shipped reference or a `boltzgen md` run) -> give the interchangeable
hydrogens of each methyl one labelling (`boltzgen.equivalent_hydrogens`) -> split train / held-out ->
build the internal-coordinate coupling flow (smooth mixtures by default, or splines) -> train (NLL +
force matching on the data's forces, then the same + reverse KL) with atomic,
resumable checkpoints -> draw samples with importance weights -> ESS, dF(phi > 0 vs phi < 0) with
bootstrap errors, phi profile, E-W2, T-W2 against held-out frames -> plots, ``model.pt`` and
``summary.json`` in the output directory.
"""

from __future__ import annotations

import platform as python_platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import boltzgen
from boltzgen.analysis.free_energy import FreeEnergyProfile
from boltzgen.device import select_device
from boltzgen.equivalent_hydrogens import equivalent_hydrogen_groups
from boltzgen.io import write_json_atomic
from boltzgen.errors import BoltzgenError
from boltzgen.generator import BoltzmannGenerator
from boltzgen.job.data import MolecularData, load_data, split_frames
from boltzgen.job.evaluate import evaluate
from boltzgen.job.model import build_molecular_generator, in_support
from boltzgen.job.profiles import RunProfile, get_profile, loss_weights
from boltzgen.job.samplers import SAMPLERS, SamplerSettings, draw_samples
from boltzgen.train import Trainer, TrainerConfig, TrainingStage, save_checkpoint

#: Files the job writes into its output directory.
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
#: Gradient-norm clip of the job's training: typical norms are 3-10 (NLL) and 5-50 (NLL + KL);
#: single reverse-KL batches with a strained sample reach 1e3-1e4.
GRAD_CLIP_NORM = 100.0


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for (stored in checkpoints and summary.json)."""

    system: str
    out_dir: str
    profile: str = "quick"
    seed: int = 0
    device: Optional[str] = None
    data_dir: Optional[str] = None
    energy_platform: str = "auto"
    quiet: bool = False
    energy_backend: str = "auto"
    sampler: str = "is"
    flow: str = "smooth"
    loss: Optional[str] = None


def trainer_config(
    profile: RunProfile, seed: int, with_forces: bool = True, loss: Optional[str] = None, flow: str = "smooth"
) -> TrainerConfig:
    """Two stages: maximum likelihood (+ force matching when the data have forces), then the
    same + weighted reverse KL against the target energy; ``loss`` (``--loss``, see
    `boltzgen.job.profiles.loss_weights`) chooses the terms and their weights."""
    weights = loss_weights(loss, profile, flow)
    force_weight = weights["fm"] if with_forces else 0.0
    if weights["nll"] == 0 and force_weight == 0:
        raise ValueError("force matching needs data with forces; these data have none (use --loss nll,...)")
    name = "+".join(term for term, w in (("nll", weights["nll"]), ("fm", force_weight)) if w > 0)
    return TrainerConfig(
        stages=[
            TrainingStage(name, profile.nll_steps, nll_weight=weights["nll"], learning_rate=profile.nll_learning_rate,
                          force_weight=force_weight, batch_size=profile.batch_size,
                          warmup_steps=min(100, profile.nll_steps // 10)),
            TrainingStage(name + ("+kl" if weights["kl"] > 0 else ""), profile.kl_steps, nll_weight=weights["nll"],
                          kl_weight=weights["kl"], force_weight=force_weight, learning_rate=profile.kl_learning_rate,
                          batch_size=profile.batch_size, kl_batch_size=profile.kl_batch_size,
                          warmup_steps=min(50, profile.kl_steps // 10)),
        ],
        grad_clip_norm=GRAD_CLIP_NORM,
        checkpoint_every=max(1, min(250, profile.nll_steps // 4)),
        validate_every=max(1, min(250, profile.nll_steps // 4)),
        seed=seed,
    )


def _reference_free_energy(system_name: str) -> tuple[Optional[tuple[float, float]], Optional[FreeEnergyProfile]]:
    from boltzgen.systems.umbrella_reference import has_umbrella_reference, umbrella_reference

    if not has_umbrella_reference(system_name):
        return None, None
    ref = umbrella_reference(system_name)
    profile = FreeEnergyProfile(ref.profile_bin_edges, ref.profile_kT, ref.profile_err_kT)
    return (ref.delta_f_kT, ref.delta_f_err_kT), profile


@dataclass
class JobSetup:
    """Everything the job builds before training: the system, its data split, target and generator."""

    system: object
    data: MolecularData
    train: MolecularData
    held_out: MolecularData
    n_relabelled_frames: int
    target: object
    generator: BoltzmannGenerator


def setup_job(options: RunOptions, profile: RunProfile, device) -> JobSetup:
    """Load the system and its data, relabel equivalent hydrogens, split train / held-out (by
    blocks, seeded), build the target energy and the untrained generator (deterministic in
    ``options.seed``: `load_trained_generator` rebuilds exactly this and loads the weights)."""
    from boltzgen import systems

    system = systems.load(options.system)
    if getattr(system, "openmm_system", None) is None:
        raise ValueError(f"boltzgen run needs a molecular system; {options.system!r} is a toy energy")
    data = load_data(options.system, system.n_atoms, options.data_dir)
    hydrogen_groups = equivalent_hydrogen_groups(system.mdtraj_topology, system.openmm_system)
    # The default orientation (not the system's own, ``reference=system.positions``): the quick
    # profile was measured with it (ESS 0.22-0.28 over seeds); one run with the system's orientation,
    # same recipe otherwise, reached ESS 0.003 (benchmarks/results/ad2/): under investigation.
    data, n_relabelled_frames = data.with_canonical_hydrogens(hydrogen_groups)
    train_index, held_out_index = split_frames(data.n_frames, profile.max_train_frames, options.seed)
    train, held_out = data.subset(train_index), data.subset(held_out_index)
    target = system.energy(backend=options.energy_backend, platform=options.energy_platform, device=device)
    train_x = torch.as_tensor(train.positions, dtype=torch.get_default_dtype())
    generator = build_molecular_generator(system.mdtraj_topology, train_x, profile, target, seed=options.seed,
                                          flow=options.flow)
    return JobSetup(system, data, train, held_out, n_relabelled_frames, target, generator)


def load_trained_generator(out_dir: str | Path, device=None, energy_backend: Optional[str] = None) -> JobSetup:
    """Rebuild the job of ``out_dir`` (from the run settings stored in its ``model.pt``) with the
    trained weights loaded; the generator is in eval mode on ``device`` (default: the best one).

    Raises a `BoltzgenError` naming the file when it is not a model written by `boltzgen run`.
    """
    from boltzgen.train.checkpoint import load_checkpoint

    path = Path(out_dir) / MODEL_FILE
    checkpoint = load_checkpoint(path)
    try:
        run_config = checkpoint["run_config"]
        stored_options = dict(run_config["options"])
        profile = RunProfile(**{**run_config["profile"], "hidden": tuple(run_config["profile"]["hidden"])})
        state = checkpoint["model_state"]
    except (KeyError, TypeError) as error:
        raise BoltzgenError(f"{path} is not a model written by `boltzgen run` (missing {error})") from None
    if energy_backend is not None:
        stored_options["energy_backend"] = energy_backend
    options = RunOptions(**{k: v for k, v in stored_options.items() if k in RunOptions.__dataclass_fields__})
    device = select_device(device)
    setup = setup_job(options, profile, device)
    setup.generator.load_state_dict(state)
    setup.generator.to(device).eval()
    return setup


def run_job(options: RunOptions, profile: Optional[RunProfile] = None) -> dict:
    """Run (or resume) the job described by ``options``; returns the summary written to summary.json.

    ``profile`` overrides the named profile ``options.profile`` (benchmarks use custom settings;
    they are stored in model.pt, so `load_trained_generator` rebuilds such a model too).
    """
    start = time.perf_counter()
    profile = profile if profile is not None else get_profile(options.profile)
    if options.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {options.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    loss_weights(options.loss, profile, options.flow)  # a bad --loss is an error before anything is loaded
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(options.device)
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)

    setup = setup_job(options, profile, device)
    system, data, train, held_out = setup.system, setup.data, setup.train, setup.held_out
    target, generator, n_relabelled_frames = setup.target, setup.generator, setup.n_relabelled_frames
    train_x = torch.as_tensor(train.positions, dtype=torch.get_default_dtype())
    validation = torch.as_tensor(held_out.positions[: 4 * profile.batch_size], dtype=torch.get_default_dtype())
    validation = validation[in_support(generator, validation)]

    run_config = {"options": asdict(options), "profile": profile.as_dict(), "data_source": data.source}
    train_forces = None if train.forces is None else torch.as_tensor(train.forces, dtype=train_x.dtype)
    config = trainer_config(profile, options.seed, with_forces=train_forces is not None, loss=options.loss,
                            flow=options.flow)
    trainer = Trainer(
        generator, train_x, config, out_dir / CHECKPOINT_FILE,
        validation_data=validation, device=device, run_config=run_config, quiet=options.quiet,
        train_forces=train_forces,
    )
    state = trainer.fit()
    save_checkpoint(out_dir / MODEL_FILE, {"model_state": generator.state_dict(), "run_config": run_config})

    reference_delta_f, reference_profile = _reference_free_energy(options.system)
    sampler_settings = SamplerSettings()
    samples = draw_samples(generator, options.sampler, profile.n_samples, sampler_settings, seed=options.seed)
    results = evaluate(
        generator, held_out, system.mdtraj_topology,
        samples=samples, n_metric_samples=profile.n_metric_samples,
        n_bootstrap=profile.n_bootstrap, reference_delta_f=reference_delta_f,
        reference_profile=reference_profile, out_dir=out_dir, device=device, seed=options.seed,
    )
    n_energy_evals = state.n_energy_evaluations + samples.n_energy_evals
    target.close()
    summary = {
        "system": options.system,
        "profile": profile.name,
        "seed": options.seed,
        **results,
        "flow": options.flow,
        "loss_weights": loss_weights(options.loss, profile, options.flow),
        "sampler": options.sampler,
        "sampler_settings": sampler_settings.as_dict() if options.sampler != "is" else {},
        "sampler_diagnostics": samples.diagnostics,
        "n_energy_evals": n_energy_evals,
        "n_train_frames": train.n_frames,
        "n_relabelled_frames": n_relabelled_frames,
        "n_held_out_frames": held_out.n_frames,
        "n_training_steps": state.global_step,
        "n_skipped_training_steps": state.n_skipped_steps,
        "training_wall_s": state.wall_s,
        "wall_s": time.perf_counter() - start,
        "device": str(device),
        "energy_backend": target.backend,
        "energy_backend_note": target.backend_note,
        "torch_threads": torch.get_num_threads(),
        "data_source": data.source,
        "boltzgen_version": boltzgen.__version__,
        "python": python_platform.python_version(),
    }
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary


def summary_table(summary: dict) -> str:
    """The human-readable end of a run: the key numbers of ``summary.json``, one per line."""

    def fmt(value, digits=3):
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    rows = [
        ("sampler", summary.get("sampler", "is")),
        ("ESS (Kish, normalised)", fmt(summary["ess"])),
        ("ESS, top 0.2% weights dropped", fmt(summary["ess_filtered"])),
        ("dF(phi>0 - phi<0) [kT]", f"{fmt(summary['delta_f_kT'], 2)} +- {fmt(summary['delta_f_err_kT'], 2)}"),
        ("reference dF [kT]", f"{fmt(summary['reference_delta_f_kT'], 2)} +- {fmt(summary['reference_delta_f_err_kT'], 2)}"),
        ("E-W2 [kT]", fmt(summary["e_w2"])),
        ("T-W2 [rad]", fmt(summary["t_w2"])),
        ("held-out NLL per dim [nats]", fmt(summary["held_out_nll_per_dim"])),
        ("samples (dropped)", f"{summary['n_samples']} ({summary['n_dropped']})"),
        ("target energy evaluations", fmt(summary["n_energy_evals"])),
        ("wall time [s] / device", f"{summary['wall_s']:.0f} / {summary['device']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
