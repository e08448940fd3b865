"""A training run's settings: :class:`TrainConfig`, its checks and its constraint mode.

Every field is a command-line flag of the same name (:mod:`l0_sparsity.cli`); its description
in the class docstring is the flag's help (:func:`field_docs`). :meth:`TrainConfig.validate`
refuses inconsistent settings and :attr:`TrainConfig.mode` names the constraint mode, once for
the trainer, the command line and the checkpoint checks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Mapping
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
MODE_FIELDS: Mapping[str, str] = {
    "model-wise": "target",
    "layer-wise": "layer_targets",
    "penalized": "penalty",
}
"""The field that holds each constraint mode's value, by mode (:attr:`TrainConfig.mode`).

The fourth mode, ``"budget-only"``, has no density term and no field: only compute budgets
(:data:`BUDGET_FIELDS`) constrain the run."""
BUDGET_FIELDS: Mapping[str, str] = {
    "macs": "macs_target",
    "params": "params_target",
    "latency": "latency_target",
}
"""The field that holds each compute budget's target, by the budget's constraint name."""
COMPUTE_FIELDS: tuple[str, ...] = (*BUDGET_FIELDS.values(), "macs_penalty")
"""The fields of the compute terms: the budgets' targets and the MACs penalty. Each combines with
any density mode; on the command line, given without a mode flag, it clears the preset's."""


def constraint_mode(
    penalty: float | None, layer_targets: tuple[float, ...] | None, target: float | None = None
) -> str:
    """The density mode of a run: a key of :data:`MODE_FIELDS`, or ``"budget-only"``.

    A penalty makes the penalized baseline, otherwise layer targets make layer-wise
    constraints, otherwise a model-wise ``target`` counts; without any of them only the
    compute budgets constrain the run.

    Args:
        penalty: :attr:`TrainConfig.penalty` (``None``: unset).
        layer_targets: :attr:`TrainConfig.layer_targets` (empty or ``None``: unset).
        target: :attr:`TrainConfig.target` (``None``: unset).

    Returns:
        ``"penalized"``, ``"layer-wise"``, ``"model-wise"`` or ``"budget-only"``.

    Example:
        >>> from l0_sparsity.training.config import constraint_mode
        >>> constraint_mode(None, (0.2,))
        'layer-wise'
    """
    if penalty is not None:
        return "penalized"
    if layer_targets:
        return "layer-wise"
    return "model-wise" if target is not None else "budget-only"


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
        weights: A file with the dense model's trained ``state_dict`` (``torch.save``), loaded
            before the gates are added, to fine-tune from pretrained weights (preset
            ``fashion_resnet18_pretrained``). ``None`` starts from random weights.
        target: Model-wise target density, used when ``layer_targets`` and ``penalty`` are
            unset. ``None`` with neither leaves only the compute budgets (on the command line:
            a budget flag without a mode flag). On the command line ``--target``,
            ``--layer-targets`` and ``--penalty`` each choose their mode (clearing the preset's
            other two), and at most one is given.
        layer_targets: Per-layer target densities (layer-wise mode; one value applies to every
            gated layer), or empty. Excludes ``penalty``.
        penalty: Penalized baseline coefficient (no constraint) when set. Excludes
            ``layer_targets``.
        macs_penalty: The penalized compute baseline: this coefficient times the expected MACs
            fraction is added to the loss, no constraint. It combines like ``macs_target``.
        macs_target: Budget on the purged model's MACs per example, as a fraction of the dense
            model's (a constraint on their expectation over the gates). It combines with the
            density mode and with ``params_target``; on the command line a budget flag given
            without ``--target``, ``--layer-targets`` or ``--penalty`` trains to the budgets
            alone (the preset's density mode is cleared).
        params_target: Budget on the purged model's parameters, as a fraction of the dense
            model's (a constraint on their expectation over the gates). It combines like
            ``macs_target``.
        latency_target: Budget on the purged model's latency, as a fraction of the dense
            model's, at batch ``batch_size`` on the run's device and ``threads``. A latency
            model (:class:`~l0_sparsity.measures.LatencyModel`) is measured at the start of
            the run and cached (``$L0_SPARSITY_CACHE``, else ``~/.cache/l0_sparsity``). It
            combines like ``macs_target``.
        strict_budgets: Make the budgets proxy constraints: their multipliers follow the
            purged model's fractions at the test-time gates, their expectations drive the
            gates (closes the gap between expected and purged MACs).
        budget_tolerance: With strict budgets, how far under a budget the purged model still
            counts as on it (the multiplier holds instead of restarting; 0: plain restarts).
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
    weights: str | None = None
    target: float | None = 0.35
    layer_targets: tuple[float, ...] = ()
    penalty: float | None = None
    macs_penalty: float | None = None
    macs_target: float | None = None
    params_target: float | None = None
    latency_target: float | None = None
    strict_budgets: bool = False
    budget_tolerance: float = 0.01
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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration recorded as ``dataclasses.asdict`` (e.g. a checkpoint's ``config``).

        Args:
            values: Field values by name; names that are not fields are ignored.

        Returns:
            The configuration.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    @property
    def mode(self) -> str:
        """``"penalized"``, ``"layer-wise"``, ``"model-wise"`` or ``"budget-only"``.

        (:func:`constraint_mode`; the compute budgets, :attr:`budgets`, combine with any.)
        """
        return constraint_mode(self.penalty, self.layer_targets, self.target)

    @property
    def budgets(self) -> dict[str, float]:
        """The compute budgets that are set, by constraint name (``{"macs": 0.4}``)."""
        return {
            name: value
            for name, field in BUDGET_FIELDS.items()
            if (value := getattr(self, field)) is not None
        }

    def validate(self) -> None:
        """Reject inconsistent settings with one clear message each.

        Raises:
            ValueError: For the first invalid setting found.
        """
        for ok, message in _checks(self):
            if not ok:
                raise ValueError(message + ".")


def _checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """``(valid, message)`` for each setting that :meth:`TrainConfig.validate` checks, in order."""
    return [
        (config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
        (
            config.optimizer in OPTIMIZERS,
            f"optimizer must be one of {_names(OPTIMIZERS)}, got {config.optimizer!r}",
        ),
        (
            config.lr > 0 and config.gates_lr > 0 and config.dual_lr > 0,
            "learning rates must be > 0",
        ),
        (
            config.target is None or 0 < config.target <= 1,
            f"target must be a density in (0, 1], got {config.target}",
        ),
        (
            all(0 < t <= 1 for t in config.layer_targets),
            f"layer_targets must be in (0, 1], got {config.layer_targets}",
        ),
        (
            config.penalty is None or config.penalty >= 0,
            f"penalty must be >= 0, got {config.penalty}",
        ),
        (
            config.macs_penalty is None or config.macs_penalty >= 0,
            f"macs_penalty must be >= 0, got {config.macs_penalty}",
        ),
        (
            config.penalty is None or not config.layer_targets,
            f"layer_targets {config.layer_targets} and penalty {config.penalty} exclude each "
            "other (layer-wise constraints or the penalized baseline); set one of them",
        ),
        *_budget_checks(config),
        (
            0 < config.droprate_init < 1,
            f"droprate_init must be in (0, 1), got {config.droprate_init}",
        ),
        (
            config.amp in AMP_MODES,
            f"amp must be one of {_names(AMP_MODES)}, got {config.amp!r}",
        ),
        (config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}"),
        (
            config.on_nonfinite in ON_NONFINITE,
            f"on_nonfinite must be one of {_names(ON_NONFINITE)}, got {config.on_nonfinite!r}",
        ),
        (
            config.subset is None or config.subset >= 1,
            f"subset must be >= 1, got {config.subset}",
        ),
        (
            config.test_subset is None or config.test_subset >= 1,
            f"test_subset must be >= 1, got {config.test_subset}",
        ),
        (config.num_workers >= 0, f"num_workers must be >= 0, got {config.num_workers}"),
        (config.threads >= 0, f"threads must be >= 0, got {config.threads}"),
        (
            config.bn_recalibration >= 0,
            f"bn_recalibration must be >= 0 batches, got {config.bn_recalibration}",
        ),
        (
            config.accumulation_steps >= 1,
            f"accumulation_steps must be >= 1, got {config.accumulation_steps}",
        ),
        (
            not (config.resume and config.overwrite),
            "resume (--resume) and overwrite (--overwrite) exclude each other: resume continues "
            "the run in output_dir, overwrite replaces it",
        ),
    ]


def _budget_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """The compute budgets' ranges, and that the run has a constraint or a penalty at all."""
    checks = [
        (
            value is None or 0 < value <= 1,
            f"{field} must be a fraction of the dense model's {what} in (0, 1], got {value}",
        )
        for field, what in (
            ("macs_target", "MACs"),
            ("params_target", "parameters"),
            ("latency_target", "latency"),
        )
        for value in [getattr(config, field)]
    ]
    tolerance = config.budget_tolerance
    checks.append((0 <= tolerance < 1, f"budget_tolerance must be in [0, 1), got {tolerance}"))
    checks.append(
        (
            config.mode != "budget-only" or bool(config.budgets) or config.macs_penalty is not None,
            "nothing to train to: give a target density (target or layer_targets), a penalty "
            "(penalty or macs_penalty) or a compute budget (macs_target, params_target, "
            "latency_target)",
        )
    )
    return checks


def _names(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


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
