"""Command line: ``l0-sparsity`` (or ``python -m l0_sparsity``).

Subcommands:

* ``train --preset NAME [--FIELD VALUE ...]``: train; every field of
  :class:`~l0_sparsity.presets.TrainConfig` is a flag (``--target 0.3``, ``--epochs 10``,
  ``--layer-targets 0.2,0.3``, ``--no-dual-restarts``, ``--penalty 0.1``, ``--resume``).
* ``presets``: list the presets and their settings.
* ``demo``: the CPU demonstration: MNIST-5k MLP at target density 0.35, then the same run with a
  fixed penalty, and a table of the outcomes.
* ``purge CHECKPOINT OUT``: build the physically smaller model from a training checkpoint and save
  it so that it loads with plain ``torch.export.load``.

User errors (bad values, unknown names, missing data, corrupted checkpoints, checkpoints of
another run) end with one line on stderr and exit code 2, without a traceback, before any file
is written. A run refused for a NaN/Inf loss or constraint (``--on-nonfinite raise``, the
default) ends the same way with exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any

from conopt.optim.lagrangian import NonFiniteError
from l0_sparsity.checkpoint import CheckpointError, one_line
from l0_sparsity.data import DatasetNotFoundError
from l0_sparsity.presets import PRESETS, TrainConfig, get_preset

EXIT_TRAINING_FAILED = 1
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage is left to ``--help``)."""

    def error(self, message: str) -> typing.NoReturn:
        """Print ``prog: error: message`` on one line and exit with code 2."""
        self.exit(
            EXIT_USER_ERROR,
            f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n",
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_separated(item: type) -> Any:
    """A converter of ``"0.2,0.3"`` to ``(0.2, 0.3)``, named for argparse's error messages."""

    def convert(text: str) -> tuple[Any, ...]:
        return tuple(item(v) for v in text.split(",") if v.strip())

    convert.__name__ = f"comma-separated {item.__name__}"
    return convert


def _parser_for(annotation: Any) -> tuple[Any, bool]:
    """(converter, is_bool) for a dataclass field's annotation."""
    hints = {typing.get_origin(annotation), *typing.get_args(annotation)}
    if annotation is bool or annotation == "bool":
        return None, True
    if typing.get_origin(annotation) is tuple:
        return _comma_separated(typing.get_args(annotation)[0]), False
    for kind in (int, float, str):
        if annotation is kind or kind in hints:
            return kind, False
    raise TypeError(f"unsupported config field type {annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field; unset flags keep the preset's value."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name == "preset":
            continue
        converter, is_bool = _parser_for(hints[field.name])
        if is_bool:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"(preset: {field.default})",
            )
        else:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                type=converter,
                default=None,
                help=f"(default: preset's; base {field.default})",
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset named by ``args.preset`` with every given flag applied."""
    try:
        base = get_preset(args.preset)
    except ValueError as error:
        raise UserError(str(error)) from None
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "preset" and getattr(args, f.name, None) is not None
    }
    return base.replace(**changes)


def build_parser() -> argparse.ArgumentParser:
    """The ``l0-sparsity`` argument parser."""
    parser = _Parser(
        prog="l0-sparsity", description="Train networks to a chosen density with L0 gates."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a gated model to a target density")
    train.add_argument("--preset", default="mnist_mlp", help=f"one of: {', '.join(PRESETS)}")
    add_config_flags(train)
    commands.add_parser("presets", help="list the presets")
    demo = commands.add_parser("demo", help="the CPU demo: constrained vs penalized")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (preset: 200)")
    demo.add_argument("--target", type=float, default=0.35)
    demo.add_argument("--penalty", type=float, default=0.1)
    demo.add_argument("--output-dir", default="runs/demo")
    purge = commands.add_parser("purge", help="save the physically smaller model of a checkpoint")
    purge.add_argument("checkpoint", help="a training checkpoint (checkpoint.pt)")
    purge.add_argument("out", help="where to write the purged model (.pt2)")
    return parser


def _run_train(config: TrainConfig) -> None:
    from l0_sparsity.train import train

    result = train(config)
    if result.rank != 0:  # under torchrun, rank 0 reports for all
        return
    final = result.final
    print(
        f"done: test error {final['test_error']:.4f}, expected density "
        f"{final['expected_density']:.4f}, purged density {final['purged_density']:.4f}; "
        f"files in {result.output_dir}"
    )


def _run_presets() -> None:
    for name, preset in PRESETS.items():
        print(
            f"{name}: model={preset.model} dataset={preset.dataset} epochs={preset.epochs} "
            f"optimizer={preset.optimizer} lr={preset.lr} gates_lr={preset.gates_lr} "
            f"dual_lr={preset.dual_lr} target={preset.target}"
        )


def _run_purge(checkpoint: str, out: str) -> None:
    from l0_sparsity.purge_cli import purge_checkpoint

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
    except NonFiniteError as error:
        print(f"l0-sparsity: error: {one_line(str(error), limit=1000)}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except (UserError, ValueError, CheckpointError, DatasetNotFoundError) as error:
        print(f"l0-sparsity: error: {one_line(str(error), limit=1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("l0-sparsity: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "config_from_args", "main"]
