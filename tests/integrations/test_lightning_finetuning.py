"""Lightning's ``BaseFinetuning`` with a conopt optimizer: unfreezing adds a primal group, and a
checkpoint taken after it resumes the added group, bit for bit.

The QP of ``lightning_qp.py`` with its point split in two: ``x = head + backbone.shift``. The
backbone is frozen before training and unfrozen at epoch 2 into a new group of the primal
optimizer (``unfreeze_and_add_param_group`` calls the wrapper's ``add_param_group``); on resume,
``BaseFinetuning.on_fit_start`` assigns the saved groups back (the wrapper's ``param_groups``
setter) before Lightning loads the optimizer state into them. ``setup`` freezes the backbone
again on resume, and no epoch start unfreezes it (Lightning's own ``BackboneFinetuning`` leaves
it frozen then, Lightning-AI/pytorch-lightning#21901): the callback makes it trainable again when
the restored groups hold it.
"""

import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, ModelCheckpoint
from lightning_qp import QPModule, assert_bitwise_equal, make_trainer, paired_dataset
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
UNFREEZE_AT = 2


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))


class SplitQP(QPModule):
    """The QP at ``head + backbone.shift``; the data of a step depends on (epoch, batch_idx)."""

    DATA = paired_dataset(mix=True).tensors

    def __init__(self) -> None:
        super().__init__(lr=0.05, adam=True, dual_momentum=0.5)
        self.backbone = Backbone()

    def primal_parameters(self):
        return (p for p in super().primal_parameters() if p.requires_grad)

    def training_step(self, batch, batch_idx):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(self.current_epoch))
        rows = order[16 * batch_idx : 16 * (batch_idx + 1)]
        a, w = (t[rows] for t in self.DATA)
        return self.lagrangian(self.problem.evaluate(self.x + self.backbone.shift, a, w))


class UnfreezeBackbone(BaseFinetuning):
    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch == UNFREEZE_AT:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=0.02)

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)  # gives back the groups saved in the checkpoint
        grouped = {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
        if any(id(p) in grouped for p in pl_module.backbone.parameters()):
            self.make_trainable(pl_module.backbone)  # setup() froze it again


def _run(ckpt_path=None, callbacks=(), **options):
    module = SplitQP()
    trainer = make_trainer(callbacks=[UnfreezeBackbone(), *callbacks], **options)
    batches = DataLoader(TensorDataset(torch.arange(4)), batch_size=1)  # 4 steps an epoch
    trainer.fit(module, batches, ckpt_path=ckpt_path)
    return module, trainer


def _primal_groups(module: SplitQP) -> list[tuple[int, float]]:
    groups = module.constrained_optimizer.constrained.primal_optimizers[0].param_groups
    return [(len(g["params"]), g["lr"]) for g in groups]


def test_unfreezing_adds_a_primal_group_that_trains_the_backbone():
    start = Backbone().shift.detach().clone()
    module, _ = _run(max_epochs=UNFREEZE_AT)
    assert torch.equal(module.backbone.shift.detach(), start)  # frozen until then
    module, _ = _run(max_epochs=UNFREEZE_AT + 2)
    assert _primal_groups(module) == [(1, 0.05), (1, 0.02)]
    assert not torch.equal(module.backbone.shift.detach(), start)
    dual = module.constrained_optimizer.constrained.dual_optimizer.param_groups
    assert sum(len(g["params"]) for g in dual) == 2  # the multipliers only, as before


@pytest.mark.parametrize("stop_at", [12, 14], ids=["end-of-epoch", "mid-epoch"])
def test_resuming_after_unfreezing_restores_the_added_group_bit_for_bit(tmp_path, stop_at):
    whole, whole_trainer = _run(max_epochs=5)
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=stop_at, save_top_k=-1, filename="{step}"
    )
    _run(max_steps=stop_at, callbacks=[checkpoints], enable_checkpointing=True)
    resumed, resumed_trainer = _run(ckpt_path=str(tmp_path / f"step={stop_at}.ckpt"), max_epochs=5)

    assert resumed_trainer.global_step == whole_trainer.global_step == 20
    assert _primal_groups(resumed) == _primal_groups(whole) == [(1, 0.05), (1, 0.02)]
    for a, b in ((resumed.x, whole.x), (resumed.backbone.shift, whole.backbone.shift)):
        assert torch.equal(a, b)
    assert torch.equal(resumed.multipliers(), whole.multipliers())
    states = [m.constrained_optimizer.state_dict()["constrained"] for m in (resumed, whole)]
    adam = [list(s["primal"][0]["state"].values()) for s in states]
    assert len(adam[0]) == 2  # the head's and the backbone's Adam moments were resumed
    assert_bitwise_equal(
        [t for entry in adam[0] for t in entry.values()],
        [t for entry in adam[1] for t in entry.values()],
    )
