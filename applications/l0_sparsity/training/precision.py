"""Mixed precision: one autocast context for an optional dtype."""

from __future__ import annotations

import torch

__all__ = ["mixed_precision"]


def mixed_precision(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device_type``, or a disabled one for ``None``.

    Args:
        device_type: ``"cuda"`` or ``"cpu"`` (a ``torch.device``'s ``type``).
        dtype: The autocast dtype (``torch.bfloat16``, ``torch.float16``), or ``None`` for full
            precision.

    Returns:
        The context manager.

    Example:
        >>> import torch
        >>> from l0_sparsity.training.precision import mixed_precision
        >>> with mixed_precision("cpu", torch.bfloat16):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        >>> with mixed_precision("cpu", None):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)
