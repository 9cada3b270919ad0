"""`OpenMMEnergy`: the reduced energy of any OpenMM System, evaluated by a pool of Contexts, differentiable in torch.

>>> from boltzgen import systems
>>> ad2 = systems.load("alanine_dipeptide_implicit")
>>> with OpenMMEnergy(ad2.openmm_system, ad2.temperature) as target:   # doctest: +SKIP
...     u = target.energy(x)            # x: [B, 66] nm -> u: [B] kT
...     u.sum().backward()              # x.grad = -force, kT/nm
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass

import openmm
import torch
from torch.autograd.function import once_differentiable

from boltzgen.energy.base import Energy
from boltzgen.energy.openmm_platforms import (
    available_platform_names,
    context_properties,
    fastest_platform,
    get_platform,
    known_properties,
)
from boltzgen.energy.openmm_pool import PARALLEL_MODES, ContextPool
from boltzgen.units import kt_kj_per_mol

#: ``parallel="auto"`` hands a batch to worker processes when evaluating it serially would take at
#: least this long (s). Measured on 2 cores (benchmarks/openmm_energy_throughput.py): processes
#: break even with one Context at about 0.3-0.45 ms of serial work (alanine dipeptide, Reference:
#: batch ~8 in implicit solvent, ~32 in vacuum), because waking a worker costs ~0.1-0.2 ms.
AUTO_MIN_PARALLEL_WORK_S = 5e-4
#: Before any evaluation was timed, ``parallel="auto"`` uses processes from this batch size on.
AUTO_MIN_PARALLEL_BATCH_UNTIMED = 32
#: Platforms whose Contexts compute on the CPU; on others (GPUs) ``parallel="auto"`` stays serial
#: rather than opening one GPU context per worker.
CPU_PLATFORMS = ("Reference", "CPU")


class NonFiniteEnergyWarning(UserWarning):
    """Some configurations had non-finite coordinates, energies or forces, or made OpenMM fail."""


def default_n_workers() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_parallel_mode(batch_size: int, n_workers: int, seconds_per_row: float | None) -> str:
    """The parallel mode ``parallel="auto"`` uses: ``"serial"`` or ``"processes"``.

    Processes when there are several workers and the batch's estimated serial time
    ``batch_size * seconds_per_row`` reaches :data:`AUTO_MIN_PARALLEL_WORK_S` (without an estimate:
    when ``batch_size >= AUTO_MIN_PARALLEL_BATCH_UNTIMED``). Never threads: on the machine this was
    measured on, processes were as fast or faster at every batch size (see the benchmark).
    """
    if n_workers <= 1 or batch_size < 2:
        return "serial"
    if seconds_per_row is None:
        return "processes" if batch_size >= AUTO_MIN_PARALLEL_BATCH_UNTIMED else "serial"
    return "processes" if batch_size * seconds_per_row >= AUTO_MIN_PARALLEL_WORK_S else "serial"


@dataclass
class EvaluationCounts:
    """Cumulative counters of an `OpenMMEnergy` (a plain object: cheaper to update than Module attributes)."""

    evaluations: int = 0
    nonfinite: int = 0


class _EnergyWithForceGradient(torch.autograd.Function):
    """u(x) whose backward pass is ``-force`` times the incoming gradient, from one OpenMM evaluation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, target: "OpenMMEnergy") -> torch.Tensor:
        energy, force = target._evaluate(x, want_forces=True)
        ctx.save_for_backward(force)
        return energy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_energy: torch.Tensor):
        (force,) = ctx.saved_tensors
        return -grad_energy.unsqueeze(-1) * force, None


class OpenMMEnergy(Energy):
    """Reduced energy u(x) = E(x) / kT of an OpenMM System, for batches of flat positions.

    Args:
        openmm_system: any ``openmm.System`` (copied: later changes to it are not seen).
        temperature: temperature in K; kT = `boltzgen.units.kt_kj_per_mol` (temperature).
        platform: an OpenMM platform name ("Reference", "CPU", "CUDA", "OpenCL"), or ``"auto"`` for
            the fastest one on this system, measured at construction (a few dozen evaluations per
            platform, tens of milliseconds); the choice is in :attr:`platform_name`.
        n_workers: the most Contexts evaluating at the same time; default: the number of CPU cores
            this process may use.
        parallel: ``"serial"`` (one Context in the calling thread), ``"threads"`` (one Context per
            thread; OpenMM releases the GIL while computing), ``"processes"`` (the calling thread
            plus ``n_workers - 1`` worker processes), or ``"auto"``: serial for small batches,
            processes once a batch would take :data:`AUTO_MIN_PARALLEL_WORK_S` serially (from the
            measured time per evaluation); serial on GPU platforms.
        platform_properties: OpenMM platform properties, e.g. ``{"Precision": "double"}``. On the
            CPU platform each Context gets ``Threads=1`` when ``n_workers > 1`` unless set here.

    Shapes and units: ``x`` is ``[B, 3N]`` positions in nm (float32 or float64, any device);
    energies are ``[B]`` in kT, forces ``[B, 3N]`` in kT/nm, with the dtype and device of ``x``.
    Computed in float64 on the CPU.

    Bad rows never raise: rows with NaN/inf coordinates are not sent to OpenMM; rows that make
    OpenMM fail or return a non-finite energy or force (overlapping atoms) get energy ``+inf`` and
    force 0, and the Context is reinitialised. Each call with such rows emits one
    `NonFiniteEnergyWarning`; :attr:`n_evaluations` and :attr:`n_nonfinite` count configurations
    over the object's life. Finite but huge energies are returned as they are.

    Contexts, threads and worker processes are created on first use and reused; :meth:`close` (or
    leaving a ``with`` block) releases them, and they are released at interpreter exit anyway. The
    object pickles (the pool is rebuilt on first use after unpickling).
    """

    def __init__(
        self,
        openmm_system: openmm.System,
        temperature: float,
        platform: str = "auto",
        n_workers: int | None = None,
        parallel: str = "auto",
        platform_properties: dict[str, str] | None = None,
    ):
        if not isinstance(openmm_system, openmm.System):
            raise TypeError(f"openmm_system must be an openmm.System, got {type(openmm_system).__name__}")
        if temperature is None or not float(temperature) > 0:
            raise ValueError(f"temperature must be positive (K), got {temperature!r}")
        n_particles = openmm_system.getNumParticles()
        super().__init__(3 * n_particles, temperature)
        if parallel not in ("auto", *PARALLEL_MODES):
            raise ValueError(f"parallel must be one of {('auto', *PARALLEL_MODES)}, got {parallel!r}")
        if n_workers is None:
            n_workers = default_n_workers()
        if isinstance(n_workers, bool) or not isinstance(n_workers, numbers.Integral) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        n_workers = int(n_workers)
        self.n_particles = n_particles
        self.n_workers = n_workers
        self.parallel = parallel
        self.requested_platform = platform
        self.requested_platform_properties = {str(k): str(v) for k, v in (platform_properties or {}).items()}
        #: k_B T in kJ/mol.
        self.kt = kt_kj_per_mol(temperature)
        self._counts = EvaluationCounts()
        system_xml = openmm.XmlSerializer.serialize(openmm_system)
        self._pool = self._build_pool(system_xml, openmm_system)

    def _build_pool(self, system_xml: str, system: openmm.System) -> ContextPool:
        """Resolve the platform (measuring if ``"auto"``) and make the (still empty) pool."""
        single_threaded = self.n_workers > 1
        requested = self.requested_platform_properties
        if self.requested_platform == "auto":
            name, timings = fastest_platform(system, requested, single_threaded)
            properties = known_properties(name, requested)
        else:
            name, timings = str(self.requested_platform), {}
            known = set(get_platform(name).getPropertyNames())
            unknown = sorted(set(requested) - known)
            if unknown:
                raise ValueError(
                    f"unknown properties {unknown} for OpenMM platform {name!r}; it knows: {sorted(known) or 'none'}"
                )
            properties = requested
        #: The OpenMM platform in use.
        self.platform_name: str = name
        #: Seconds per evaluation measured for each platform when ``platform="auto"`` (else empty).
        self.platform_timings_s: dict[str, float] = timings
        return ContextPool(system_xml, name, context_properties(name, properties, single_threaded), self.n_workers)

    # -- evaluation -----------------------------------------------------------------------------

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy ``[B]`` (kT) of positions ``x`` ``[B, 3N]`` (nm); differentiable w.r.t. ``x``."""
        x = self.check_input(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _EnergyWithForceGradient.apply(x, self)
        return self._evaluate(x, want_forces=False)[0]

    def force(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced force ``-du/dx`` ``[B, 3N]`` (kT/nm) at positions ``x`` ``[B, 3N]`` (nm)."""
        return self.energy_and_force(x)[1]

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy ``[B]`` (kT) and force ``[B, 3N]`` (kT/nm) from one OpenMM evaluation per row (not differentiable)."""
        return self._evaluate(self.check_input(x), want_forces=True)

    def _evaluate(self, x: torch.Tensor, want_forces: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size = x.shape[0]
        positions = x.detach().to(device="cpu", dtype=torch.float64).numpy().reshape(batch_size, self.n_particles, 3)
        mode = self.parallel_mode_for(batch_size)
        energies, forces, n_failed = self._pool.evaluate(positions, want_forces, mode)
        counts = self._counts
        counts.evaluations += batch_size
        if n_failed:
            counts.nonfinite += n_failed
            warnings.warn(
                f"{n_failed} of {batch_size} configurations had non-finite coordinates, energy or force, "
                f"or made OpenMM fail; they get energy +inf and force 0",
                NonFiniteEnergyWarning,
                stacklevel=3,
            )
        energy = torch.from_numpy(energies / self.kt).to(device=x.device, dtype=x.dtype)
        if forces is None:
            return energy, None
        force = torch.from_numpy(forces.reshape(batch_size, -1) / self.kt).to(device=x.device, dtype=x.dtype)
        return energy, force

    def parallel_mode_for(self, batch_size: int) -> str:
        """The mode a batch of ``batch_size`` runs in: :attr:`parallel`, or what ``"auto"`` picks now."""
        if self.parallel != "auto":
            return self.parallel
        if self.platform_name not in CPU_PLATFORMS:
            return "serial"
        seconds_per_row = self._pool.seconds_per_row
        if seconds_per_row is None:
            seconds_per_row = self.platform_timings_s.get(self.platform_name)
        return auto_parallel_mode(batch_size, self.n_workers, seconds_per_row)

    @property
    def n_evaluations(self) -> int:
        """Configurations evaluated over this object's life (assignable, e.g. to reset it)."""
        return self._counts.evaluations

    @n_evaluations.setter
    def n_evaluations(self, value: int) -> None:
        self._counts.evaluations = int(value)

    @property
    def n_nonfinite(self) -> int:
        """Configurations that got energy +inf (bad input, OpenMM error, non-finite result), cumulative."""
        return self._counts.nonfinite

    @n_nonfinite.setter
    def n_nonfinite(self, value: int) -> None:
        self._counts.nonfinite = int(value)

    # -- resources ------------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running worker processes (empty unless ``"processes"`` was used)."""
        return self._pool.worker_pids

    def close(self) -> None:
        """Release Contexts, threads and worker processes; a later call re-creates them."""
        self._pool.close()

    def __enter__(self) -> "OpenMMEnergy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        pool: ContextPool = state.pop("_pool")
        state["_pool_recipe"] = (pool.system_xml, pool.platform_name, pool.properties)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        system_xml, platform_name, properties = state.pop("_pool_recipe")
        super().__setstate__(state)
        if platform_name in available_platform_names() or self.requested_platform != "auto":
            self._pool = ContextPool(system_xml, platform_name, properties, self.n_workers)
        else:  # "auto" chose a platform this machine lacks: choose again
            self._pool = self._build_pool(system_xml, openmm.XmlSerializer.deserialize(system_xml))

    def extra_repr(self) -> str:
        return (
            f"n_particles={self.n_particles}, temperature={self.temperature}, platform={self.platform_name!r}, "
            f"parallel={self.parallel!r}, n_workers={self.n_workers}"
        )
