"""Command line ``l0-sparsity`` (or ``python -m l0_sparsity``): see :mod:`l0_sparsity.cli.app`."""

from l0_sparsity.cli.app import main

__all__ = ["main"]
