"""boltzgen: Boltzmann generators for molecular equilibrium sampling and free energies."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import boltzgen` stays light (no torch/OpenMM import until needed).
    if name == "BoltzmannGenerator":
        from boltzgen.generator import BoltzmannGenerator

        return BoltzmannGenerator
    raise AttributeError(f"module 'boltzgen' has no attribute {name!r}")


__all__ = ["BoltzmannGenerator", "__version__"]
