"""Mixed precision: the autocast dtype of the ``amp`` setting, and one autocast context for it."""

from __future__ import annotations

import torch

__all__ = ["amp_dtype", "mixed_precision"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the ``amp`` setting on ``device`` (``None``: full precision).

    Args:
        amp: ``"off"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (bf16 on a CUDA device that
            supports it, else off).
        device: The training device.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` (trained with a GradScaler) or ``None``.

    Raises:
        ValueError: For ``"fp16"`` on a device other than CUDA.
    """
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"amp='fp16' needs a CUDA device (float16 autocast with a GradScaler), but the "
            f"device is {device.type!r}; use amp='bf16' there."
        )
    return _AMP_DTYPES.get(amp)


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
