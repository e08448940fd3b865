"""Shrinking layers: the plain, smaller torch modules that replace gated ones in a purge.

A gated layer becomes its plain counterpart with the test-time gates folded in
(:meth:`~l0_sparsity.nn.GatedLayer.dense_module`), then loses the output rows / filters and
input columns / channels the purge plan drops; a plain layer next to a gated one is sliced alike.
A :class:`~l0_sparsity.nn.GatedBatchNorm2d` becomes a plain ``nn.BatchNorm2d`` keeping the
channels of its convolution.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from l0_sparsity.nn import GatedBatchNorm2d, GatedLayer

__all__ = ["shrunk", "shrunk_norm"]

_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)


def shrunk(module: nn.Module, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Module | None:
    """The plain, sliced replacement of a layer (``None`` if it stays as it is).

    Args:
        module: A gated layer, or any module (only ``nn.Conv2d`` / ``nn.Linear`` are sliced).
        keep_out: Output rows / filters to keep (``None``: all).
        keep_in: Input columns / channels to keep (``None``: all).

    Returns:
        The replacement, or ``None`` for a plain module with nothing to drop.
    """
    if isinstance(module, GatedLayer):
        dense: nn.Module = module.dense_module()
    elif keep_out is not None or keep_in is not None:
        dense = module
    else:
        return None
    if keep_out is None and keep_in is None:
        return dense
    if isinstance(dense, nn.Conv2d):
        return _slice_conv(dense, keep_out, keep_in)
    if isinstance(dense, nn.Linear):
        return _slice_linear(dense, keep_out, keep_in)
    return dense


def shrunk_norm(norm: GatedBatchNorm2d, keep: Tensor | None) -> nn.Module:
    """Plain BatchNorm2d with the test-time gates folded in, keeping the ``keep`` channels.

    Args:
        norm: The gated norm.
        keep: The filters its convolution keeps (``None``: all).

    Returns:
        The replacement ``nn.BatchNorm2d``.
    """
    dense: nn.Module = norm.dense_module()
    return _slice_norm(dense, keep) if keep is not None else dense


def _sliced(
    layer: nn.Conv2d | nn.Linear, keep_out: Tensor | None, keep_in: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``layer``'s detached weight and bias, keeping ``keep_out`` outputs and ``keep_in`` inputs."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if keep_out is not None:
        weight = weight[keep_out]
        bias = None if bias is None else bias[keep_out]
    if keep_in is not None:
        weight = weight[:, keep_in]
    return weight, bias


def _filled(out: _Layer, weight: Tensor, bias: Tensor | None, training: bool) -> _Layer:
    """``out`` holding copies of ``weight`` and ``bias``, in training mode if ``training``."""
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.train(training)


def _slice_conv(conv: nn.Conv2d, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Conv2d:
    """``conv`` keeping ``keep_out`` filters and ``keep_in`` input channels.

    A grouped conv keeps whole groups (``keep_in`` must be ``None``): the filters of each kept
    group, which then reads the input channels of that group only; it is rebuilt with fewer
    groups.
    """
    groups = 1
    if conv.groups > 1:
        groups = _kept_groups(conv, keep_out, keep_in)
    weight, bias = _sliced(conv, keep_out, keep_in)
    out = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        groups,
        bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    return _filled(out, weight, bias, conv.training)


def _kept_groups(conv: nn.Conv2d, keep_out: Tensor | None, keep_in: Tensor | None) -> int:
    """How many groups a grouped conv keeps; refuses a slice that is not whole groups."""
    per_group = conv.out_channels // conv.groups
    if keep_out is None and keep_in is None:
        return conv.groups
    if keep_in is None and keep_out is not None and keep_out.numel() % per_group == 0:
        blocks = keep_out.view(-1, per_group)
        offsets = torch.arange(per_group, device=keep_out.device)
        starts = blocks[:, :1]
        if bool((blocks == starts + offsets).all() and (starts % per_group == 0).all()):
            return blocks.shape[0]
    raise ValueError(
        f"purge: cannot slice a grouped Conv2d (groups={conv.groups}, {conv.in_channels} -> "
        f"{conv.out_channels} channels) by channel; only whole groups can be dropped"
    )


def _slice_linear(linear: nn.Linear, keep_out: Tensor | None, keep_in: Tensor | None) -> nn.Linear:
    weight, bias = _sliced(linear, keep_out, keep_in)
    out = nn.Linear(
        weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype
    )
    return _filled(out, weight, bias, linear.training)


def _slice_norm(norm: nn.Module, keep: Tensor) -> nn.BatchNorm2d:
    assert isinstance(norm, nn.BatchNorm2d)
    out = nn.BatchNorm2d(
        keep.numel(),
        norm.eps,
        norm.momentum,
        norm.affine,
        norm.track_running_stats,
        device=keep.device,
        dtype=norm.weight.dtype if norm.weight is not None else None,
    )
    state = {k: (v[keep] if v.dim() == 1 else v) for k, v in norm.state_dict().items()}
    out.load_state_dict(state)
    return out.train(norm.training)
