"""Wall-clock timing that survives a noisy machine, and the non-negative fit of a layer's cost.

:func:`median_seconds` runs a callable a few times untimed (warmup), then times each of several
repeats and returns their median, so that a repeat slowed by another process does not move the
result. :func:`fit_bilinear` fits ``a + b·r + c·c + d·r·c`` with non-negative coefficients to a
layer's times at a grid of kept fractions; non-negative coefficients make the latency model
increase with every width, as a physical cost does.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["fit_bilinear", "median_seconds", "module_seconds"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 15,
) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones.

    Args:
        fn: What to time (called without arguments, under ``torch.no_grad``).
        device: Where ``fn`` runs (CUDA work is synchronized before each clock read).
        warmup: Untimed calls first (allocator, caches, lazy initialization).
        repeats: Timed calls; the median of their times is returned.

    Returns:
        Seconds per call.

    Raises:
        ValueError: If ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"median_seconds: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}"
        )
    device = torch.device(device)
    times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def module_seconds(
    modules: Sequence[nn.Module], example: Tensor, *, warmup: int = 3, repeats: int = 15
) -> list[float]:
    """Median latency of each module at ``example``, measured interleaved.

    The modules take turns repeat by repeat, so that a slow spell of the machine falls on all
    of them alike and their ratios stay sound.

    Args:
        modules: Modules to time (in eval mode, on ``example``'s device).
        example: The input batch.
        warmup: Untimed calls of each module first.
        repeats: Timed rounds; each module's median is returned.

    Returns:
        Seconds per forward of each module, in order.
    """
    device = example.device
    rounds: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for module in modules:
            for _ in range(warmup):
                module(example)
        for _ in range(max(repeats, 1)):
            for times, module in zip(rounds, modules, strict=True):
                _synchronize(device)
                start = time.perf_counter()
                module(example)
                _synchronize(device)
                times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in rounds]


def fit_bilinear(
    rows: Sequence[float], cols: Sequence[float], seconds: Sequence[float]
) -> tuple[float, float, float, float]:
    r"""Non-negative least squares of ``t ≈ a + b·r + c·c + d·r·c``.

    With four unknowns the exact solution is found by trying every set of coefficients held
    at zero (the optimum of a non-negative least-squares problem is the unconstrained optimum
    on its positive coefficients) and keeping the best feasible one.

    Args:
        rows: Kept fraction of the layer's rows (outputs) at each measurement.
        cols: Kept fraction of its columns (inputs).
        seconds: The measured times.

    Returns:
        ``(a, b, c, d)``, all ``>= 0``.
    """
    r = torch.tensor(rows, dtype=torch.float64)
    c = torch.tensor(cols, dtype=torch.float64)
    t = torch.tensor(seconds, dtype=torch.float64)
    features = torch.stack([torch.ones_like(r), r, c, r * c], dim=1)
    best: tuple[float, Tensor] = (float(t.square().sum()), torch.zeros(4, dtype=torch.float64))
    for size in range(1, 5):
        for active in itertools.combinations(range(4), size):
            columns = features[:, list(active)]
            solution = torch.linalg.lstsq(columns, t.unsqueeze(1)).solution.squeeze(1)
            if bool((solution < 0).any()):
                continue
            residual = float((columns @ solution - t).square().sum())
            if residual < best[0]:
                coef = torch.zeros(4, dtype=torch.float64)
                coef[list(active)] = solution
                best = (residual, coef)
    a, b, c_, d = best[1].tolist()
    return a, b, c_, d
