r"""Checkpoints that survive a crash: written atomically, validated when read.

A checkpoint is written to a temporary file in the same directory, flushed and ``fsync``\ ed,
then renamed over the previous one (``os.replace`` is atomic on POSIX): a process killed while
writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 2
"""Version 2: one primal optimizer (weights and gates as two parameter groups), a per-group
``LambdaLR`` schedule, plain-Python RNG states (the file loads with ``weights_only=True``)."""
REQUIRED_KEYS = ("format_version", "config", "epoch", "model", "problem", "optimizer")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or belongs to another run."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as one printable line, for error messages.

    Whitespace runs become one space, other control characters are escaped, and anything past
    ``limit`` characters is cut (``…``).

    Args:
        text: Any message (e.g. a multi-line ``load_state_dict`` or unpickling error).
        limit: The longest line returned.

    Returns:
        The single-line message.
    """
    printable = "".join(c if c.isprintable() or c.isspace() else repr(c)[1:-1] for c in text)
    flat = " ".join(printable.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def save_atomic(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``payload`` with ``torch.save`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give it a normal file's mode
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a training checkpoint.

    The file is read with ``torch.load(weights_only=True)``: tensors, containers and plain Python
    values only, so that loading a checkpoint cannot run code hidden in it.

    Args:
        path: The checkpoint file.

    Returns:
        The checkpoint's payload (``config``, ``epoch``, state dicts, RNG states).

    Raises:
        CheckpointError: The file is missing, unreadable, not a checkpoint of this trainer, or
            of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: a corrupted or a foreign file
        message = one_line(str(error))
        if "weights only load failed" in message.lower():  # objects beyond plain values
            raise CheckpointError(
                f"checkpoint {path} holds objects that a safe load refuses; it was not written "
                f"by this version of the trainer (format {FORMAT_VERSION}): {message}"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable: {message}") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not an l0_sparsity training checkpoint.")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload['format_version']}, "
            f"this version reads {FORMAT_VERSION}."
        )
    return payload
