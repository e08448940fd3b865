r"""
A tiny sparsity run on synthetic data
=====================================

The :mod:`l0_sparsity` trainer end to end, small enough for the docs build: the
``synthetic_smoke`` preset (an MLP with hard-concrete gates on 1,024 random 28×28 images), one
epoch, in a temporary directory. A real run is ``l0-sparsity train --preset mnist_mlp``; see
:doc:`/sparsity/cli`.

The configuration is a frozen dataclass (:class:`~l0_sparsity.training.TrainConfig`); each field
is also a command-line flag.
"""

import tempfile
from pathlib import Path

import torch

import l0_sparsity as l0

run_dir = tempfile.TemporaryDirectory()
config = l0.get_preset("synthetic_smoke").replace(
    epochs=1, threads=1, progress=False, tensorboard=False, output_dir=run_dir.name, device="cpu"
)
print(config)

# %%
# Train. ``train`` returns the per-epoch metrics (the rows of ``metrics.csv``), the gated model
# and the problem, whose multiplier is the price of density.
result = l0.train(config)
for key, value in result.final.items():
    print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
print(sorted(p.name for p in Path(run_dir.name).iterdir()))

# %%
# After one epoch the expected density has barely moved from its initial value (the gates start
# at drop rate 0.5, i.e. :math:`P(z \neq 0) \approx 0.84`), so the multiplier is growing: the
# constraint ``density - 0.35 <= 0`` is violated. A full run drives it to the target; see
# :doc:`/sparsity/demo`.
#
# Purging builds the physically smaller model from the test-time gates; its output equals the
# gated model's eval-mode output.
model = result.model.eval()
small = l0.purge(model)
inputs = torch.randn(8, 1, 28, 28)
with torch.no_grad():
    print("max |gated - purged| =", float((model(inputs) - small(inputs)).abs().max()))
print(l0.purge_report(model, (1, 1, 28, 28), small))
run_dir.cleanup()
