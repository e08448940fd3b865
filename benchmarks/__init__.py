"""Benchmark scripts that print measured ratios (run them as ``python benchmarks/NAME.py``)."""
