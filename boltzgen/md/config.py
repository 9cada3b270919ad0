"""The settings that define a reference-MD data set, their validation, and per-replica seeds.

An `MDConfig` is stored as ``run.json`` in the output directory. Running the same command again
compares its config with the stored one: equal -> resume (or nothing to do), different -> error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from boltzgen.settings import setting_differences, settings_from_dict

#: Largest seed OpenMM accepts (a C ``int``); 0 means "pick a random seed" to OpenMM, so never used.
_MAX_OPENMM_SEED = 2**31 - 1


@dataclass(frozen=True)
class ReplicaSeeds:
    """Random seeds of one replica: the Langevin integrator's and the initial velocities'."""

    integrator_seed: int
    velocity_seed: int


def replica_seeds(seed: int, n_replicas: int) -> list[ReplicaSeeds]:
    """Independent OpenMM seeds for ``n_replicas`` replicas from one run seed.

    Replica ``i`` draws from ``numpy.random.SeedSequence(seed).spawn(...)[i]``, so its seeds depend
    on ``seed`` and ``i`` only (not on ``n_replicas``). Seeds lie in ``1 .. 2**31 - 1``.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(int(n_replicas))
    seeds = []
    for child in children:
        words = child.generate_state(2, dtype=np.uint32)
        integrator_seed, velocity_seed = (int(word) % _MAX_OPENMM_SEED + 1 for word in words)
        seeds.append(ReplicaSeeds(integrator_seed, velocity_seed))
    return seeds


def new_run_seed() -> int:
    """A fresh random run seed (63 bits) for runs started without ``--seed``."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class MDConfig:
    """Everything that determines the trajectories of a reference-MD run.

    Attributes:
        system: registry name of the system (``boltzgen.systems.load``).
        ns: simulated production time per replica, ns.
        n_replicas: number of independent trajectories.
        seed: run seed; replica seeds derive from it (:func:`replica_seeds`).
        platform: OpenMM platform name (CPU runs with ``Threads=1``).
        temperature_K: thermostat temperature, K (the system's temperature).
        friction_per_ps: Langevin friction, 1/ps.
        timestep_fs: integration time step, fs.
        frame_interval_ps: time between saved frames, ps (a whole number of time steps).
        warmup_steps: Langevin steps after minimisation and before the first frame.
        system_options: options passed to the system builder.
        integrator: the OpenMM integrator class used.
        start_sha256: SHA-256 of the starting-structure file (``--start``); None: the system's
            own positions. Only the file's contents count, not its name or place.
    """

    system: str
    ns: float
    n_replicas: int
    seed: int
    platform: str
    temperature_K: float
    friction_per_ps: float
    timestep_fs: float = 1.0
    frame_interval_ps: float = 1.0
    warmup_steps: int = 50_000
    system_options: dict = field(default_factory=dict)
    integrator: str = "LangevinMiddleIntegrator"
    start_sha256: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.ns) and self.ns > 0, f"ns must be positive, got {self.ns!r}"),
            (self.n_replicas >= 1, f"the number of replicas must be at least 1, got {self.n_replicas!r}"),
            (self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}"),
            (self.temperature_K > 0, f"temperature must be positive (K), got {self.temperature_K!r}"),
            (
                math.isfinite(self.friction_per_ps) and self.friction_per_ps >= 0,
                f"friction must be >= 0 (1/ps), got {self.friction_per_ps!r}",
            ),
            (self.timestep_fs > 0, f"time step must be positive (fs), got {self.timestep_fs!r}"),
            (self.frame_interval_ps > 0, f"frame interval must be positive (ps), got {self.frame_interval_ps!r}"),
            (self.warmup_steps >= 0, f"warm-up steps must be >= 0, got {self.warmup_steps!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        steps = self.frame_interval_ps * 1000.0 / self.timestep_fs
        if abs(steps - round(steps)) > 1e-9 * steps:
            raise ValueError(
                f"frame interval {self.frame_interval_ps} ps is not a whole number of "
                f"{self.timestep_fs} fs time steps"
            )
        frames = self.ns * 1000.0 / self.frame_interval_ps
        if round(frames) < 1 or abs(frames - round(frames)) > 1e-6 * max(frames, 1.0):
            raise ValueError(
                f"ns = {self.ns} is not a positive whole number of {self.frame_interval_ps} ps frame intervals"
            )

    @property
    def steps_per_frame(self) -> int:
        """Integrator steps between two saved frames."""
        return int(round(self.frame_interval_ps * 1000.0 / self.timestep_fs))

    @property
    def n_frames(self) -> int:
        """Frames saved per replica (the first one ``frame_interval_ps`` after the warm-up)."""
        return int(round(self.ns * 1000.0 / self.frame_interval_ps))

    @property
    def time_ps(self) -> np.ndarray:
        """Production time of every frame, ``[n_frames]`` float64 ps: interval, 2 interval, ..."""
        return self.frame_interval_ps * np.arange(1, self.n_frames + 1, dtype=np.float64)

    def seeds(self) -> list[ReplicaSeeds]:
        """Per-replica seeds (see :func:`replica_seeds`)."""
        return replica_seeds(self.seed, self.n_replicas)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MDConfig":
        return settings_from_dict(cls, data, "MD")

    def differences(self, other: "MDConfig") -> list[str]:
        """``name=stored (requested ...)`` for every setting that differs (``other`` is the stored one)."""
        return setting_differences(self.to_dict(), other.to_dict())
