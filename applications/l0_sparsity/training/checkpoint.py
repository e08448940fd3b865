r"""Checkpoints that survive a crash: written atomically, validated when read, resumed exactly.

A checkpoint is written to a temporary file in the same directory, flushed and ``fsync``\ ed,
then renamed over the previous one (``os.replace`` is atomic on POSIX): a process killed while
writing leaves the previous checkpoint intact. Besides the state dicts it holds the RNG states
(:func:`rng_state`, plain Python values) and the run's configuration, whose model, data and
constraint a resumed run must share (:func:`check_same_problem`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from l0_sparsity.training.config import COMPUTE_FIELDS, MODE_FIELDS, constraint_mode

if TYPE_CHECKING:
    from l0_sparsity.training.config import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
"""The checkpoint's file name in a run's ``output_dir``."""

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
    values only, so that loading a checkpoint cannot run code hidden in it. A file that is not
    a checkpoint is refused with a message saying what it is: empty, not a PyTorch file at all,
    a truncated or corrupted PyTorch archive, another kind of PyTorch file (a TorchScript model,
    an exported program, a bare state dict), or a file holding objects that a safe load refuses.
    The message never suggests an unsafe load.

    Args:
        path: The checkpoint file.

    Returns:
        The checkpoint's payload (``config``, ``epoch``, state dicts, RNG states).

    Raises:
        CheckpointError: The file is missing, unreadable, not a checkpoint of this trainer, or
            of another format version (one line naming ``path``).
    """
    path = Path(path)
    if not path.exists():
        raise _error(f"no checkpoint at {path}.")
    if not path.is_file():
        raise _error(f"checkpoint {path} is not a regular file.")
    problem = _identify(path)
    if problem is not None:
        raise _error(f"checkpoint {path} {problem}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a PyTorch archive that fails to read
        raise _error(f"checkpoint {path} {_load_failure(error)}.") from None
    missing = _missing_keys(payload)
    if missing is not None:
        raise _error(
            f"checkpoint {path} is a PyTorch file but not an l0_sparsity training checkpoint "
            f"(another model's or another program's file): {missing}."
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise _error(
            f"checkpoint {path} has format version {payload['format_version']!r}, "
            f"this version reads {FORMAT_VERSION}."
        )
    return payload


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``.

    Args:
        seed: The run's seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states, as a checkpoint stores them.

    NumPy's state is kept as plain Python values, so that the checkpoint loads with
    ``weights_only=True``.

    Returns:
        ``{"python", "numpy", "torch"}`` and, where CUDA is available, ``"cuda"``.
    """
    name, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generators from :func:`rng_state`'s value.

    Args:
        state: A checkpoint's ``"rng"`` entry.
    """
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gauss = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((name, keys, position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_same_problem(written: object, config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Refuse to resume from a checkpoint of another model, dataset or constraint.

    Args:
        written: The checkpoint's ``"config"`` entry (a dictionary of the run's settings).
        config: The settings of the run that resumes.
        path: The checkpoint, for the message.

    Raises:
        CheckpointError: If model, dataset, gate structure, constraint mode or its value, or
            the compute budgets differ.
    """
    previous = _problem_signature(written if isinstance(written, Mapping) else {})
    current = _problem_signature(dataclasses.asdict(config))
    if previous != current:
        raise CheckpointError(
            f"{path} was written for {_describe(previous)}, not {_describe(current)}."
        )


def _problem_signature(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a checkpoint's run and this run must share to resume: model, data, constraints.

    The constraints are the density mode's field and value, then ``(field, value)`` for each
    compute budget that is set and the MACs penalty if set (a checkpoint written before budgets
    existed has none).
    """
    mode = constraint_mode(
        settings.get("penalty"), settings.get("layer_targets"), settings.get("target")
    )
    field = MODE_FIELDS.get(mode)
    value = settings.get(field) if field is not None else None
    if mode == "layer-wise":
        value = tuple(value or ())
    budgets = tuple(
        (name, settings[name]) for name in COMPUTE_FIELDS if settings.get(name) is not None
    )
    return (
        settings.get("model"),
        settings.get("dataset"),
        settings.get("structured"),
        field,
        value,
        budgets,
    )


def _describe(signature: tuple[Any, ...]) -> str:
    """``_problem_signature`` in words, for error messages."""
    model, dataset, structured, mode, value, budgets = signature
    gates = "structured" if structured else "unstructured"
    terms = ([f"{mode} {value}"] if mode is not None else []) + [f"{n} {v}" for n, v in budgets]
    return f"model {model!r} ({gates} gates) on {dataset!r} with {' and '.join(terms)}"


# The start of a legacy (non-zip) ``torch.save`` file: a pickle protocol byte, then the pickled
# magic number (``LONG1``, 10 bytes) that ``torch.load`` checks first.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_EMPTY_ERRORS: dict[type[Exception], str] = {EOFError: "the file ends early"}
_HINTS = ("weights_only", "miniz", "if you are seeing", "safe_globals", "trust", "documentation")


def _error(message: str) -> CheckpointError:
    """A :class:`CheckpointError` whose message is one printable line."""
    return CheckpointError(one_line(message, limit=1000))


def _identify(path: Path) -> str | None:
    """Why ``path`` is not a PyTorch pickle archive (the end of a sentence), or ``None``.

    Only the first bytes and, for a zip file, its list of members are read: nothing of the
    file is unpickled or executed.
    """
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError as error:
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if not header:
        return "is an empty file (0 bytes), not a checkpoint"
    if header.startswith(b"PK") or b"PK\x03\x04".startswith(header):
        return _identify_zip(path)
    if header[:1] == b"\x80" and (
        header[2:14] == _LEGACY_MAGIC or (len(header) < 14 and _LEGACY_MAGIC.startswith(header[2:]))
    ):
        return None  # a legacy torch.save file, maybe truncated: torch.load tells
    if zipfile.is_zipfile(path):  # a zip directory, but a damaged start
        return "is a corrupted zip archive (its first bytes are damaged): not a readable checkpoint"
    if header[:1] == b"\x80":
        return (
            "looks like a plain Python pickle, not a PyTorch file: not a checkpoint "
            "(another kind of file, or corrupted)"
        )
    return (
        f"is not a PyTorch file at all (neither a torch zip archive nor a torch pickle; it "
        f"starts with {header!r}): not a checkpoint (another kind of file, or corrupted)"
    )


def _identify_zip(path: Path) -> str | None:
    """Why the zip file ``path`` is not a PyTorch pickle archive, or ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # BadZipFile, or any failure of a malformed directory
        return (
            "is a truncated or corrupted zip archive (its directory cannot be read): "
            "not a readable checkpoint"
        )
    tails = {name.partition("/")[2] for name in names}
    if "archive_format" in tails:
        return (
            "is an exported program (torch.export.save, e.g. a purged model), "
            "not a training checkpoint"
        )
    if "constants.pkl" in tails:
        return "is a TorchScript model (torch.jit.save), not a training checkpoint"
    if "data.pkl" not in tails:
        return "is a zip archive but not a PyTorch file (no data.pkl): not a checkpoint"
    return None


def _load_failure(error: Exception) -> str:
    """What a ``torch.load`` failure says about the file, torch's own hints left out."""
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused is not None:
        name = refused.group(1).rstrip(".")
        if _resolves(name):
            return (
                f"holds objects that a safe load refuses (they need {name}): it was not "
                f"written by this version of the trainer (format {FORMAT_VERSION})"
            )
        return (
            f"is a PyTorch file that is truncated or corrupted, or written by another program "
            f"(it refers to {name}, which does not exist here)"
        )
    detail = _torch_detail(text) or _EMPTY_ERRORS.get(type(error), type(error).__name__)
    return f"is a PyTorch file that is truncated or corrupted ({detail})"


def _torch_detail(text: str) -> str:
    """Torch's error text without its advice (which may suggest ``weights_only=False``)."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    kept: list[str] = []
    for sentence in re.split(r"\n+|(?<=[.!?])\s+", text.strip()):
        if any(hint in sentence.lower() for hint in _HINTS):
            break
        kept.append(sentence)
    return one_line(" ".join(kept), limit=200).rstrip(".")


def _resolves(name: str) -> bool:
    """Whether ``name`` (``module.attr``) exists among the modules already imported.

    Nothing is imported: importing a module named by an untrusted file would run its code.
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        target: object = module
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _missing_keys(payload: object) -> str | None:
    """What a loaded payload lacks to be a training checkpoint, or ``None`` if nothing."""
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, not a dict"
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if not missing:
        return None
    if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
        count = f"{len(payload)} tensor" + ("" if len(payload) == 1 else "s")
        return f"it holds a state dict of {count} (a model's weights?)"
    present = ", ".join(repr(key) for key in list(payload)[:5])
    more = ", ..." if len(payload) > 5 else ""
    return f"it lacks {', '.join(map(repr, missing))} (its keys: {present or 'none'}{more})"
