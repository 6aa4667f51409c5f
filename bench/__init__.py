"""Benchmarks of the inference engine: `python -m bench` (or `make bench`)."""
