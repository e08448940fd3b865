"""Train the QP of hf_qp.py with the Trainer on 2 CPU processes (gloo), under torch.distributed.run.

Usage (OUT: a folder; STEPS: a number):

    python -m torch.distributed.run --standalone --nproc_per_node 2 hf_ddp_run.py OUT STEPS

The run samples sequentially, in float64 (``hf_qp.ddp_trainer``). The Trainer's prepared DataLoader
gives rank r the r-th of each pair of consecutive batches of 8 items: a step's global batch is
the 1-process run's batch of 16 items. Each rank writes its parameters, multipliers and last
report's values, and the multipliers after every step, to OUT/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from hf_qp import ddp_trainer, multipliers  # noqa: E402
from two_processes import shut_down  # noqa: E402


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    trainer, history = ddp_trainer(out / "trainer", steps=steps, per_device_batch=8)
    trainer.train()
    report = trainer.last_report
    torch.save(
        {
            "x": trainer.model.x.detach().clone(),
            "multipliers": multipliers(trainer.problem).clone(),
            "history": torch.stack(history),
            "values": {k: v.strict_value.clone() for k, v in report.constraints.items()},
            "steps": report.step,
            "world_size": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "ddp_wrapped": type(trainer.model_wrapped).__name__,
        },
        out / f"rank{trainer.args.process_index}.pt",
    )
    shut_down(trainer.accelerator)


if __name__ == "__main__":
    main()
