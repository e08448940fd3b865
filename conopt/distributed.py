"""Constrained training under ``torch.distributed`` (DDP): what must be communicated, and how.

Under data parallelism each rank evaluates the constraints on its own shard of the batch. The
multipliers must stay identical on every rank, so their updates must use *global* values:

* constraints with a :class:`~conopt.multipliers.DenseMultiplier` (or none): before the dual
  update, penalty growth, restarts and the KKT report, the constraint's value is all-reduced as
  its :attr:`~conopt.problem.Constraint.reduction` says (``"mean"`` or ``"sum"``), while the
  rank's local value stays in the primal Lagrangian (whose gradients DDP averages);
  ``reduction=None`` declares a parameter-only constraint (the same on every rank) and costs no
  communication;
* per-sample constraints (:class:`~conopt.multipliers.IndexedMultiplier`): each rank owns the
  rows of its samples, so the multiplier's gradient is summed across ranks, and the rows that dual
  restarts reset are combined (a row is reset if any rank reset it);
* :class:`~conopt.multipliers.ImplicitMultiplier`: the multiplier model's gradient is averaged,
  as DDP does for any model.

Nothing here runs (or costs anything) unless a process group of more than one rank is initialized.

Importing conopt also imports ``torch.distributed.nn.functional`` while no process group exists
yet: see ``_bind_collective_defaults_before_any_group`` for why a clean exit depends on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "all_agree",
    "all_reduce_gradients_",
    "all_reduce_max_",
    "all_reduce_sum_",
    "all_reduce_values_",
    "world_size",
]


def _bind_collective_defaults_before_any_group() -> None:
    """Import ``torch.distributed.nn.functional`` now, while no process group exists.

    That module's collectives take ``group=group.WORLD`` as a default argument, which Python
    evaluates once, at the module's first import. ``DistributedDataParallel``'s constructor
    imports it (through ``torch._dynamo``); when that first import happens while a process group
    exists, the defaults keep ten references to that group for the life of the process, so
    ``destroy_process_group()`` cannot free it. Its gloo worker threads then live on into
    interpreter shutdown, and one that is still releasing a finished collective's tensors there
    needs the GIL, which a finalizing interpreter refuses by ending the thread: the process
    aborts with "terminate called without an active exception" (SIGABRT), and ``torchrun``
    reports the job failed although training finished. Imported before any group exists, the
    defaults are ``None`` and ``destroy_process_group()`` joins the worker threads.
    """
    if dist.is_available():
        importlib.import_module("torch.distributed.nn.functional")


_bind_collective_defaults_before_any_group()


def world_size() -> int:
    """The number of ranks of the default process group (1 when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_values_(
    values: torch.Tensor,
    sizes: Sequence[int],
    reductions: Sequence[str | None],
    counts: Sequence[float | None] | None = None,
) -> None:
    r"""All-reduce, in place, the entries of a flat tensor of constraint values.

    Args:
        values: Concatenated, flattened values of several constraints (modified in place).
        sizes: The number of entries of each constraint.
        reductions: Each constraint's reduction: ``"mean"``, ``"sum"`` or ``None`` (left local).
        counts: For ``"mean"`` constraints, the number of samples each rank's value averages
            over; the result is :math:`\sum_r n_r v_r / \sum_r n_r` (the sums of numerators and
            denominators). ``None`` entries weigh every rank equally.
    """
    ranks = world_size()
    if ranks == 1 or all(r is None for r in reductions):
        return
    flat = values.reshape(-1)
    weighted = counts is not None and any(c is not None for c in counts)
    if not weighted and all(r == reductions[0] for r in reductions):  # one plain all-reduce
        dist.all_reduce(flat)
        if reductions[0] == "mean":
            flat.div_(ranks)
        return
    _all_reduce_weighted_(flat, sizes, reductions, counts or [None] * len(sizes))


def _all_reduce_weighted_(
    flat: torch.Tensor,
    sizes: Sequence[int],
    reductions: Sequence[str | None],
    counts: Sequence[float | None],
) -> None:
    """Means (weighted by count; equally for None), sums, local entries: one all-reduce."""
    weights = torch.cat(
        [
            flat.new_full((n,), (1.0 if c is None else float(c)) if r == "mean" else 1.0)
            for n, r, c in zip(sizes, reductions, counts, strict=True)
        ]
    )
    shared = torch.cat(
        [flat.new_full((n,), float(r is not None)) for n, r in zip(sizes, reductions, strict=True)]
    ).bool()
    means = torch.cat(
        [flat.new_full((n,), float(r == "mean")) for n, r in zip(sizes, reductions, strict=True)]
    ).bool()
    buffer = torch.cat([flat[shared] * weights[shared], weights[shared]])
    dist.all_reduce(buffer)
    numerators, denominators = buffer.chunk(2)
    flat[shared] = torch.where(means[shared], numerators / denominators, numerators)


def all_reduce_gradients_(params: Sequence[torch.Tensor], mean: bool) -> None:
    """Sum (or average, with ``mean``) the gradients of ``params`` across ranks, in place."""
    ranks = world_size()
    if ranks == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        if mean:
            p.grad.div_(ranks)


def all_agree(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (a logical AND across ranks)."""
    if world_size() == 1:
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value > 0)


def all_reduce_max_(tensor: torch.Tensor) -> None:
    """Element-wise maximum across ranks, in place (e.g. to combine boolean masks as 0/1)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Element-wise sum across ranks, in place (e.g. numerators and counts of held-out means)."""
    if world_size() > 1:
        dist.all_reduce(tensor)
