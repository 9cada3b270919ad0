"""Prior distributions: normal (with temperature), uniform box, torus."""

from boltzgen.distributions.base import Distribution
from boltzgen.distributions.normal import NormalDistribution
from boltzgen.distributions.uniform import UniformInterval, UniformTorus

__all__ = ["Distribution", "NormalDistribution", "UniformInterval", "UniformTorus"]
