"""Benchmarks of the package, run as scripts (`python benchmarks/NAME.py`) or modules
(`python -m benchmarks.gpu_check`)."""
