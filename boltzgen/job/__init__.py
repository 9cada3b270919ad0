"""The main job (``boltzgen run``): train, sample, reweight and analyse a molecular Boltzmann generator."""

from boltzgen.job.job import RunOptions, run_job, summary_table
from boltzgen.job.profiles import PROFILES, RunProfile, get_profile

__all__ = ["PROFILES", "RunOptions", "RunProfile", "get_profile", "run_job", "summary_table"]
