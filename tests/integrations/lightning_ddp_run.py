"""Train the QP of lightning_qp.py with Lightning's strategy="ddp" on 2 CPU processes (gloo).

Usage: python lightning_ddp_run.py OUT_DIR EPOCHS PER_RANK_BATCH PRECISION

Lightning starts rank 1 by running this same command again (its subprocess launcher); each rank
writes its parameters, multipliers and last report to OUT_DIR/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from lightning_qp import QPModule, paired_dataset  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402


class ShardedQP(QPModule):
    """Rank r reads samples r, r + 2, r + 4, ... in order.

    Lightning's own DistributedSampler would shuffle the training set (it always does, whatever
    the DataLoader says), so the script brings its own, unshuffled, and the 1-process run over
    the same global batches is a plain sequential DataLoader.
    """

    def __init__(self, per_rank_batch: int, **kwargs):
        super().__init__(**kwargs)
        self.per_rank_batch = per_rank_batch

    def train_dataloader(self):
        dataset = paired_dataset()
        sampler = DistributedSampler(
            dataset, num_replicas=self.trainer.world_size, rank=self.global_rank, shuffle=False
        )
        return DataLoader(dataset, batch_size=self.per_rank_batch, sampler=sampler)


def main() -> None:
    out, precision = Path(sys.argv[1]), sys.argv[4]
    epochs, batch = int(sys.argv[2]), int(sys.argv[3])
    module = ShardedQP(batch, dual_momentum=0.5, restarts=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        precision=precision,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )
    trainer.fit(module)
    report = module.reports[-1]
    torch.save(
        {
            "x": module.x.detach().clone(),
            "multipliers": module.multipliers().clone(),
            "values": {k: v.strict_value.clone() for k, v in report.constraints.items()},
            "steps": trainer.global_step,
            "world_size": trainer.world_size,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main()
