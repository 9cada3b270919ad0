"""Independence Metropolis-Hastings with flow proposals (METHODS.md §7).

A move proposes ``x' ~ q_X`` independently of the current state ``x`` and accepts it with

    min(1, exp(-u(x') - log q(x') + u(x) + log q(x))) = min(1, w(x') / w(x)),

the ratio of importance weights. This leaves ``exp(-u)`` exactly invariant for any proposal
density whose support covers the target's, so it can run beside MD as one more Monte Carlo move
(openmmtools-style: one ``apply(state) -> state`` method). ``B`` independent chains advance together.
Proposals whose energy or log density is not finite are rejected; a chain whose current state is
not finite accepts the first finite proposal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from boltzgen.progress import progress_bar


@dataclass
class ChainState:
    """State of ``B`` independent chains.

    Attributes:
        x: positions ``[B, D]``.
        u: target reduced energies ``u(x)`` ``[B]`` (kT).
        log_q: proposal log densities ``log q_X(x)`` ``[B]``.
    """

    x: torch.Tensor
    u: torch.Tensor
    log_q: torch.Tensor

    def __post_init__(self):
        b = self.x.shape[0]
        if self.x.dim() != 2 or self.u.shape != (b,) or self.log_q.shape != (b,):
            raise ValueError(
                f"ChainState needs x [B, D], u [B], log_q [B]; got {list(self.x.shape)}, "
                f"{list(self.u.shape)}, {list(self.log_q.shape)}"
            )

    @property
    def n_chains(self) -> int:
        return int(self.x.shape[0])

    @property
    def log_w(self) -> torch.Tensor:
        """Importance log weights ``-u - log q`` ``[B]`` (float64), ``-inf`` where not finite."""
        return _log_weights(self.u, self.log_q)


def _log_weights(u: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    log_w = -u.double() - log_q.double()
    return torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))


def _target_energy(target, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return target.energy(x).detach()


class FlowIndependenceMove:
    """Independence Metropolis-Hastings move with a flow (or any normalised density) as proposal.

    Args:
        proposal: a `BoltzmannGenerator` (``sample_with_log_prob_no_grad(n)``), or any object with
            ``sample_with_log_prob(n)``, or with ``sample(n)`` and ``log_prob(x)`` (a
            `Distribution`; it also receives ``generator``).
        target: energy-like target, ``energy(x [B, D]) -> [B]`` in kT.
        generator: torch random generator for the accept draws (and for a `Distribution`'s samples).

    Attributes:
        n_proposed, n_accepted: counts over all `apply` calls (per chain and step).
    """

    def __init__(self, proposal, target, generator: Optional[torch.Generator] = None):
        self.proposal, self.target, self.generator = proposal, target, generator
        self.n_proposed = 0
        self.n_accepted = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed over all moves so far (NaN before the first)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else math.nan

    def propose(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` proposals and their log densities: ``(x [n, D], log_q [n])``, without gradients."""
        with torch.no_grad():
            if hasattr(self.proposal, "sample_with_log_prob_no_grad"):
                x, log_q = self.proposal.sample_with_log_prob_no_grad(n)
            elif hasattr(self.proposal, "sample_with_log_prob"):
                x, log_q = self.proposal.sample_with_log_prob(n)
            else:
                x = self.proposal.sample(n, generator=self.generator)
                log_q = self.proposal.log_prob(x)
        return x.detach(), log_q.detach()

    def initial_state(self, n_chains: int) -> ChainState:
        """Chains started at independent proposals (their energies evaluated)."""
        x, log_q = self.propose(n_chains)
        return ChainState(x, _target_energy(self.target, x), log_q)

    def state_at(self, x: torch.Tensor) -> ChainState:
        """Chains started at given positions ``x [B, D]`` (energies and log densities evaluated)."""
        with torch.no_grad():
            log_q = self.proposal.log_prob(x).detach()
        return ChainState(x.detach(), _target_energy(self.target, x), log_q)

    def apply(self, state: ChainState) -> ChainState:
        """One independence MH step for every chain; returns the new state (the input is unchanged)."""
        x_new, log_q_new = self.propose(state.n_chains)
        u_new = _target_energy(self.target, x_new)
        log_accept = _log_weights(u_new, log_q_new) - state.log_w
        # -inf - -inf is NaN: neither state has weight; keep the current one.
        log_accept = torch.where(torch.isnan(log_accept), torch.full_like(log_accept, -math.inf), log_accept)
        uniform = torch.rand(state.n_chains, dtype=torch.float64, device=log_accept.device, generator=self.generator)
        accepted = torch.log(uniform) < log_accept
        self.n_proposed += state.n_chains
        self.n_accepted += int(accepted.sum())
        keep = accepted.to(state.x.device)
        return ChainState(
            x=torch.where(keep.unsqueeze(-1), x_new.to(state.x.dtype), state.x),
            u=torch.where(keep, u_new.to(state.u.dtype), state.u),
            log_q=torch.where(keep, log_q_new.to(state.log_q.dtype), state.log_q),
        )


def run_chains(
    move: FlowIndependenceMove,
    state: ChainState,
    n_steps: int,
    thin: int = 1,
    flatten: bool = False,
    return_state: bool = False,
    progress: bool = False,
):
    """Apply ``move`` ``n_steps`` times, keeping every ``thin``-th state.

    Args:
        move: an object with ``apply(state) -> state`` (and ``n_proposed`` / ``n_accepted``).
        state: the starting `ChainState` of B chains (not itself stored).
        n_steps: number of moves; thin: keep the state after moves ``thin, 2 thin, ...``.
        flatten: return samples as ``[S * B, D]`` (step-major) instead of ``[S, B, D]``.
        return_state: also return the final state (to continue the chains).
        progress: show a progress bar.

    Returns:
        ``(samples [S, B, D] or [S * B, D], acceptance)`` with ``S = n_steps // thin`` and the
        acceptance rate of these ``n_steps`` moves; plus the final `ChainState` if ``return_state``.
    """
    if int(n_steps) != n_steps or n_steps < 0 or int(thin) != thin or thin < 1:
        raise ValueError(f"n_steps must be >= 0 and thin >= 1 (integers), got {n_steps!r}, {thin!r}")
    proposed0, accepted0 = move.n_proposed, move.n_accepted
    kept = []
    with progress_bar(total=n_steps, desc="flow MCMC", unit="step", quiet=not progress) as bar:
        for step in range(1, int(n_steps) + 1):
            state = move.apply(state)
            if step % thin == 0:
                kept.append(state.x)
            bar.update(1)
    samples = torch.stack(kept) if kept else state.x.new_zeros((0, *state.x.shape))
    if flatten:
        samples = samples.reshape(-1, state.x.shape[1])
    proposed = move.n_proposed - proposed0
    acceptance = (move.n_accepted - accepted0) / proposed if proposed else math.nan
    return (samples, acceptance, state) if return_state else (samples, acceptance)
