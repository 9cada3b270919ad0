"""Continuous-time sequential Monte Carlo from a flow to the target (METHODS.md §5, Tan et al. 2025).

Particles ``x0 ~ q_X`` (the flow's samples) are annealed along the energy path

    E_t(x) = (1 - t) E_flow(x) + t E_target(x),   t_k = k / K,  k = 0, ..., K  (t_K = 1 exactly),

where ``E_flow = -log q_X`` (a `FlowEnergy`, or any energy-like start whose normalised density the
particles are drawn from). Step ``k = 0, ..., K - 1``:

1. weight increment (Jarzynski / annealed importance sampling), at the current x, before the move:
   ``log w += -(E_target - E_flow)(x) (t_{k+1} - t_k)``, i.e. ``-(E_{t_{k+1}} - E_{t_k})(x)``;
2. if the normalised ESS is below ``ess_threshold``: resample and reset ``log w = 0``;
3. move with ``langevin_steps_per_time`` steps of a kernel for ``E_{t_{k+1}}``: overdamped
   Langevin ``x' = x - h grad E_t(x) + sqrt(2 h) xi`` (unadjusted: a small bias of order h), or
   MALA (Metropolis-adjusted: leaves ``exp(-E_{t_{k+1}})`` exactly invariant) with an adaptive step.

After the last move the particles are resampled once more (unless the weights are already equal)
and ``log w`` is reset, so `SMCResult.x` are equally weighted samples of the target. The running
sum of the log weighted-mean increments estimates ``log Z_target - log Z_flow`` (``Z_flow = 1``
for a normalised flow), i.e. minus the reduced free energy difference.

Before the run, proposals with a non-finite energy, with a target energy above ``energy_cutoff``
and the top ``top_weight_fraction`` of importance weights are removed (counted in the result). This
is the convention of the SBG code; the top-weight filter trades a small bias for variance.

Infinite or NaN energies during the run (an unadjusted Langevin step into a wall or out of the
flow's support) set the particle's weight to zero (``log w = -inf``), are counted, and never
produce NaN; MALA rejects such proposals. Everything is batched over particles on ``x0``'s device
and dtype; log weights are float64.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from boltzgen.dynamics.kernels import energy_and_force, mala_step, overdamped_langevin_step
from boltzgen.progress import progress_bar
from boltzgen.sampling.flow_energy import FlowEnergy
from boltzgen.sampling.resampling import RESAMPLERS
from boltzgen.sampling.weights import TOP_WEIGHT_FRACTION, ess, top_weight_mask

#: Adaptive MALA step rule (Tan et al. 2025): grow above, shrink below the acceptance band.
MALA_ACCEPTANCE_HIGH = 0.6
MALA_ACCEPTANCE_LOW = 0.55
MALA_STEP_FACTOR = 1.1


@dataclass
class SMCConfig:
    """Settings of `smc_sample`.

    Attributes:
        n_steps: K, the number of time steps from t = 0 to t = 1 (100 in Tan et al.; 500 for chignolin).
        step_size: Langevin / MALA step h in units of x squared (nm^2 for molecules; the step
            ``x + h F + sqrt(2 h) xi`` has a diffusion constant of 1 in reduced time). The initial
            value when adapted.
        kernel: ``"langevin"`` (unadjusted overdamped Langevin) or ``"mala"`` (Metropolis-adjusted).
        adapt_step_size: MALA only: after each MALA step multiply h by 1.1 if the acceptance over
            the batch (particles with non-zero weight) is > 0.6, divide by 1.1 if it is < 0.55.
        resampling: ``"systematic"`` or ``"multinomial"``.
        ess_threshold: resample when the normalised ESS drops below it (0 disables intermediate
            resampling, 1 resamples at almost every step); the final resampling always happens.
        energy_cutoff: drop proposals whose target energy (kT) exceeds it before SMC (None: keep).
        top_weight_fraction: drop this fraction of proposals with the largest importance weights
            before SMC (0.002 as in the SBG code; 0 keeps all).
        langevin_steps_per_time: kernel steps at each time point.
    """

    n_steps: int = 100
    step_size: float = 1e-4
    kernel: str = "langevin"
    adapt_step_size: bool = True
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    energy_cutoff: Optional[float] = None
    top_weight_fraction: float = TOP_WEIGHT_FRACTION
    langevin_steps_per_time: int = 1

    def __post_init__(self):
        if int(self.n_steps) != self.n_steps or self.n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {self.n_steps!r}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be positive and finite, got {self.step_size!r}")
        if self.kernel not in ("langevin", "mala"):
            raise ValueError(f"kernel must be 'langevin' or 'mala', got {self.kernel!r}")
        if self.resampling not in RESAMPLERS:
            raise ValueError(f"resampling must be one of {sorted(RESAMPLERS)}, got {self.resampling!r}")
        if not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must lie in [0, 1], got {self.ess_threshold!r}")
        if self.energy_cutoff is not None and math.isnan(self.energy_cutoff):
            raise ValueError("energy_cutoff must not be NaN")
        if not 0.0 <= self.top_weight_fraction < 1.0:
            raise ValueError(f"top_weight_fraction must lie in [0, 1), got {self.top_weight_fraction!r}")
        if int(self.langevin_steps_per_time) != self.langevin_steps_per_time or self.langevin_steps_per_time < 1:
            raise ValueError(
                f"langevin_steps_per_time must be a positive integer, got {self.langevin_steps_per_time!r}"
            )
        self.n_steps = int(self.n_steps)
        self.langevin_steps_per_time = int(self.langevin_steps_per_time)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SMCResult:
    """Outcome of `smc_sample`.

    Attributes:
        x: final particles ``[B, D]``, equally weighted samples of the target (B = number kept after
            the pre-SMC filtering).
        log_w: final log weights ``[B]`` (float64): all 0, i.e. equal weights, after the final
            resampling (particles with weight zero are never resampled, so none is ``-inf``).
        log_w_before_final_resampling: ``[B]`` float64, the weights of the particles as they were
            after the last move (``-inf`` for dropped particles). With ``n_steps = 1`` and no
            intermediate resampling these are exactly the importance weights
            ``-(E_target - E_flow)(x0)``.
        u_target: target energies of ``x`` ``[B]`` (kT).
        log_z_ratio: estimate of ``log Z_target - log Z_flow`` (minus the reduced free energy
            difference), the sum over steps of the log weighted-mean weight increments.
        times: the time grid ``[t_0, ..., t_K]`` (``t_0 = 0``, ``t_K = 1.0`` exactly).
        ess_history: normalised ESS after each weight increment (before resampling), length K.
        acceptance_history: MALA acceptance over the batch per kernel step (empty for Langevin).
        step_size_history: step size used at each kernel step (length K * steps_per_time).
        resampling_steps: steps k after whose increment resampling happened; ``n_steps`` marks
            the final resampling.
        n_resampling_events: ``len(resampling_steps)``.
        n_distinct_ancestors: how many of the initial (kept) particles have descendants at the end.
        mean_times_resampled: mean over final particles of the number of resampling events at
            which their line was duplicated (their parent got two or more copies).
        n_proposals: proposals given; n_particles: particles after the pre-SMC filtering.
        n_dropped_energy_cutoff, n_dropped_top_weight: proposals removed by the two filters.
        n_dropped_non_finite: proposals removed because an energy or log weight was not finite,
            plus particles whose energy became non-finite during the run (weight set to zero).
        n_energy_evals: configurations at which the target energy was evaluated (incl. x0).
        n_flow_evals: configurations at which the flow energy was evaluated (incl. x0).
        wall_s: wall-clock seconds of the run.
        config: the `SMCConfig` used.
    """

    x: torch.Tensor
    log_w: torch.Tensor
    log_w_before_final_resampling: torch.Tensor
    u_target: torch.Tensor
    log_z_ratio: float
    times: list
    ess_history: list
    acceptance_history: list
    step_size_history: list
    resampling_steps: list
    n_resampling_events: int
    n_distinct_ancestors: int
    mean_times_resampled: float
    n_proposals: int
    n_particles: int
    n_dropped_energy_cutoff: int
    n_dropped_top_weight: int
    n_dropped_non_finite: int
    n_energy_evals: int
    n_flow_evals: int
    wall_s: float
    config: SMCConfig = field(default_factory=SMCConfig)

    def as_dict(self) -> dict:
        """JSON-ready summary (no tensors): scalars, histories and the config."""
        acceptance = self.acceptance_history
        return {
            "method": "continuous-time SMC",
            "log_z_ratio": self.log_z_ratio,
            "reduced_free_energy_difference": -self.log_z_ratio,
            "n_proposals": self.n_proposals,
            "n_particles": self.n_particles,
            "n_dropped_energy_cutoff": self.n_dropped_energy_cutoff,
            "n_dropped_top_weight": self.n_dropped_top_weight,
            "n_dropped_non_finite": self.n_dropped_non_finite,
            "n_resampling_events": self.n_resampling_events,
            "resampling_steps": list(self.resampling_steps),
            "n_distinct_ancestors": self.n_distinct_ancestors,
            "mean_times_resampled": self.mean_times_resampled,
            "final_time": self.times[-1],
            "ess_history": list(self.ess_history),
            "min_ess": min(self.ess_history) if self.ess_history else None,
            "acceptance_history": list(acceptance),
            "mean_acceptance": (sum(acceptance) / len(acceptance)) if acceptance else None,
            "step_size_history": list(self.step_size_history),
            "final_step_size": self.step_size_history[-1] if self.step_size_history else None,
            "n_energy_evals": self.n_energy_evals,
            "n_flow_evals": self.n_flow_evals,
            "wall_s": self.wall_s,
            "config": self.config.as_dict(),
        }


def _combine(lam: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``(1 - lam) start + lam end`` with the end points exact and never ``0 * inf``."""
    if lam == 1.0:
        return end
    if lam == 0.0:
        return start
    return (1.0 - lam) * start + lam * end


class _PathEnergy:
    """``E_lam = (1 - lam) E_flow + lam E_target`` that remembers the components it last evaluated.

    `energy_and_force` evaluates both ends with their own ``energy_and_force`` (analytic / OpenMM
    forces where available) and keeps ``(u_flow, f_flow, u_target, f_target)`` of that batch in
    ``last``, so that a MALA step's proposal energies can be split into the two components the
    next weight increment needs without evaluating them again. At ``lam = 1`` the flow is not
    evaluated (its components are NaN / zero placeholders). Non-finite components give ``+inf``.
    """

    def __init__(self, flow, target, lam: float, counts: dict):
        self.flow, self.target, self.lam, self.counts = flow, target, float(lam), counts
        self.last: Optional[tuple] = None

    def components(self, x: torch.Tensor) -> tuple:
        u_t, f_t = energy_and_force(self.target, x)
        self.counts["target"] += x.shape[0]
        if self.lam < 1.0:
            u_f, f_f = energy_and_force(self.flow, x)
            self.counts["flow"] += x.shape[0]
        else:
            u_f, f_f = torch.full_like(u_t, math.nan), torch.zeros_like(f_t)
        self.last = (u_f.detach(), f_f.detach(), u_t.detach(), f_t.detach())
        return self.last

    def combine(self, u_f, f_f, u_t, f_t) -> tuple[torch.Tensor, torch.Tensor]:
        u = _combine(self.lam, u_f, u_t)
        bad = ~torch.isfinite(u_t) if self.lam == 1.0 else ~(torch.isfinite(u_t) & torch.isfinite(u_f))
        u = torch.where(bad, torch.full_like(u, math.inf), u)
        f = _combine(self.lam, f_f, f_t)
        return u, torch.where(bad.unsqueeze(-1), torch.zeros_like(f), f)

    def energy_and_force(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combine(*self.components(x))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_and_force(x)[0]


def _weight_increment(u_f: torch.Tensor, u_t: torch.Tensor, dt: float) -> torch.Tensor:
    """``-(u_t - u_f) dt`` in float64; ``-inf`` where it is not finite (weight zero)."""
    inc = -(u_t.double() - u_f.double()) * dt
    return torch.where(torch.isfinite(inc), inc, torch.full_like(inc, -math.inf))


def _pre_filter(
    u_f: torch.Tensor, u_t: torch.Tensor, log_w0: torch.Tensor, config: SMCConfig
) -> tuple[torch.Tensor, int, int, int]:
    """Keep mask ``[B]`` and the counts dropped as (non-finite, energy cutoff, top weight)."""
    finite = torch.isfinite(u_f) & torch.isfinite(u_t) & torch.isfinite(log_w0)
    keep = finite.clone()
    n_cut = 0
    if config.energy_cutoff is not None:
        above = keep & (u_t > config.energy_cutoff)
        n_cut = int(above.sum())
        keep &= ~above
    n_top = 0
    if config.top_weight_fraction > 0 and bool(keep.any()):
        kept_idx = torch.nonzero(keep).squeeze(-1)
        top_keep = top_weight_mask(log_w0[kept_idx].cpu(), config.top_weight_fraction).to(keep.device)
        n_top = int((~top_keep).sum())
        keep[kept_idx[~top_keep]] = False
    return keep, int((~finite).sum()), n_cut, n_top


def smc_sample(
    flow_energy,
    target,
    x0: torch.Tensor,
    config: Optional[SMCConfig] = None,
    log_w0: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> SMCResult:
    """Anneal proposals ``x0`` from ``exp(-E_flow)`` to ``exp(-E_target)`` by continuous-time SMC.

    Args:
        flow_energy: energy-like start of the path, ``E_flow = -log q_X`` (a `FlowEnergy`, or a
            `Distribution`); ``x0`` must be samples of its normalised density.
        target: energy-like target (reduced energy in kT, ``energy(x [B, D]) -> [B]``; an
            ``energy_and_force`` method is used when present).
        x0: proposals ``[B, D]`` drawn from the flow; the run uses their device and dtype.
        config: `SMCConfig` (defaults if None).
        log_w0: importance log weights of ``x0`` ``[B]`` (``-u - log q``), used only by the
            pre-SMC top-weight filter; by default ``-(E_target - E_flow)(x0)``. The SMC weights
            themselves start equal (``x0`` are exact samples of ``E_0 = E_flow``).
        generator: torch random generator on ``x0``'s device for the noise, the MALA accept
            draws and the resampling (None: the global RNG).
        progress: show a progress bar (on an interactive stderr).

    Returns:
        `SMCResult`.

    Raises:
        RuntimeError: every particle's weight became zero (no finite energy left).
    """
    config = config or SMCConfig()
    if x0.dim() != 2 or x0.shape[0] == 0 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a non-empty floating-point [B, D] tensor, got {list(x0.shape)} {x0.dtype}")
    start_time = time.perf_counter()
    resample = RESAMPLERS[config.resampling]
    counts = {"target": 0, "flow": 0}
    n_steps = config.n_steps
    times = [k / n_steps for k in range(n_steps + 1)]  # t_K = K / K == 1.0 exactly

    # Energies of the proposals at t = 0 and the pre-SMC filters.
    x = x0.detach()
    u_f, f_f, u_t, f_t = _PathEnergy(flow_energy, target, 0.0, counts).components(x)
    if log_w0 is None:
        log_w0 = _weight_increment(u_f, u_t, 1.0)
    else:
        log_w0 = torch.as_tensor(log_w0, device=x.device).double().reshape(-1)
        if log_w0.shape != (x.shape[0],):
            raise ValueError(f"log_w0 must have shape [{x.shape[0]}], got {list(log_w0.shape)}")
        log_w0 = torch.where(torch.isfinite(log_w0), log_w0, torch.full_like(log_w0, -math.inf))
    keep, n_non_finite, n_cut, n_top = _pre_filter(u_f, u_t, log_w0, config)
    if not bool(keep.any()):
        raise RuntimeError(
            "no proposal survived the pre-SMC filtering (non-finite energies, energy cutoff, top weights)"
        )
    x, u_f, f_f, u_t, f_t = (v[keep] for v in (x, u_f, f_f, u_t, f_t))
    n = x.shape[0]

    log_w = torch.zeros(n, dtype=torch.float64, device=x.device)
    ancestors = torch.arange(n, device=x.device)
    times_resampled = torch.zeros(n, dtype=torch.int64, device=x.device)
    log_z = 0.0
    step_size = float(config.step_size)
    ess_history, acceptance_history, step_size_history, resampling_steps = [], [], [], []

    def do_resample(k: int):
        nonlocal x, u_f, f_f, u_t, f_t, log_w, ancestors, times_resampled
        idx = resample(log_w, generator=generator)
        offspring = torch.bincount(idx, minlength=n)
        x, u_f, f_f, u_t, f_t = (v[idx] for v in (x, u_f, f_f, u_t, f_t))
        ancestors = ancestors[idx]
        times_resampled = times_resampled[idx] + (offspring[idx] > 1).long()
        log_w = torch.zeros_like(log_w)
        resampling_steps.append(k)

    def check_alive():
        if not bool(torch.isfinite(log_w).any()):
            raise RuntimeError(
                "every SMC particle has weight zero (non-finite energies); reduce the step size or check the energies"
            )

    with progress_bar(total=n_steps, desc="SMC", unit="step", quiet=not progress) as bar:
        for k in range(n_steps):
            t_next = times[k + 1]
            # 1. weight increment at the current x, before the move.
            inc = _weight_increment(u_f, u_t, t_next - times[k])
            new_log_w = log_w + inc
            log_z += float(torch.logsumexp(new_log_w, 0) - torch.logsumexp(log_w, 0))
            n_non_finite += int((torch.isfinite(log_w) & ~torch.isfinite(new_log_w)).sum())
            log_w = new_log_w
            check_alive()
            ess_now = ess(log_w)
            ess_history.append(ess_now)
            # 2. resampling.
            if ess_now < config.ess_threshold:
                do_resample(k)
            # 3. move targeting E_{t_{k+1}}.
            path = _PathEnergy(flow_energy, target, t_next, counts)
            for _ in range(config.langevin_steps_per_time):
                step_size_history.append(step_size)
                if config.kernel == "langevin":
                    _, force = path.combine(u_f, f_f, u_t, f_t)
                    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
                    x = overdamped_langevin_step(x, force, step_size, noise)
                    u_f, f_f, u_t, f_t = path.components(x)
                else:
                    u_x, force = path.combine(u_f, f_f, u_t, f_t)
                    x, _, _, accepted = mala_step(path, x, u_x, force, step_size, generator=generator)
                    y_u_f, y_f_f, y_u_t, y_f_t = path.last
                    keep_new = accepted.unsqueeze(-1)
                    u_f = torch.where(accepted, y_u_f, u_f)
                    u_t = torch.where(accepted, y_u_t, u_t)
                    f_f = torch.where(keep_new, y_f_f, f_f)
                    f_t = torch.where(keep_new, y_f_t, f_t)
                    alive = torch.isfinite(log_w)
                    acceptance = float(accepted[alive].double().mean())
                    acceptance_history.append(acceptance)
                    if config.adapt_step_size:
                        if acceptance > MALA_ACCEPTANCE_HIGH:
                            step_size *= MALA_STEP_FACTOR
                        elif acceptance < MALA_ACCEPTANCE_LOW:
                            step_size /= MALA_STEP_FACTOR
            bar.update(1)

    # Particles that ended outside the target's support get weight zero; then the final resampling.
    dead = torch.isfinite(log_w) & ~torch.isfinite(u_t)
    n_non_finite += int(dead.sum())
    log_w = torch.where(dead, torch.full_like(log_w, -math.inf), log_w)
    check_alive()
    log_w_before_final = log_w.clone()
    if not bool((log_w == 0).all()):
        do_resample(n_steps)

    return SMCResult(
        x=x,
        log_w=log_w,
        log_w_before_final_resampling=log_w_before_final,
        u_target=u_t,
        log_z_ratio=log_z,
        times=times,
        ess_history=ess_history,
        acceptance_history=acceptance_history,
        step_size_history=step_size_history,
        resampling_steps=resampling_steps,
        n_resampling_events=len(resampling_steps),
        n_distinct_ancestors=int(torch.unique(ancestors).numel()),
        mean_times_resampled=float(times_resampled.double().mean()),
        n_proposals=int(x0.shape[0]),
        n_particles=n,
        n_dropped_energy_cutoff=n_cut,
        n_dropped_top_weight=n_top,
        n_dropped_non_finite=n_non_finite,
        n_energy_evals=counts["target"],
        n_flow_evals=counts["flow"],
        wall_s=time.perf_counter() - start_time,
        config=config,
    )


def smc_from_generator(
    bg,
    n: int,
    config: Optional[SMCConfig] = None,
    target=None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> SMCResult:
    """Draw ``n`` proposals from a `BoltzmannGenerator` and run `smc_sample` on them.

    Args:
        bg: the generator (``sample_with_log_prob_no_grad``, ``log_prob``, ``target``).
        n: number of proposals (particles before filtering).
        config: `SMCConfig`.
        target: energy-like target; defaults to ``bg.target``.
        generator: random generator for the SMC moves and resampling (the flow samples use the
            global RNG, as `BoltzmannGenerator` does).
        progress: show a progress bar.

    The flow energy of the path is `FlowEnergy(bg)` (``-log q_X`` through the flow's inverse);
    the pre-SMC filters use the importance weights ``-(E_target - E_flow)(x0)`` computed from it,
    so the target is evaluated once per proposal.
    """
    target = target if target is not None else bg.target
    if target is None:
        raise ValueError("smc_from_generator needs a target: pass one or give the generator a target energy")
    x0, _ = bg.sample_with_log_prob_no_grad(n)
    return smc_sample(FlowEnergy(bg), target, x0, config, generator=generator, progress=progress)
