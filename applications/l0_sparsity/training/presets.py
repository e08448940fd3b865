"""Training presets: one frozen dataclass of hyperparameters per model/dataset pair.

The GPU presets follow Gallego-Posada et al. (2022): SGD with momentum 0.9, learning rate 0.1
decayed ×0.2 at epochs 60/120/160 over 200 epochs, batch 128, weight decay 5e-4 as an expected-L2
loss term, gates' learning rate 6.0 (never decayed), dual SGD with learning rate 7e-4 and dual
restarts, initial drop rate 0.3 (0.05 on ImageNet). The CPU preset ``mnist_mlp`` is the small-scale
experiment: MLP 784-300-100-10 on MNIST-5k, Adam 7e-4 (weights) / 5e-3 (gates), dual 5e-3.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "adam")
"""Valid :attr:`TrainConfig.optimizer` values."""
DEVICES = ("auto", "cpu", "cuda")
"""Valid :attr:`TrainConfig.device` values."""
AMP_MODES = ("off", "bf16", "fp16", "auto")
"""Valid :attr:`TrainConfig.amp` values."""
ON_NONFINITE = ("raise", "skip")
"""Valid :attr:`TrainConfig.on_nonfinite` values."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; each field is a command-line flag of the same name.

    Attributes:
        preset: The preset these values started from (informational).
        model: A name of :data:`l0_sparsity.models.MODELS`.
        dataset: A name of :data:`l0_sparsity.data.DATASETS`.
        data_root: Directory of the dataset files (``None``: the dataset's default place).
        subset: Use only this many training images (stratified), for quick runs.
        test_subset: Use only this many test images.
        epochs: Training epochs.
        batch_size: Global batch size (split across ranks under DDP).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``, for weights and gates.
        lr: Weights' learning rate.
        lr_milestones: Epochs at which the weights' learning rate is multiplied by ``lr_gamma``.
        lr_gamma: The decay factor.
        gates_lr: Gates' learning rate (not decayed).
        dual_lr: The multipliers' SGD learning rate.
        weight_decay: Coefficient of the expected L2 loss term on gated weights.
        droprate_init: Initial drop rate of the gates.
        structured: Structured (neuron/filter) gates; otherwise one gate per weight.
        target: Model-wise target density, used when ``layer_targets`` and ``penalty`` are
            unset. On the command line ``--target``, ``--layer-targets`` and ``--penalty``
            each choose their mode (clearing the preset's other two), and at most one is given.
        layer_targets: Per-layer target densities (layer-wise mode; one value applies to every
            gated layer), or empty. Excludes ``penalty``.
        penalty: Penalized baseline coefficient (no constraint) when set. Excludes
            ``layer_targets``.
        dual_restarts: Reset multipliers of satisfied constraints (Gallego-Posada et al., 2022).
        seed: Seed of initialization, data order and gate noise.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        amp: Mixed precision: ``"off"``; ``"bf16"`` (autocast on CUDA or CPU); ``"fp16"``
            (autocast with a GradScaler, CUDA only); ``"auto"`` (bf16 on a CUDA device that
            supports it, otherwise off). Multipliers and constraint values stay float32.
        channels_last: Use channels-last memory format on CUDA for convolutional models.
        num_workers: Loader worker processes for image-folder datasets.
        output_dir: Where metrics, plots and checkpoints go.
        resume: Resume from ``output_dir``'s checkpoint when it exists.
        overwrite: Replace the run that ``output_dir`` holds (a ``checkpoint.pt`` or
            ``metrics.csv``) instead of refusing to start. Its checkpoint, metrics, plot and
            TensorBoard events are deleted once the new run is set up; without ``overwrite``
            or ``resume`` the command line refuses such a directory. Excludes ``resume``.
        progress: Show a progress bar of each epoch's batches. The command line prints one
            line per epoch either way.
        tensorboard: Write TensorBoard event files.
        threads: torch intra-op threads on CPU (0 keeps torch's default).
        on_nonfinite: What a NaN/Inf loss or constraint value does: ``"raise"`` ends the run
            with an error naming it; ``"skip"`` skips the step (no parameter or multiplier
            changes) and counts it in the ``skipped_steps`` metric.
        compile: Compile the model's forward pass with ``torch.compile``.
        bn_recalibration: Before each evaluation, recompute the BatchNorm running statistics
            with the test-time gates over this many training batches
            (:func:`~l0_sparsity.training.calibration.recalibrate_batchnorm`); 0 keeps
            those gathered during training under sampled gates.
        accumulation_steps: Split each batch into this many micro-batches, each with its own
            forward and backward pass (and gate sample), and step once per batch: the batch's
            gradient at a fraction of the activation memory. Under DDP only the last
            micro-batch all-reduces.
    """

    preset: str = "custom"
    model: str = "mlp"
    dataset: str = "mnist5k"
    data_root: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 7e-4
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.2
    gates_lr: float = 5e-3
    dual_lr: float = 5e-3
    weight_decay: float = 0.0
    droprate_init: float = 0.5
    structured: bool = True
    target: float = 0.35
    layer_targets: tuple[float, ...] = ()
    penalty: float | None = None
    dual_restarts: bool = True
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    num_workers: int = 4
    output_dir: str = "runs/l0"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    tensorboard: bool = True
    threads: int = 0
    on_nonfinite: str = "raise"
    compile: bool = False
    bn_recalibration: int = 0
    accumulation_steps: int = 1

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    @property
    def mode(self) -> str:
        """``"penalized"``, ``"layer-wise"`` or ``"model-wise"``."""
        if self.penalty is not None:
            return "penalized"
        return "layer-wise" if self.layer_targets else "model-wise"


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

PRESETS: dict[str, TrainConfig] = {
    "mnist_mlp": TrainConfig(preset="mnist_mlp", output_dir="runs/mnist_mlp"),
    "mnist_lenet5": TrainConfig(
        preset="mnist_lenet5", model="lenet5", output_dir="runs/mnist_lenet5"
    ),
    "fashion_resnet18": TrainConfig(
        preset="fashion_resnet18",
        model="resnet18_cifar",
        dataset="fashion_mnist",
        epochs=5,
        subset=2000,
        test_subset=1000,
        batch_size=32,
        optimizer="adam",
        lr=1e-3,
        lr_milestones=(4,),
        gates_lr=3e-2,
        dual_lr=0.3,
        droprate_init=0.3,
        target=0.5,
        bn_recalibration=20,
        output_dir="runs/fashion_resnet18",
    ),
    "cifar10_wrn": TrainConfig(
        preset="cifar10_wrn",
        model="wrn28_10",
        dataset="cifar10",
        **_GPU_RECIPE,
        output_dir="runs/cifar10_wrn",
    ),
    "cifar10_wrn_layerwise": TrainConfig(
        preset="cifar10_wrn_layerwise",
        model="wrn28_10",
        dataset="cifar10",
        **_GPU_RECIPE,
        layer_targets=(0.2,),
        output_dir="runs/cifar10_wrn_layerwise",
    ),
    "cifar100_wrn": TrainConfig(
        preset="cifar100_wrn",
        model="wrn28_10",
        dataset="cifar100",
        **_GPU_RECIPE,
        output_dir="runs/cifar100_wrn",
    ),
    "cifar10_resnet18": TrainConfig(
        preset="cifar10_resnet18",
        model="resnet18_cifar",
        dataset="cifar10",
        **_GPU_RECIPE,
        output_dir="runs/cifar10_resnet18",
    ),
    "tinyimagenet_resnet18": TrainConfig(
        preset="tinyimagenet_resnet18",
        model="resnet18",
        dataset="tinyimagenet",
        **_GPU_RECIPE,
        output_dir="runs/tinyimagenet_resnet18",
    ),
    "imagenet_resnet50": TrainConfig(
        preset="imagenet_resnet50",
        model="resnet50",
        dataset="imagenet",
        **{
            **_GPU_RECIPE,
            "epochs": 90,
            "batch_size": 256,
            "lr_milestones": (30, 60, 80),
            "lr_gamma": 0.1,
            "weight_decay": 1e-4,
            "droprate_init": 0.05,
        },
        output_dir="runs/imagenet_resnet50",
    ),
    "synthetic_smoke": TrainConfig(
        preset="synthetic_smoke",
        model="mlp",
        dataset="synthetic",
        epochs=2,
        batch_size=32,
        progress=False,
        tensorboard=False,
        output_dir="runs/synthetic_smoke",
    ),
}
"""Registered presets by name."""


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (a ``ValueError`` lists the valid names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


_ROLE = re.compile(r":[\w:]+:`([^`]*)`")
_FIELD = re.compile(r"^    (\w+): (.*)$")


def _plain(text: str) -> str:
    """A docstring's text with its reStructuredText markup removed, on one line."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        if "<" in target:  # :role:`title <target>`
            return target.split("<", 1)[0].strip()
        return target.rsplit(".", 1)[-1] if target.startswith("~") else target

    return " ".join(_ROLE.sub(role, text).replace("``", "").split())


@functools.cache
def _field_docs() -> dict[str, str]:
    doc = inspect.getdoc(TrainConfig) or ""
    section = doc.split("Attributes:", 1)[-1]
    lines: dict[str, list[str]] = {}
    current = None
    for line in section.splitlines():
        match = _FIELD.match(line)
        if match:
            current = match.group(1)
            lines[current] = [match.group(2)]
        elif current is not None and line.startswith("        "):
            lines[current].append(line)
        elif line.strip() and not line.startswith(" "):
            break
    return {name: _plain(" ".join(text)) for name, text in lines.items()}


def field_docs() -> dict[str, str]:
    """The description of every :class:`TrainConfig` field, as plain text.

    Parsed from the class docstring's ``Attributes:`` section, so that each field's help is
    written once: the command line's ``--help`` and the documentation's flag table show it.

    Returns:
        ``{field name: description}`` with reStructuredText markup removed, one line each.
    """
    return dict(_field_docs())
