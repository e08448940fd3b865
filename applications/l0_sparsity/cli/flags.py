"""The ``train`` subcommand's flags: one per field of the run's settings.

Every field of :class:`~l0_sparsity.training.config.TrainConfig` is a flag of the same name. Its
help is the first sentence of the field's description
(:func:`~l0_sparsity.training.config.field_docs`); the fields with a fixed set of values list them
as argparse ``choices``. :func:`config_from_args` applies the given flags to the preset, and
:func:`resume_command` rebuilds the command line that resumes a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from l0_sparsity.data import DATASETS
from l0_sparsity.models import MODELS
from l0_sparsity.training.config import (
    AMP_MODES,
    COMPUTE_FIELDS,
    DEVICES,
    MODE_FIELDS,
    ON_NONFINITE,
    OPTIMIZERS,
    TrainConfig,
    field_docs,
)
from l0_sparsity.training.presets import get_preset

__all__ = ["UserError", "add_config_flags", "config_from_args", "known_name", "resume_command"]

_PLAIN_CHOICES = {
    "optimizer": OPTIMIZERS,
    "device": DEVICES,
    "amp": AMP_MODES,
    "on_nonfinite": ON_NONFINITE,
}
_NAMED_CHOICES = {"model": MODELS, "dataset": DATASETS}


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def known_name(kind: str, names: Iterable[str]) -> Callable[[str], str]:
    """An argparse converter accepting the registered ``names``; others are "unknown {kind}".

    Args:
        kind: What the names are (``"preset"``, ``"model"``, ...), for the error message.
        names: The valid names, listed in the error message.

    Returns:
        The converter, named ``kind`` for argparse's messages.
    """
    valid = list(names)

    def convert(text: str) -> str:
        if text not in valid:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {text!r}; valid {kind}s: {', '.join(valid)}"
            )
        return text

    convert.__name__ = kind
    return convert


def _summary(text: str) -> str:
    """The first sentence of a field's description: its one-line help."""
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]


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
    """One flag per :class:`TrainConfig` field; unset flags keep the preset's value.

    Each flag's help is the first sentence of its field's description in the
    ``TrainConfig`` docstring (:func:`~l0_sparsity.training.presets.field_docs`); the fields with a
    fixed set of values list them as argparse ``choices``.

    Args:
        parser: The ``train`` subcommand's parser.
    """
    hints = typing.get_type_hints(TrainConfig)
    docs = field_docs()
    for field in dataclasses.fields(TrainConfig):
        if field.name == "preset":
            continue
        converter, is_bool = _parser_for(hints[field.name])
        options: dict[str, Any] = {"dest": field.name, "default": None}
        if is_bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = converter
        if field.name in _PLAIN_CHOICES:
            options["choices"] = _PLAIN_CHOICES[field.name]
        elif field.name in _NAMED_CHOICES:
            options["choices"] = list(_NAMED_CHOICES[field.name])
            options["type"] = known_name(field.name, _NAMED_CHOICES[field.name])
        elif typing.get_origin(hints[field.name]) is tuple:
            options["metavar"] = "V[,V...]"
        help_text = _summary(docs[field.name]).replace("%", "%%")
        parser.add_argument(_flag(field.name), help=help_text, **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset named by ``args.preset`` with every given flag applied.

    A mode flag (``--target``, ``--layer-targets``, ``--penalty``) chooses the constraint mode:
    it clears the preset's other two, so that the flag given is the one that counts. Budget flags
    (``--macs-target``, ``--params-target``) combine with a mode flag; given without one, they
    clear the preset's density mode too: the run trains to the budgets alone.

    Args:
        args: The parsed ``train`` arguments.

    Returns:
        The run's configuration.

    Raises:
        UserError: For an unknown preset, or more than one mode flag.
    """
    try:
        base = get_preset(args.preset)
    except ValueError as error:
        raise UserError(str(error)) from None
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name != "preset" and getattr(args, f.name, None) is not None
    }
    modes = [name for name in MODE_FIELDS.values() if changes.get(name) not in (None, ())]
    if len(modes) > 1:
        raise UserError(
            f"{' and '.join(_flag(m) for m in modes)} exclude each other: give one of --target "
            "(model-wise), --layer-targets (layer-wise) or --penalty (penalized baseline)."
        )
    if modes:  # the preset's other modes would take precedence over the one asked for
        cleared = {"layer_targets": (), "penalty": None}
        changes = {**{k: v for k, v in cleared.items() if k != modes[0]}, **changes}
    elif any(changes.get(name) is not None for name in COMPUTE_FIELDS):
        changes = {"target": None, "layer_targets": (), "penalty": None, **changes}
    return base.replace(**changes)


def _train_options() -> list[str]:
    """Every option string of the ``train`` subcommand."""
    hints = typing.get_type_hints(TrainConfig)
    options = ["--help", "--preset"]
    for field in dataclasses.fields(TrainConfig):
        options.append(_flag(field.name))
        if hints[field.name] is bool:
            options.append("--no-" + field.name.replace("_", "-"))
    return options


def resume_command(argv: Sequence[str]) -> str:
    """The shell command that resumes the ``train`` run of ``argv``.

    ``argv`` with ``--resume`` added and any ``--[no-]resume`` or ``--[no-]overwrite`` (also
    abbreviated, as argparse accepts) removed.

    Args:
        argv: The ``l0-sparsity`` arguments of the run (``train ...``).

    Returns:
        The command, quoted for a POSIX shell.
    """
    options = _train_options()
    dropped = {"--resume", "--no-resume", "--overwrite", "--no-overwrite"}

    def option(token: str) -> str:
        matches = [o for o in options if o.startswith(token)] if token.startswith("--") else []
        return token if token in options or len(matches) != 1 else matches[0]

    kept = [token for token in argv if option(token) not in dropped]
    return shlex.join(["l0-sparsity", *kept, "--resume"])
