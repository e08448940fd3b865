"""One nuPI step on many multiplier tensors: the foreach path against the per-tensor loop.

Steps :class:`conopt.optim.nuPI` (``kp=1, ki=1, ema_nu=0.5``) on ``--tensors`` multipliers
(default 100, as a problem with 100 scalar constraints has) of ``--numel`` entries each, with
``foreach=False`` (the per-tensor loop, the CPU default) and ``foreach=True``, and prints the
median microseconds per step of each and their ratio (loop / foreach: above 1, foreach is
faster). One thread by default. Run: ``python benchmarks/nupi_foreach.py [--tensors 100]
[--numel 1] [--steps 2000] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from conopt.optim import nuPI


def time_steps(foreach: bool, tensors: int, numel: int, steps: int, device: str) -> float:
    """Median microseconds of one nuPI step over ``steps`` steps (after a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(numel, generator=generator).to(device))
        for _ in range(tensors)
    ]
    for p in params:
        p.grad = torch.randn(numel, generator=generator).to(device)
    optimizer = nuPI(params, lr=1e-2, kp=1.0, ki=1.0, ema_nu=0.5, maximize=True, foreach=foreach)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    for _ in range(20):
        optimizer.step()
    times = []
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        optimizer.step()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    """Parse the arguments, time both paths (interleaved, three rounds) and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--numel", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(3):
        for foreach in (False, True):
            results[foreach].append(
                time_steps(foreach, args.tensors, args.numel, args.steps, args.device)
            )
    loop, multi = min(results[False]), min(results[True])
    print(f"nuPI step, {args.tensors} tensors of {args.numel} entries on {args.device}:")
    print(f"  loop     {loop:9.1f} us")
    print(f"  foreach  {multi:9.1f} us")
    print(f"  ratio loop/foreach: {loop / multi:.2f}x")


if __name__ == "__main__":
    main()
