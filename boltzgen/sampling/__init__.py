"""Sampling from Boltzmann generators: importance weights and ESS, sequential Monte Carlo from the
flow to the target, and flow-proposal Markov chain Monte Carlo."""

from boltzgen.sampling.flow_energy import FlowEnergy
from boltzgen.sampling.mcmc import ChainState, FlowIndependenceMove, run_chains
from boltzgen.sampling.resampling import multinomial_resample, systematic_resample
from boltzgen.sampling.smc import SMCConfig, SMCResult, smc_from_generator, smc_sample
from boltzgen.sampling.weights import (
    TOP_WEIGHT_FRACTION,
    WeightSummary,
    ess,
    ess_filtered,
    log_importance_weights,
    normalized_weights,
    summarize_weights,
    top_weight_mask,
)

__all__ = [
    "TOP_WEIGHT_FRACTION",
    "WeightSummary",
    "ess",
    "ess_filtered",
    "log_importance_weights",
    "normalized_weights",
    "summarize_weights",
    "top_weight_mask",
    # sequential Monte Carlo
    "FlowEnergy",
    "SMCConfig",
    "SMCResult",
    "multinomial_resample",
    "smc_from_generator",
    "smc_sample",
    "systematic_resample",
    # flow-proposal MCMC
    "ChainState",
    "FlowIndependenceMove",
    "run_chains",
]
