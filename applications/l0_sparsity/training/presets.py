"""Training presets: data, one entry of settings per model/dataset pair.

Each entry of :data:`PRESETS` is a :class:`~l0_sparsity.training.config.TrainConfig` whose
``preset`` is its key and whose ``output_dir`` is ``runs/<key>``; only the settings that differ
from the :class:`~l0_sparsity.training.config.TrainConfig` defaults are written out below.

The GPU presets follow Gallego-Posada et al. (2022): SGD with momentum 0.9, learning rate 0.1
decayed ×0.2 at epochs 60/120/160 over 200 epochs, batch 128, weight decay 5e-4 as an expected-L2
loss term, gates' learning rate 6.0 (never decayed), dual SGD with learning rate 7e-4 and dual
restarts, initial drop rate 0.3 (0.05 on ImageNet). The CPU preset ``mnist_mlp`` is the small-scale
experiment: MLP 784-300-100-10 on MNIST-5k, Adam 7e-4 (weights) / 5e-3 (gates), dual 5e-3.
``mnist_lenet5`` trains LeNet-5 on the same data for 120 epochs (under five minutes on one CPU
core) with a dual learning rate of 0.05 and strict budgets: a MACs budget's multiplier follows
the purged model's MACs, and at the MLP's 0.005 it grows too slowly to pull the purged model
back to its budget once the gates settle (``benchmarks/l0_budgets.py``).

``fashion_resnet18_pretrained`` is the fine-tuning recipe for a model that is already trained
(torchvision ResNet-18 on Fashion-MNIST, as ``benchmarks/l0_pretrained_torchvision.py`` runs it):
initial drop rate 0.05, so that every test-time gate starts at exactly 1 and the gated model
computes the dense one's function; weights at a tenth of the from-scratch learning rate
(Adam 1e-4, not decayed); gates at 5e-2 so that they can cross from ``log α ≈ 2.9`` to the
closing threshold within the run; one strict MACs budget of 0.5 from the first step (a proxy
constraint: the expected MACs drive the gates, the purged MACs the multiplier, which grows while
the purged model is over budget and is released by dual restarts once it is within); the
BatchNorm statistics re-estimated with the test-time gates at the end.
"""

from __future__ import annotations

from typing import Any

from l0_sparsity.training.config import (
    AMP_MODES,
    DEVICES,
    ON_NONFINITE,
    OPTIMIZERS,
    TrainConfig,
    field_docs,
)

__all__ = [
    "AMP_MODES",
    "DEVICES",
    "ON_NONFINITE",
    "OPTIMIZERS",
    "PRESETS",
    "TrainConfig",
    "field_docs",
    "get_preset",
]

_GPU_RECIPE: dict[str, Any] = {
    "epochs": 200,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "lr_milestones": (60, 120, 160),
    "lr_gamma": 0.2,
    "gates_lr": 6.0,
    "dual_lr": 7e-4,
    "weight_decay": 5e-4,
    "droprate_init": 0.3,
    "target": 0.5,
    "amp": "auto",
    "channels_last": True,
}

_SETTINGS: dict[str, dict[str, Any]] = {
    "mnist_mlp": {},
    "mnist_lenet5": {"model": "lenet5", "epochs": 120, "dual_lr": 0.05, "strict_budgets": True},
    "fashion_resnet18": {
        "model": "resnet18_cifar",
        "dataset": "fashion_mnist",
        "epochs": 5,
        "subset": 2000,
        "test_subset": 1000,
        "batch_size": 32,
        "lr": 1e-3,
        "lr_milestones": (4,),
        "gates_lr": 3e-2,
        "dual_lr": 0.3,
        "droprate_init": 0.3,
        "target": 0.5,
        "bn_recalibration": 20,
    },
    "fashion_resnet18_pretrained": {
        "model": "resnet18",
        "dataset": "fashion_mnist",
        "epochs": 3,
        "subset": 5000,
        "test_subset": 2000,
        "batch_size": 64,
        "lr": 1e-4,
        "gates_lr": 5e-2,
        "dual_lr": 0.5,
        "droprate_init": 0.05,
        "target": None,
        "macs_target": 0.5,
        "strict_budgets": True,
        "bn_recalibration": 20,
    },
    "cifar10_wrn": {"model": "wrn28_10", "dataset": "cifar10", **_GPU_RECIPE},
    "cifar10_wrn_layerwise": {
        "model": "wrn28_10",
        "dataset": "cifar10",
        **_GPU_RECIPE,
        "layer_targets": (0.2,),
    },
    "cifar100_wrn": {"model": "wrn28_10", "dataset": "cifar100", **_GPU_RECIPE},
    "cifar10_resnet18": {"model": "resnet18_cifar", "dataset": "cifar10", **_GPU_RECIPE},
    "tinyimagenet_resnet18": {"model": "resnet18", "dataset": "tinyimagenet", **_GPU_RECIPE},
    "imagenet_resnet50": {
        "model": "resnet50",
        "dataset": "imagenet",
        **_GPU_RECIPE,
        "epochs": 90,
        "batch_size": 256,
        "lr_milestones": (30, 60, 80),
        "lr_gamma": 0.1,
        "weight_decay": 1e-4,
        "droprate_init": 0.05,
    },
    "synthetic_smoke": {
        "dataset": "synthetic",
        "epochs": 2,
        "batch_size": 32,
        "progress": False,
        "tensorboard": False,
    },
}

PRESETS: dict[str, TrainConfig] = {
    name: TrainConfig(preset=name, output_dir=f"runs/{name}", **settings)
    for name, settings in _SETTINGS.items()
}
"""Registered presets by name."""


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (a ``ValueError`` lists the valid names otherwise).

    Args:
        name: A key of :data:`PRESETS`.

    Returns:
        Its configuration.

    Raises:
        ValueError: If ``name`` is not a preset.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
