"""Prior distributions: normal (with temperature), uniform box, uniform and wrapped normal torus,
uniform and Watson on S^3 (rotations)."""

from boltzgen.distributions.base import Distribution
from boltzgen.distributions.normal import NormalDistribution
from boltzgen.distributions.product import ProductDistribution
from boltzgen.distributions.rotations import UniformS3, WatsonS3
from boltzgen.distributions.uniform import UniformInterval, UniformTorus, WrappedNormalTorus

__all__ = [
    "Distribution",
    "NormalDistribution",
    "ProductDistribution",
    "UniformInterval",
    "UniformS3",
    "UniformTorus",
    "WatsonS3",
    "WrappedNormalTorus",
]
