"""Purge: turn a trained gated model into a physically smaller dense one, and export it."""

from l0_sparsity.purging.core import (
    PurgeReport,
    count_flops,
    count_params,
    purge,
    purge_report,
    save_purged,
)

__all__ = ["PurgeReport", "count_flops", "count_params", "purge", "purge_report", "save_purged"]
