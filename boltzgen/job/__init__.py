"""The main job (``boltzgen run``): train, sample, reweight and analyse a molecular Boltzmann generator."""

from boltzgen.job.job import JobSetup, RunOptions, load_trained_generator, run_job, setup_job, summary_table
from boltzgen.job.profiles import PROFILES, RunProfile, get_profile

__all__ = [
    "JobSetup",
    "PROFILES",
    "RunOptions",
    "RunProfile",
    "get_profile",
    "load_trained_generator",
    "run_job",
    "setup_job",
    "summary_table",
]
