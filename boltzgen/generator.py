"""`BoltzmannGenerator`: a prior, a flow from prior space to configurations, and a target energy."""

from __future__ import annotations

import torch

from boltzgen.sampling.weights import log_importance_weights


class BoltzmannGenerator(torch.nn.Module):
    """Generator density q_X = F_# q_Z and its importance weights against exp(-u).

    Args:
        prior: a `boltzgen.distributions.Distribution` on the latent space ``[B, D_z]``.
        flow: a `boltzgen.flows.Flow` whose ``forward`` maps latent ``z`` to configurations
            ``x`` ``[B, D_x]`` (nm for molecules) with ``log|det dx/dz|``.
        target: a `boltzgen.energy.Energy` (reduced energy u(x) in kT), or None when only the
            density is needed.
        chunk_size: configurations per flow evaluation in the no-grad sampling helpers.

    ``log q_X(x) = log q_Z(z) - log|det dF/dz|``; for maps to an embedded manifold (internal
    coordinates with the global rotation and translation removed) this is the density over the
    internal degrees of freedom, which is all that importance weights need.
    """

    def __init__(self, prior, flow, target=None, chunk_size: int = 4096):
        super().__init__()
        self.prior = prior
        self.flow = flow
        self.target = target
        self.chunk_size = int(chunk_size)

    def sample_with_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` configurations: ``(x [n, D_x], log q_X(x) [n])`` (differentiable)."""
        z = self.prior.sample(n)
        x, logdet = self.flow(z)
        return x, self.prior.log_prob(z) - logdet

    def sample(self, n: int) -> torch.Tensor:
        """``n`` configurations ``[n, D_x]`` without gradients, in chunks."""
        return self.sample_with_log_prob_no_grad(n)[0]

    def sample_with_log_prob_no_grad(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`sample_with_log_prob`, chunked and without building a graph."""
        xs, logqs = [], []
        with torch.no_grad():
            for start in range(0, int(n), self.chunk_size):
                x, log_q = self.sample_with_log_prob(min(self.chunk_size, int(n) - start))
                xs.append(x)
                logqs.append(log_q)
        return torch.cat(xs), torch.cat(logqs)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Generator log density ``log q_X(x)``, shape ``[B]`` (differentiable in x and parameters)."""
        z, logdet_inverse = self.flow.inverse(x)
        return self.prior.log_prob(z) + logdet_inverse

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Target reduced energy u(x) ``[B]`` (kT)."""
        if self.target is None:
            raise ValueError("this BoltzmannGenerator has no target energy")
        return self.target.energy(x)

    def sample_with_log_weights(
        self, n: int, return_energies: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Draw ``n`` samples with log importance weights ``log w = -u(x) - log q_X(x)``.

        Returns ``(x [n, D_x], log_w [n])`` (and ``u [n]`` if ``return_energies``). Samples whose
        energy is not finite get ``log_w = -inf``: they count in ``n`` but carry no weight
        (`boltzgen.sampling.summarize_weights` reports how many).
        """
        x, log_q = self.sample_with_log_prob_no_grad(n)
        with torch.no_grad():
            u = torch.cat([self.energy(chunk) for chunk in torch.split(x, self.chunk_size)])
        log_w = log_importance_weights(u, log_q)
        return (x, log_w, u) if return_energies else (x, log_w)
