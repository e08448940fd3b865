"""load_checkpoint says what a non-checkpoint file is, and never invites an unsafe load."""

from __future__ import annotations

import io
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from l0_sparsity.training.checkpoint import (
    FORMAT_VERSION,
    REQUIRED_KEYS,
    CheckpointError,
    load_checkpoint,
    save_atomic,
)

LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _payload() -> dict[str, object]:
    return {
        "format_version": FORMAT_VERSION,
        "config": {"model": "mlp"},
        "epoch": 3,
        "model": {"w": torch.arange(4.0)},
        "problem": {},
        "optimizer": {},
    }


def _refusal(path: Path) -> str:
    """The message of the CheckpointError that ``load_checkpoint(path)`` raises, checked."""
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    lowered = message.lower()
    assert "weights_only" not in lowered and "weights only" not in lowered, message
    assert "will likely succeed" not in lowered and "trust" not in lowered, message
    return message


def _torch_bytes(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "checkpoint.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _replace_member(data: bytes, suffix: str, content: bytes) -> bytes:
    """The zip archive ``data`` with the member ending in ``suffix`` replaced by ``content``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = content if info.filename.endswith(suffix) else source.read(info)
            target.writestr(info, body)
    return out.getvalue()


# --------------------------------------------------------------------------- a valid file


def test_a_valid_checkpoint_loads(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic(_payload(), path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))


# --------------------------------------------------------------------------- not a torch file


def test_a_text_file_is_not_a_pytorch_file_and_no_unsafe_load_is_suggested(tmp_path):
    path = _write(tmp_path, b"not a checkpoint")
    message = _refusal(path)
    assert "not a PyTorch file" in message and "b'not a checkpoint'" in message
    assert "safe load refuses" not in message  # the old misdiagnosis


def test_an_empty_file_is_called_empty(tmp_path):
    message = _refusal(_write(tmp_path, b""))
    assert "empty file (0 bytes)" in message


def test_a_plain_pickle_is_not_a_pytorch_file(tmp_path):
    message = _refusal(_write(tmp_path, pickle.dumps({"epoch": 1}, protocol=4)))
    assert "plain Python pickle" in message and "not a PyTorch file" in message


def test_a_zip_archive_of_other_files_is_not_a_pytorch_file(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    message = _refusal(_write(tmp_path, buffer.getvalue()))
    assert "zip archive but not a PyTorch file" in message


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    assert "not a regular file" in _refusal(tmp_path / "checkpoint.pt")


def test_a_missing_file_is_refused(tmp_path):
    assert "no checkpoint at" in _refusal(tmp_path / "checkpoint.pt")


# --------------------------------------------------------------------------- damaged archives


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.9])
def test_a_truncated_checkpoint_is_called_truncated(tmp_path, fraction):
    save_atomic(_payload(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    message = _refusal(_write(tmp_path, data[: max(2, int(len(data) * fraction))]))
    assert "truncated or corrupted" in message


@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_first_bytes_of_a_checkpoint_are_called_truncated(tmp_path, size):
    save_atomic(_payload(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    assert "truncated or corrupted" in _refusal(_write(tmp_path, data[:size]))


@pytest.mark.parametrize("size", [1, 5, 13, 100, None])
def test_a_truncated_legacy_torch_file_is_called_truncated(tmp_path, size):
    data = _torch_bytes(_payload(), _use_new_zipfile_serialization=False)
    message = _refusal(_write(tmp_path, data[: size or len(data) // 2]))
    assert "is a PyTorch file that is truncated or corrupted" in message


def test_a_checkpoint_with_a_garbled_pickle_is_corrupted(tmp_path):
    data = _replace_member(_torch_bytes(_payload()), "/data.pkl", b"\x80\x02garbage")
    message = _refusal(_write(tmp_path, data))
    assert "is a PyTorch file that is truncated or corrupted" in message


def test_a_checkpoint_with_a_damaged_start_is_a_corrupted_zip(tmp_path):
    data = bytearray(_torch_bytes(_payload()))
    data[:8] = b"\xff" * 8
    assert "corrupted zip archive" in _refusal(_write(tmp_path, bytes(data)))


def test_a_global_that_does_not_exist_is_called_corruption_not_a_foreign_object(tmp_path):
    module = types.ModuleType("l0_vanished_module")

    class Vanished:
        pass

    Vanished.__module__ = module.__name__
    Vanished.__qualname__ = "Vanished"
    module.Vanished = Vanished  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        data = _torch_bytes({**_payload(), "config": Vanished()})
    finally:
        del sys.modules[module.__name__]
    message = _refusal(_write(tmp_path, data))
    assert "l0_vanished_module.Vanished" in message and "does not exist here" in message


# --------------------------------------------------------------------------- other torch files


def test_objects_beyond_plain_values_are_named_without_suggesting_an_unsafe_load(tmp_path):
    data = _torch_bytes({**_payload(), "config": np.zeros(3)})
    message = _refusal(_write(tmp_path, data))
    assert "safe load refuses" in message and "numpy" in message


def test_a_model_state_dict_is_another_kind_of_file(tmp_path):
    message = _refusal(_write(tmp_path, _torch_bytes(nn.Linear(3, 2).state_dict())))
    assert "not an l0_sparsity training checkpoint" in message
    assert "state dict of 2 tensors" in message


def test_a_dict_missing_the_checkpoint_keys_names_them(tmp_path):
    payload = {key: value for key, value in _payload().items() if key not in ("epoch", "model")}
    payload["extra"] = 1
    message = _refusal(_write(tmp_path, _torch_bytes(payload)))
    assert "lacks 'epoch', 'model'" in message and "'extra'" in message


def test_a_bare_tensor_is_another_kind_of_file(tmp_path):
    message = _refusal(_write(tmp_path, _torch_bytes(torch.zeros(3))))
    assert "it holds a Tensor, not a dict" in message


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_torchscript_model_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    assert "TorchScript model" in _refusal(path)


def test_an_exported_program_such_as_a_purged_model_is_named(tmp_path):
    path = tmp_path / "purged.pt2"
    program = torch.export.export(nn.Linear(2, 2), (torch.zeros(1, 2),))
    torch.export.save(program, str(path))
    assert "exported program" in _refusal(path)


def test_another_format_version_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({**_payload(), "format_version": FORMAT_VERSION - 1}, path)
    assert f"format version {FORMAT_VERSION - 1}" in _refusal(path)


def test_required_keys_are_the_ones_the_trainer_writes():
    assert set(REQUIRED_KEYS) <= set(_payload())


# --------------------------------------------------------------------------- any bytes

_PREFIXES = [b"", b"PK\x03\x04", b"PK\x05\x06", LEGACY_MAGIC, b"\x80\x04", b"\x80\x02"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@settings(max_examples=60, deadline=None)
@given(prefix=st.sampled_from(_PREFIXES), rest=st.binary(max_size=256))
def test_any_bytes_give_a_one_line_checkpoint_error(tmp_path_factory, prefix, rest):
    path = tmp_path_factory.mktemp("any") / "checkpoint.pt"
    path.write_bytes(prefix + rest)
    _refusal(path)
