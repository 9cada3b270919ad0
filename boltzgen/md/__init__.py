"""Reference molecular dynamics with OpenMM: resumable multi-replica runs and their data format.

- :func:`run_md` runs (or resumes) R Langevin replicas in parallel processes into a directory;
- :func:`load_trajectory` reads the result (positions, forces, energies, metadata);
- `boltzgen.md.storage` documents the files, `boltzgen.md.replica_store` the resumable work areas;
- `boltzgen.md.start` reads a starting structure from a file (``run_md(..., start=FILE)``).
"""

from boltzgen.md.config import MDConfig, ReplicaSeeds, replica_seeds
from boltzgen.md.runner import MDRunResult, run_md
from boltzgen.md.storage import MDTrajectory, load_trajectory

__all__ = ["MDConfig", "MDRunResult", "MDTrajectory", "ReplicaSeeds", "load_trajectory", "replica_seeds", "run_md"]
