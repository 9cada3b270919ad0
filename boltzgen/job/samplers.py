"""The job's three ways from a trained generator to equilibrium samples: ``is``, ``smc``, ``mcmc``.

- ``is`` (importance sampling): flow samples with weights ``w = exp(-u - log q)``.
- ``smc``: the same proposals, annealed from the flow density to the target by continuous-time
  SMC (MALA moves, Jarzynski weights, resampling; `boltzgen.sampling.smc_sample`); the final
  particles carry equal weights.
- ``mcmc``: chains of flow-proposal independence Metropolis-Hastings
  (`boltzgen.sampling.FlowIndependenceMove`), started from flow samples; every state after a
  burn-in is kept with weight 1.

Whatever the sampler, summary.json's ``ess`` / ``ess_filtered`` describe the flow's own
importance weights (the same number for all three, so runs stay comparable), and the sampler's
own diagnostics go to ``sampler_diagnostics``. Samples of ``smc`` and ``mcmc`` are correlated
(resampled copies, repeated chain states): bootstrap error bars computed as if they were
independent are too small; the diagnostics give the numbers to judge by (distinct ancestors,
acceptance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from boltzgen.sampling import (
    FlowIndependenceMove,
    SMCConfig,
    WeightSummary,
    run_chains,
    smc_sample,
    summarize_weights,
)
from boltzgen.job.model import in_support
from boltzgen.sampling.flow_energy import FlowEnergy

#: Names accepted by ``boltzgen run --sampler``.
SAMPLERS = ("is", "smc", "mcmc")


@dataclass(frozen=True)
class SamplerSettings:
    """Settings of the ``smc`` and ``mcmc`` samplers.

    Attributes:
        smc_steps: SMC time steps K from the flow (t = 0) to the target (t = 1).
        smc_step_size: initial MALA step h in nm^2 (adapted towards 55-60% acceptance).
        smc_kernel: ``"mala"`` or ``"langevin"``.
        mcmc_samples_per_chain: states kept per chain; chains = n_samples / this.
        mcmc_burn_in: steps per chain before states are kept.
    """

    smc_steps: int = 100
    smc_step_size: float = 1e-6
    smc_kernel: str = "mala"
    mcmc_samples_per_chain: int = 20
    mcmc_burn_in: int = 10

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SampleSet:
    """Samples and what the summary needs: ``x [n, D]`` (nm), ``log_w [n]`` (float64 numpy,
    -inf for dropped), ``u [n]`` (kT, float64 numpy), the flow proposals' weight summary, the
    sampler's diagnostics and the target energy evaluations spent."""

    x: torch.Tensor
    log_w: np.ndarray
    u: np.ndarray
    proposal_weights: WeightSummary
    diagnostics: dict
    n_energy_evals: int


def draw_samples(generator, sampler: str, n: int, settings: SamplerSettings = SamplerSettings(),
                 seed: int = 0) -> SampleSet:
    """Draw about ``n`` equilibrium samples from ``generator`` (with its target) with ``sampler``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    generator.eval()
    if sampler == "mcmc":
        return _mcmc(generator, n, settings, seed)
    x, log_w, u = generator.sample_with_log_weights(n, return_energies=True)
    proposal = summarize_weights(log_w.cpu())
    if sampler == "is":
        return SampleSet(x.cpu(), log_w.cpu().numpy(), u.cpu().double().numpy(), proposal, {}, n)
    config = SMCConfig(n_steps=settings.smc_steps, step_size=settings.smc_step_size, kernel=settings.smc_kernel)
    random = torch.Generator(device=x.device).manual_seed(seed)
    flow_energy = FlowEnergy(generator, support=lambda x: in_support(generator, x).to(x.device))
    result = smc_sample(flow_energy, generator.target, x, config, log_w0=log_w, generator=random)
    diagnostics = result.as_dict()
    return SampleSet(result.x.detach().cpu(), result.log_w.cpu().numpy(), result.u_target.detach().cpu().double().numpy(),
                     proposal, diagnostics, n + result.n_energy_evals)


def _mcmc(generator, n: int, settings: SamplerSettings, seed: int) -> SampleSet:
    n_chains = max(1, math.ceil(n / settings.mcmc_samples_per_chain))
    random = torch.Generator().manual_seed(seed)
    move = FlowIndependenceMove(generator, generator.target, generator=random)
    state = move.initial_state(n_chains)
    proposal = summarize_weights(state.log_w.cpu())
    _, burn_in_acceptance, state = run_chains(move, state, settings.mcmc_burn_in, return_state=True)
    proposed, accepted = move.n_proposed, move.n_accepted
    xs, us = [], []
    for _ in range(settings.mcmc_samples_per_chain):
        state = move.apply(state)
        xs.append(state.x)
        us.append(state.u)
    x = torch.cat(xs)[:n]
    u = torch.cat(us)[:n].double()
    log_w = torch.where(torch.isfinite(u), torch.zeros_like(u), torch.full_like(u, -math.inf))
    diagnostics = {
        "n_chains": n_chains, "burn_in_steps": settings.mcmc_burn_in,
        "steps_kept_per_chain": settings.mcmc_samples_per_chain,
        "acceptance_rate": (move.n_accepted - accepted) / max(move.n_proposed - proposed, 1),
        "burn_in_acceptance_rate": float(burn_in_acceptance),
        "n_distinct_samples": int(torch.unique(x, dim=0).shape[0]),
    }
    n_evals = n_chains * (1 + settings.mcmc_burn_in + settings.mcmc_samples_per_chain)
    return SampleSet(x.cpu(), log_w.cpu().numpy(), u.cpu().numpy(), proposal, diagnostics, n_evals)
