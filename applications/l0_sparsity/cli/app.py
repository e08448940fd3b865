"""Command line: ``l0-sparsity`` (or ``python -m l0_sparsity``).

Subcommands:

* ``train --preset NAME [--FIELD VALUE ...]``: train; every field of
  :class:`~l0_sparsity.training.config.TrainConfig` is a flag (``--target 0.3``, ``--epochs 10``,
  ``--layer-targets 0.2,0.3``, ``--no-dual-restarts``, ``--penalty 0.1``, ``--resume``,
  ``--overwrite``). ``--target``, ``--layer-targets`` and ``--penalty`` each choose the
  constraint mode, replacing the preset's: at most one of them is given. The compute budgets
  ``--macs-target`` and ``--params-target`` combine with them; given alone, they replace the
  preset's density mode. An ``--output-dir`` that holds a run is refused unless ``--resume``
  continues it or ``--overwrite`` replaces it. One line is printed per epoch; the last line
  (``done: ...``) says when the target was missed and whether each budget was met, by how
  much; Ctrl-C names the last saved epoch and the command that resumes the run.
* ``presets``: list the presets and their settings.
* ``demo``: the CPU demonstration: MNIST-5k MLP at target density 0.35, then the same run with a
  fixed penalty, and a table of the outcomes.
* ``distill [--macs-target 0.5] [--epochs N] [--onnx OUT] ...``: distill the pretrained MiniLM
  sentence encoder to a MACs budget, purge it, report its agreement with the teacher, and
  write it as ONNX (:mod:`l0_sparsity.cli.distill`).
* ``purge CHECKPOINT OUT``: build the physically smaller model from a training checkpoint and save
  it so that it loads with plain ``torch.export.load``.

User errors (bad values, unknown names, missing data, corrupted checkpoints, checkpoints of
another run) end with one line on stderr and exit code 2, without a traceback, before any file
is written; so does an output path that cannot be written, and a ``--resume`` whose checkpoint
already holds ``--epochs`` epochs (nothing to do). A run refused for a NaN/Inf loss or
constraint (``--on-nonfinite raise``, the default) ends the same way with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conopt.optim import NonFiniteError
from l0_sparsity.cli.distill import add_distill_parser, run_distill
from l0_sparsity.cli.flags import (
    UserError,
    add_config_flags,
    config_from_args,
    known_name,
    resume_command,
)
from l0_sparsity.data import DatasetNotFoundError
from l0_sparsity.problem import BUDGETS
from l0_sparsity.training.checkpoint import CheckpointError, one_line
from l0_sparsity.training.config import TrainConfig
from l0_sparsity.training.presets import PRESETS

if TYPE_CHECKING:
    from l0_sparsity.training.run import TrainResult

EXIT_TRAINING_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
TARGET_TOLERANCE = 0.01
"""How far above its target a final expected density, or a purged model's budgeted fraction, may
be before ``done:`` calls it missed (one percentage point: the constrained runs end within it,
e.g. 0.3525 against 0.35)."""
_HINT = "more epochs (--epochs) or a larger --dual-lr may reach it"


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage is left to ``--help``)."""

    def error(self, message: str) -> typing.NoReturn:
        """Print ``prog: error: message`` on one line and exit with code 2."""
        self.exit(
            EXIT_USER_ERROR,
            f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``l0-sparsity`` argument parser."""
    parser = _Parser(
        prog="l0-sparsity", description="Train networks to a chosen density with L0 gates."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a gated model to a target density",
        description=(
            "Train a gated model to a target density. Every flag overrides one setting of the "
            "preset; a flag left out keeps the preset's value (l0-sparsity presets lists "
            "them). --target, --layer-targets and --penalty each choose the constraint mode: "
            "give at most one. The compute budgets --macs-target and --params-target combine "
            "with it; given without one, they train to the budgets alone. An --output-dir "
            "holding a run needs --resume or --overwrite."
        ),
    )
    train.add_argument(
        "--preset",
        default="mnist_mlp",
        type=known_name("preset", PRESETS),
        choices=list(PRESETS),
        metavar="NAME",
        help=f"the preset the other flags override, one of: {', '.join(PRESETS)} "
        "(default: mnist_mlp)",
    )
    add_config_flags(train)
    commands.add_parser("presets", help="list the presets")
    demo = commands.add_parser("demo", help="the CPU demo: constrained vs penalized")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (preset: 200)")
    demo.add_argument("--target", type=float, default=0.35)
    demo.add_argument("--penalty", type=float, default=0.1)
    demo.add_argument("--output-dir", default="runs/demo")
    add_distill_parser(commands)
    purge = commands.add_parser("purge", help="save the physically smaller model of a checkpoint")
    purge.add_argument("checkpoint", help="a training checkpoint (checkpoint.pt)")
    purge.add_argument("out", help="where to write the purged model (.pt2)")
    return parser


def _run_train(config: TrainConfig) -> None:
    from l0_sparsity.training.trainer import train

    result = train(config, epoch_lines=True, refuse_existing_run=True)
    if result.rank != 0:  # under torchrun, rank 0 reports for all
        return
    final = result.final
    print(
        f"done: test error {final['test_error']:.4f}, expected density "
        f"{final['expected_density']:.4f}, purged density {final['purged_density']:.4f}; "
        f"files in {result.output_dir}{target_missed(result)}{budgets_met(result)}"
    )


def target_missed(result: TrainResult) -> str:
    """What ``done:`` appends when the final density or a budget is above its target.

    A density counts as above its target beyond :data:`TARGET_TOLERANCE`; the penalized and
    budget-only modes have no density target. A compute budget counts as missed when the
    purged model's fraction (``purged_macs``, ``purged_params``) is more than
    :data:`TARGET_TOLERANCE` above it.

    Args:
        result: The finished run.

    Returns:
        ``"; target 0.3000 missed: ..."`` (model-wise), ``"; layer targets missed in ..."``
        (layer-wise), then ``"; MACs budget 0.3000 missed: ..."`` for each missed budget, or
        ``""``.
    """
    final = result.final
    epochs = int(final["epoch"]) + 1
    density = _density_missed(result)
    missed = [
        f"; {BUDGETS[name]} budget {target:.4f} missed: purged {BUDGETS[name]} {purged:.4f} "
        f"is {purged - target:.4f} above it after {_epochs(epochs)}"
        for name, target, purged in _budgets(final)
        if purged - target > TARGET_TOLERANCE
    ]
    if missed and not density:  # the density clause already gives the hint
        missed[-1] += f" ({_HINT})"
    return density + "".join(missed)


def budgets_met(result: TrainResult) -> str:
    """What ``done:`` appends for each compute budget that was met, and by how much.

    A budget counts as met when the purged model's fraction is below it or at most
    :data:`TARGET_TOLERANCE` above it (:func:`target_missed` reports the others).

    Args:
        result: The finished run.

    Returns:
        ``"; MACs budget 0.3000 met: purged MACs 0.2950, 0.0050 below it"`` for each budget
        met, or ``""``.
    """
    clauses = []
    for name, target, purged in _budgets(result.final):
        if purged - target > TARGET_TOLERANCE:
            continue
        margin = (
            f"{target - purged:.4f} below it"
            if purged <= target
            else f"{purged - target:.4f} above it, within {TARGET_TOLERANCE}"
        )
        what = BUDGETS[name]
        clauses.append(f"; {what} budget {target:.4f} met: purged {what} {purged:.4f}, {margin}")
    return "".join(clauses)


def _budgets(final: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(name, target, purged fraction)`` of each compute budget in a metrics row."""
    return [
        (name, float(final[f"{name}_target"]), float(final[f"purged_{name}"]))
        for name in BUDGETS
        if f"{name}_target" in final
    ]


def _density_missed(result: TrainResult) -> str:
    """:func:`target_missed`'s clause for the density target(s), or ``""``."""
    final, problem = result.final, result.problem
    epochs = int(final["epoch"]) + 1
    targets = problem.targets.reshape(-1).tolist()
    if problem.mode == "model-wise":
        density, target = final["expected_density"], targets[0]
        if density - target <= TARGET_TOLERANCE:
            return ""
        return (
            f"; target {target:.4f} missed: expected density {density:.4f} is "
            f"{density - target:.4f} above it after {_epochs(epochs)} ({_HINT})"
        )
    if problem.mode != "layer-wise":
        return ""
    layers = [(k.removeprefix("density/"), v) for k, v in final.items() if k.startswith("density/")]
    over = [
        (density - target, name, density, target)
        for (name, density), target in zip(layers, targets, strict=True)
        if density - target > TARGET_TOLERANCE
    ]
    if not over:
        return ""
    excess, name, density, target = max(over)
    return (
        f"; layer targets missed in {len(over)} of {len(layers)} layers after {_epochs(epochs)}, "
        f"most in {name}: density {density:.4f} against {target:.4f} (+{excess:.4f}) ({_HINT})"
    )


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _mode_text(preset: TrainConfig) -> str:
    """The preset's constraint as ``target=...``, ``layer_targets=...`` or ``penalty=...``.

    Followed by ``macs_target=...`` and ``params_target=...`` when the preset has budgets.
    """
    budgets = [f"{name}_target={value}" for name, value in preset.budgets.items()]
    if preset.macs_penalty is not None:
        budgets.append(f"macs_penalty={preset.macs_penalty}")
    if preset.mode == "penalized":
        density = [f"penalty={preset.penalty}"]
    elif preset.mode == "layer-wise":
        values = ",".join(str(v) for v in preset.layer_targets)
        every = " (every gated layer)" if len(preset.layer_targets) == 1 else ""
        density = [f"layer_targets={values}{every}"]
    else:
        density = [f"target={preset.target}"] if preset.mode == "model-wise" else []
    return " ".join(density + budgets)


def _run_presets() -> None:
    for name, preset in PRESETS.items():
        print(
            f"{name}: model={preset.model} dataset={preset.dataset} epochs={preset.epochs} "
            f"optimizer={preset.optimizer} lr={preset.lr} gates_lr={preset.gates_lr} "
            f"dual_lr={preset.dual_lr} {_mode_text(preset)}"
        )


def _interrupted(interrupt: KeyboardInterrupt, argv: Sequence[str]) -> str:
    """The message of a Ctrl-C: the last saved epoch and how to continue, when training."""
    from l0_sparsity.training.run import TrainingInterrupted

    if not isinstance(interrupt, TrainingInterrupted):
        return "interrupted"
    if interrupt.saved_epoch is None:
        return f"{interrupt}; nothing to resume"
    return f"{interrupt}; continue with: {resume_command(argv)}"


def _run_purge(checkpoint: str, out: str) -> None:
    from l0_sparsity.cli.purge import purge_checkpoint

    report = purge_checkpoint(checkpoint, out)
    print(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l0-sparsity`` console script; returns the exit code.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when training was refused for a NaN/Inf, 2 for a user error, 130 when
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        code = exit_.code
        return 0 if code is None else code if isinstance(code, int) else EXIT_USER_ERROR
    try:
        if args.command == "train":
            _run_train(config_from_args(args))
        elif args.command == "presets":
            _run_presets()
        elif args.command == "demo":
            from l0_sparsity.demo import run_demo

            run_demo(
                epochs=args.epochs,
                target=args.target,
                penalty=args.penalty,
                output_dir=args.output_dir,
            )
        elif args.command == "purge":
            _run_purge(args.checkpoint, args.out)
        elif args.command == "distill":
            run_distill(args)
    except NonFiniteError as error:
        print(f"l0-sparsity: error: {one_line(str(error), limit=1000)}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    # A request that cannot be carried out (e.g. --resume with nothing left to train) is a
    # ValueError too: exit code 2, so that a script does not take it for a finished run.
    except (UserError, ValueError, CheckpointError, DatasetNotFoundError) as error:
        print(f"l0-sparsity: error: {one_line(str(error), limit=1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        print(f"l0-sparsity: {one_line(_interrupted(interrupt, argv), 2000)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


__all__ = [
    "budgets_met",
    "build_parser",
    "config_from_args",
    "main",
    "resume_command",
    "target_missed",
]
