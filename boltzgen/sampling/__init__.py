"""Sampling from Boltzmann generators: importance weights and effective sample size."""

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
]
