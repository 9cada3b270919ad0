"""The settings of an umbrella-sampling run along phi (optionally 2-D on phi and psi), their
validation, window centres and seeds.

An `UmbrellaConfig` is stored in ``DIR/run.json``. Running the same command again compares the
requested config with the stored one: equal -> resume (finished windows are not redone),
different -> error. Seeds: every repeat's seeding chain and every window of every repeat gets its
own (integrator, velocity) seed pair from ``boltzgen.md.replica_seeds(seed, ...)``: slot
``repeat * (W + 1)`` is the chain's, slot ``repeat * (W + 1) + 1 + window`` the window's, with
``W = n_windows * psi_windows`` windows per repeat.

2-D umbrella (``psi_windows = M > 1``): every phi window is split into M windows whose psi centres
are ``-180 + m * 360 / M`` degrees, each restrained on phi (``force_constant``) and psi
(``psi_force_constant``). Window ``w = j * M + m`` has phi centre j and psi centre m, so with
M = 1 (the default: psi free) window ids, seeds and files are those of the 1-D run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from boltzgen.md.config import ReplicaSeeds, replica_seeds
from boltzgen.settings import setting_differences, settings_from_dict

#: Default number of windows: 10 degree spacing over the circle.
DEFAULT_WINDOWS = 36
#: Default force constant (kJ/mol/rad^2): restraint width sqrt(kT/k) = 4 degrees at 300 K, narrow
#: enough that windows on the phi barriers (near 0 and 120 degrees) stay unimodal (METHODS.md §0).
DEFAULT_FORCE_CONSTANT = 500.0
#: Default production time per window and repeat (ps), and number of repeats: the protocol of the
#: alanine dipeptide reference (systems/data/UMBRELLA.md).
DEFAULT_PS_PER_WINDOW = 250.0
DEFAULT_REPEATS = 3
#: Fewest windows accepted (neighbouring windows must overlap for MBAR).
MIN_WINDOWS = 4
#: Default number of psi windows per phi window: 1 = psi free (1-D umbrella along phi).
DEFAULT_PSI_WINDOWS = 1
#: Default psi restraint width sqrt(kT / k_psi) as a fraction of the psi window spacing 360 / M degrees:
#: neighbouring psi windows (2.2 widths apart) overlap well, and the restraint is weak enough that
#: psi still moves within its window. See :func:`default_psi_force_constant`.
PSI_WIDTH_PER_SPACING = 0.45


def default_psi_force_constant(psi_windows: int, kt_kj_mol: float) -> float:
    """Default psi force constant (kJ/mol/rad^2) for ``psi_windows`` windows over the circle.

    The restraint width sqrt(kT / k) is ``PSI_WIDTH_PER_SPACING`` (0.45) of the psi spacing
    2 pi / M: ``k = kT / (0.45 * 2 pi / M)^2``, rounded to 3 significant digits (at 300 K:
    M = 6 -> 11.2, M = 12 -> 44.9 kJ/mol/rad^2). 0 for ``psi_windows == 1`` (psi free).
    """
    if psi_windows <= 1:
        return 0.0
    width = PSI_WIDTH_PER_SPACING * 2.0 * math.pi / psi_windows
    return float(f"{kt_kj_mol / width**2:.3g}")


@dataclass(frozen=True)
class UmbrellaConfig:
    """Everything that determines the samples of an umbrella run.

    Attributes:
        system: registry name of the system.
        n_windows: windows, centred at ``-180 + i * 360 / n_windows`` degrees.
        force_constant: restraint force constant, kJ/mol/rad^2.
        ps_per_window: production time per window and repeat, ps (frames every ``frame_interval_ps``).
        repeats: independent repeats (other seeds and starting structures).
        seed: run seed.
        platform: OpenMM platform (single-threaded Contexts).
        temperature_K, friction_per_ps, timestep_fs: LangevinMiddleIntegrator settings.
        frame_interval_ps: time between saved frames.
        equilibration_ps: dynamics in each window before its first frame (not saved).
        seeding_ps: dynamics with the restraint at each window's centre while the seeding chain
            walks from window to window (steered seeding; see `boltzgen.umbrella.starts`).
        starts: starting structures, cycled over the repeats (``boltzgen.umbrella.starts.START_NAMES``).
        system_options: options passed to the system builder.
        psi_windows: psi windows per phi window (1: psi free, a 1-D umbrella along phi).
        psi_force_constant: psi restraint force constant, kJ/mol/rad^2 (0 when ``psi_windows`` is 1).
    """

    system: str
    n_windows: int
    force_constant: float
    ps_per_window: float
    repeats: int
    seed: int
    platform: str
    temperature_K: float
    friction_per_ps: float
    timestep_fs: float = 1.0
    frame_interval_ps: float = 1.0
    equilibration_ps: float = 20.0
    seeding_ps: float = 10.0
    starts: tuple[str, ...] = ("c7eq", "alpha_l", "alpha_r")
    system_options: dict = field(default_factory=dict)
    integrator: str = "LangevinMiddleIntegrator"
    psi_windows: int = DEFAULT_PSI_WINDOWS
    psi_force_constant: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(self.starts))
        checks = [
            (self.n_windows >= MIN_WINDOWS, f"the number of windows must be at least {MIN_WINDOWS}, got {self.n_windows!r}"),
            (self.n_windows <= 3600, f"the number of windows must be at most 3600, got {self.n_windows!r}"),
            (
                math.isfinite(self.force_constant) and self.force_constant > 0,
                f"the force constant must be positive (kJ/mol/rad^2), got {self.force_constant!r}",
            ),
            (
                math.isfinite(self.ps_per_window) and self.ps_per_window > 0,
                f"ps per window must be positive, got {self.ps_per_window!r}",
            ),
            (self.repeats >= 1, f"the number of repeats must be at least 1, got {self.repeats!r}"),
            (self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}"),
            (self.temperature_K > 0, f"temperature must be positive (K), got {self.temperature_K!r}"),
            (
                math.isfinite(self.friction_per_ps) and self.friction_per_ps > 0,
                f"friction must be positive (1/ps), got {self.friction_per_ps!r}",
            ),
            (self.timestep_fs > 0, f"time step must be positive (fs), got {self.timestep_fs!r}"),
            (self.frame_interval_ps > 0, f"frame interval must be positive (ps), got {self.frame_interval_ps!r}"),
            (self.equilibration_ps >= 0, f"equilibration must be >= 0 ps, got {self.equilibration_ps!r}"),
            (self.seeding_ps > 0, f"seeding time per window must be positive (ps), got {self.seeding_ps!r}"),
            (len(self.starts) >= 1, "at least one starting structure is needed"),
            (
                isinstance(self.psi_windows, int) and 1 <= self.psi_windows <= 360,
                f"the number of psi windows must be between 1 and 360, got {self.psi_windows!r}",
            ),
            (
                self.psi_windows > 1 or self.psi_force_constant == 0,
                "a psi force constant needs psi windows (--psi-windows > 1); with one psi window psi is free",
            ),
            (
                self.psi_windows == 1 or (math.isfinite(self.psi_force_constant) and self.psi_force_constant > 0),
                f"the psi force constant must be positive (kJ/mol/rad^2), got {self.psi_force_constant!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for name, value in (
            ("frame interval", self.frame_interval_ps),
            ("equilibration", self.equilibration_ps),
            ("seeding time", self.seeding_ps),
        ):
            steps = value * 1000.0 / self.timestep_fs
            if abs(steps - round(steps)) > 1e-9 * max(steps, 1.0):
                raise ValueError(f"{name} {value} ps is not a whole number of {self.timestep_fs} fs time steps")
        frames = self.ps_per_window / self.frame_interval_ps
        if round(frames) < 2 or abs(frames - round(frames)) > 1e-6 * frames:
            raise ValueError(
                f"ps per window ({self.ps_per_window}) must be a whole number (>= 2) of "
                f"{self.frame_interval_ps} ps frame intervals"
            )

    # --- derived quantities ---------------------------------------------------------------------

    @property
    def centers_rad(self) -> np.ndarray:
        """phi window centres ``[K]`` in radians: -pi, -pi + 2 pi / K, ..."""
        return -np.pi + 2.0 * np.pi * np.arange(self.n_windows) / self.n_windows

    @property
    def psi_centers_rad(self) -> np.ndarray:
        """psi window centres ``[M]`` in radians: -pi, -pi + 2 pi / M, ... (``[-pi]`` if psi is free)."""
        return -np.pi + 2.0 * np.pi * np.arange(self.psi_windows) / self.psi_windows

    @property
    def two_dimensional(self) -> bool:
        """Whether psi is restrained too (``psi_windows > 1``)."""
        return self.psi_windows > 1

    @property
    def n_total_windows(self) -> int:
        """Windows per repeat: ``n_windows * psi_windows``."""
        return self.n_windows * self.psi_windows

    def phi_index(self, window: int) -> int:
        """phi window index j of window ``w = j * M + m``."""
        return int(window) // self.psi_windows

    def psi_index(self, window: int) -> int:
        """psi window index m of window ``w = j * M + m``."""
        return int(window) % self.psi_windows

    @property
    def window_phi_centers_rad(self) -> np.ndarray:
        """phi centre of every window ``[W]`` (window ``j * M + m`` has phi centre j)."""
        return np.repeat(self.centers_rad, self.psi_windows)

    @property
    def window_psi_centers_rad(self) -> np.ndarray:
        """psi centre of every window ``[W]`` (window ``j * M + m`` has psi centre m)."""
        return np.tile(self.psi_centers_rad, self.n_windows)

    @property
    def spacing_deg(self) -> float:
        return 360.0 / self.n_windows

    @property
    def psi_spacing_deg(self) -> float:
        return 360.0 / self.psi_windows

    @property
    def simulated_ps_per_repeat_windows(self) -> float:
        """Window dynamics of one repeat (equilibration + production over all windows), ps."""
        return self.n_total_windows * (self.ps_per_window + self.equilibration_ps)

    @property
    def n_frames(self) -> int:
        """Frames saved per window and repeat."""
        return int(round(self.ps_per_window / self.frame_interval_ps))

    def _steps(self, ps: float) -> int:
        return int(round(ps * 1000.0 / self.timestep_fs))

    @property
    def steps_per_frame(self) -> int:
        return self._steps(self.frame_interval_ps)

    @property
    def equilibration_steps(self) -> int:
        return self._steps(self.equilibration_ps)

    @property
    def seeding_steps(self) -> int:
        return self._steps(self.seeding_ps)

    def start_of_repeat(self, repeat: int) -> str:
        """Name of the starting structure of ``repeat`` (the list ``starts`` cycled)."""
        return self.starts[repeat % len(self.starts)]

    def chain_seeds(self, repeat: int) -> ReplicaSeeds:
        """Seeds of the seeding chain of ``repeat``."""
        return self._seeds(repeat, 0)

    def window_seeds(self, repeat: int, window: int) -> ReplicaSeeds:
        """Seeds of window ``window`` of ``repeat``."""
        return self._seeds(repeat, 1 + window)

    def _seeds(self, repeat: int, slot: int) -> ReplicaSeeds:
        index = repeat * (self.n_total_windows + 1) + slot
        return replica_seeds(self.seed, index + 1)[index]

    # --- (de)serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["starts"] = list(self.starts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UmbrellaConfig":
        return settings_from_dict(cls, data, "umbrella")

    def differences(self, other: "UmbrellaConfig") -> list[str]:
        """``name=stored (requested ...)`` for every setting that differs."""
        return setting_differences(self.to_dict(), other.to_dict())
