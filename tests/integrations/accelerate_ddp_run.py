"""Train the QP of accelerate_qp.py on 2 CPU processes (gloo), launched by torch.distributed.run.

Usage (OUT: a folder; EPOCHS: a number):

    python -m torch.distributed.run --standalone --nproc_per_node 2 accelerate_ddp_run.py OUT EPOCHS

accelerate's prepared DataLoader gives rank r the r-th of each pair of consecutive batches of 8
samples: a step's global batch is the 1-process run's batch of 16. Each rank writes its
parameters, multipliers and last report's values to OUT/rank<r>.pt, in float64.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from accelerate_qp import make_run  # noqa: E402
from two_processes import shut_down  # noqa: E402


def main() -> None:
    out, epochs = Path(sys.argv[1]), int(sys.argv[2])
    run = make_run(batch_size=8, dtype=torch.float64)
    for _ in range(epochs):
        run.epoch()
    report = run.reports[-1]
    torch.save(
        {
            "x": run.accelerator.unwrap_model(run.net).x.detach().clone(),
            "multipliers": run.multipliers().clone(),
            "values": {k: v.strict_value.clone() for k, v in report.constraints.items()},
            "steps": len(run.reports),
            "world_size": run.accelerator.num_processes,
            "distributed_type": str(run.accelerator.distributed_type),
        },
        out / f"rank{run.accelerator.process_index}.pt",
    )
    shut_down(run.accelerator)


if __name__ == "__main__":
    main()
