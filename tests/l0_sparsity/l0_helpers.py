"""Helpers shared by the l0_sparsity tests: model specs, the smoke-run command line, IDX files,
gates set on, off or half off."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from l0_sparsity.measures import ComputeCost
from l0_sparsity.nn import gated_layers

ON, OFF = 20.0, -20.0  # log α whose sampled and test-time gates are 1 / 0 (up to ~1e-9)

# name -> (in_channels, input side): 28 for MNIST models, 32 for CIFAR ones, 64 for ImageNet ones
SPECS = {
    "mlp": (1, 28),
    "lenet5": (1, 28),
    "resnet18_cifar": (3, 32),
    "wrn28_10": (3, 32),
    "resnet18": (3, 64),
    "resnet50": (3, 64),
}


def smoke_cli(output_dir: Path, *extra: str) -> list[str]:
    """``l0-sparsity`` arguments training the ``synthetic_smoke`` preset on one CPU thread."""
    return [
        "train",
        "--preset",
        "synthetic_smoke",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--num-workers",
        "0",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_fashion(directory: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict:
    """Write a fake Fashion-MNIST (random images, cyclic labels) to ``directory``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(directory / (stem + (".gz" if gz else "")), array)
    return arrays


@torch.no_grad()
def half_off(model: nn.Module, seed: int = 0) -> None:
    """Switch off a random half of every gated layer's gates (the rest: test gates in (0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    for _, layer in gated_layers(model):
        flat = layer.log_alpha.view(-1)
        alive = torch.randperm(flat.numel(), generator=gen)[: flat.numel() // 2]
        flat.fill_(OFF)
        flat[alive] = torch.empty(alive.numel()).uniform_(-1.0, 3.0, generator=gen)


@torch.no_grad()
def fill_gates(model: nn.Module, log_alpha: float) -> None:
    """Set every gate parameter of ``model`` to ``log_alpha`` (``ON`` or ``OFF``, say)."""
    for _, layer in gated_layers(model):
        layer.log_alpha.fill_(log_alpha)


def assert_all_off_costs_the_fixed_part(model: nn.Module, example: object) -> None:
    """With every gate off, the test-time MACs and parameters are ComputeCost's fixed part."""
    cost = ComputeCost(model, example)
    fill_gates(model, OFF)
    assert (cost.test_macs(), cost.test_params()) == (cost.fixed_macs, cost.fixed_params)
