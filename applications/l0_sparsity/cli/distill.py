"""``l0-sparsity distill``: the pretrained MiniLM distilled to a MACs budget, purged, exported."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from l0_sparsity.encoders.training import DistillConfig

__all__ = ["add_distill_parser", "run_distill"]


def add_distill_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``distill`` subcommand, one flag per field of :class:`DistillConfig`.

    Args:
        commands: The subparsers of the ``l0-sparsity`` parser.
    """
    distill = commands.add_parser(
        "distill",
        help="distill the pretrained MiniLM sentence encoder to a MACs budget",
        description=(
            "Train a gated copy of all-MiniLM-L6-v2 (one gate per attention head and per FFN "
            "unit) to match the frozen teacher's sentence embeddings on Python's help-topic "
            "sentences, under a budget on its MACs at --budget-length tokens; then purge it "
            "and, with --onnx, write the purged encoder as an ONNX file."
        ),
    )
    for field in dataclasses.fields(DistillConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            distill.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = int if field.type in ("int", int) else float
            distill.add_argument(flag, type=kind, default=None, help=f"default {field.default}")
    distill.add_argument("--onnx", type=Path, default=None, help="write the purged encoder here")


def config_from_distill_args(args: argparse.Namespace) -> DistillConfig:
    """The :class:`DistillConfig` of the parsed flags (defaults for flags left out).

    Args:
        args: The parsed ``distill`` arguments.

    Returns:
        The configuration.

    Raises:
        ValueError: If a value is out of range (named).
    """
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(DistillConfig)
        if getattr(args, field.name) is not None
    }
    config = DistillConfig(**given)
    if not 0.0 < config.macs_target <= 1.0:
        raise ValueError(f"--macs-target must be in (0, 1], got {config.macs_target}.")
    if config.macs_penalty is not None and config.macs_penalty < 0:
        raise ValueError(f"--macs-penalty must be >= 0, got {config.macs_penalty}.")
    for name in ("epochs", "batch_size", "budget_length", "max_length"):
        if getattr(config, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}."
            )
    return config


def run_distill(args: argparse.Namespace) -> None:
    """Run ``l0-sparsity distill``: train, purge, report, and export when asked.

    Args:
        args: The parsed ``distill`` arguments.
    """
    from l0_sparsity.encoders import SentenceEncoder, export_encoder_onnx
    from l0_sparsity.encoders.training import distill_minilm
    from l0_sparsity.purging import count_params, purge

    config = config_from_distill_args(args)
    if args.onnx is not None and not args.onnx.parent.is_dir():
        raise ValueError(f"--onnx {str(args.onnx)!r}: its directory does not exist.")
    result = distill_minilm(config)
    purged = SentenceEncoder(purge(result.student.encoder))
    macs = result.problem.test_compute()["macs"]
    params = count_params(purged) / count_params(result.teacher)
    agreement = result.agreement
    reached = (
        f"budget {config.macs_target:.4f}"
        if config.macs_penalty is None
        else f"penalty {config.macs_penalty:g}, no budget"
    )
    print(
        f"done: purged MACs {macs:.4f} ({reached}), parameters "
        f"{params:.4f}; held-out mean cosine {agreement.mean_cosine:.4f}, nearest-neighbour "
        f"agreement {agreement.neighbour_agreement:.4f} over {agreement.sentences} sentences"
    )
    if args.onnx is not None:
        print(f"onnx: {export_encoder_onnx(purged, args.onnx)}")
