"""conopt under DDP: 2 gloo processes on CPU against one process over the same global batches."""

import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import conopt

STEPS = 6
GLOBAL_BATCH = 16
NUM_SAMPLES = 32


class Regression(conopt.ConstrainedProblem):
    """Linear regression with a data-dependent mean constraint and per-sample constraints."""

    def __init__(self, model: nn.Module, restarts_target: float = 0.0):
        super().__init__()
        self.model = [model]
        self.mean_prediction = conopt.Constraint("<=")  # data-dependent: reduction "mean"
        self.norm = conopt.Constraint("<=", reduction=None)  # parameter-only
        self.per_sample = conopt.Constraint("<=", multiplier=conopt.IndexedMultiplier(NUM_SAMPLES))

    def evaluate(self, x, y, indices):
        prediction = self.model[0](x).squeeze(1)
        weight = next(self.model[0].parameters())
        return conopt.ProblemState(
            loss=((prediction - y) ** 2).mean(),
            constraints={
                self.mean_prediction: prediction.mean() + 1.0,
                self.norm: weight.square().sum() - 0.5,
                self.per_sample: conopt.ConstraintState(prediction - 0.3, indices=indices),
            },
        )


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(NUM_SAMPLES, generator=g)
    return x, y


def train(rank: int, world_size: int):
    """Run STEPS steps; rank r takes the r-th slice of each global batch. Returns multipliers."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    forward = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    problem = Regression(forward)
    optimizer = conopt.optim.SimultaneousGDA(
        problem,
        primal=torch.optim.SGD(model.parameters(), lr=0.05),
        dual=torch.optim.SGD(problem.dual_parameters(), lr=0.5, momentum=0.5, maximize=True),
        dual_restarts=True,
    )
    x, y = data()
    for step in range(STEPS):
        start = (step * GLOBAL_BATCH) % NUM_SAMPLES
        batch = torch.arange(start, start + GLOBAL_BATCH)
        shard = batch.chunk(world_size)[rank]
        optimizer.step(lambda shard=shard: problem.evaluate(x[shard], y[shard], shard))
    return {name: p.detach().clone() for name, p in problem.state_dict().items()}


@contextlib.contextmanager
def _process_group(rank: int, world_size: int, store: str):
    """A gloo group on this spawned process, float64 default as tests/conopt/conftest.py sets.

    The ranks meet through a file (``store``), not a TCP port: no race for a free port.
    """
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world_size: int, store: str, out: dict):
    with _process_group(rank, world_size, store):
        out[rank] = train(rank, world_size)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_keep_identical_multipliers_equal_to_one_process(tmp_path):
    """After K steps the multipliers agree on both ranks and with a single-process run (1e-6)."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    single = train(0, 1)
    for name, value in single.items():
        assert torch.equal(out[0][name], out[1][name]), f"{name} differs across ranks"
        assert torch.allclose(out[0][name], value, atol=1e-6), name
    assert single["per_sample.multiplier.weight"].abs().sum() > 0
    assert single["mean_prediction.multiplier.weight"] > 0


class MeanBudget(conopt.ConstrainedProblem):
    """A mean constraint over uneven shards, weighted by each rank's sample count."""

    def __init__(self):
        super().__init__()
        self.mean = conopt.Constraint("<=")

    def evaluate(self, values):
        return conopt.ProblemState(
            torch.zeros((), requires_grad=True),
            {self.mean: conopt.ConstraintState(values.mean() - 0.1, count=values.numel())},
        )

    def optimizer(self, on_nonfinite: str = "raise") -> conopt.optim.SimultaneousGDA:
        """Dual SGD ascent with step 1 (the primal player is a dummy parameter)."""
        dummy = torch.zeros(1, requires_grad=True)
        return conopt.optim.SimultaneousGDA(
            self,
            torch.optim.SGD([dummy], lr=0.1),
            torch.optim.SGD(self.dual_parameters(), lr=1.0, maximize=True),
            on_nonfinite=on_nonfinite,
        )


def _uneven_worker(rank: int, world_size: int, store: str, out: dict):
    with _process_group(rank, world_size, store):
        values = torch.arange(16.0) / 16
        shard = values[:5] if rank == 0 else values[5:]  # 5 and 11 samples
        problem = MeanBudget()
        optimizer = problem.optimizer()
        report = optimizer.step(lambda: problem.evaluate(shard))
        out[rank] = (problem.mean.multiplier.weight.item(), report.constraints["mean"].strict_value)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_uneven_shards_with_counts_give_the_global_mean(tmp_path):
    """Σ n_r v_r / Σ n_r over ranks equals the mean over all samples."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_uneven_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    expected = float((torch.arange(16.0) / 16).mean() - 0.1)
    assert out[0][0] == out[1][0] == pytest.approx(expected, abs=1e-12)
    assert float(out[0][1]) == pytest.approx(expected, abs=1e-12)


def _nonfinite_worker(rank: int, world_size: int, store: str, out: dict):
    with _process_group(rank, world_size, store):
        values = torch.tensor([math.nan]) if rank == 1 else torch.tensor([0.5])
        results = {}
        for policy in ("raise", "skip"):
            problem = MeanBudget()
            optimizer = problem.optimizer(on_nonfinite=policy)
            try:
                optimizer.step(lambda problem=problem: problem.evaluate(values))
                results[policy] = (optimizer.skipped_steps, problem.mean.multiplier.weight.item())
            except conopt.optim.lagrangian.NonFiniteError as error:
                results[policy] = str(error)
        out[rank] = results


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_nonfinite_value_on_one_rank_refuses_the_step_on_every_rank(tmp_path):
    """The rank with the NaN names it; the other says it came from another rank; skip skips both."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_nonfinite_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    assert "constraint 'mean'" in out[1]["raise"] and "NaN" in out[1]["raise"]
    assert "not finite on another rank" in out[0]["raise"]
    assert out[0]["skip"] == out[1]["skip"] == (1, 0.0)


_EXIT_SCRIPT = """
import os, sys, tempfile
import torch
import conopt  # before any process group: the fix under test
import torch.distributed as dist

def threads():
    return [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]

store = tempfile.mktemp()
dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
model(torch.ones(3, 2)).sum().backward()
del model
dist.destroy_process_group()
print(sorted(set(threads())))
"""


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_destroying_the_group_after_ddp_stops_its_worker_threads():
    """After DDP and ``destroy_process_group()`` no gloo thread is left to outlive the interpreter.

    DDP's constructor imports ``torch.distributed.nn.functional``; imported while a group exists,
    its default arguments keep that group alive and its worker threads run into interpreter
    shutdown, where they can abort the process. Importing conopt first prevents it.
    """
    completed = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    threads = completed.stdout.strip().splitlines()[-1]
    assert "gloo" not in threads, threads
