"""Reference molecular dynamics with OpenMM: resumable multi-replica runs and their data format."""
