"""Flow layers: the `Flow` contract, compositions, and the layers built on it."""

from boltzgen.flows.base import Flow, InverseFlow, SequentialFlow

__all__ = ["Flow", "InverseFlow", "SequentialFlow"]
