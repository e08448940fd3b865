"""ONNX and torch.export files of purged torchvision models load and match without l0_sparsity."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

from l0_sparsity.models import build_model
from l0_sparsity.nn import gated_layers
from l0_sparsity.purging import export, export_onnx, exporting, measure_latency

torch.set_num_threads(1)

# Runs first in the child: l0_sparsity and conopt cannot be imported there (the editable
# install puts them on every path, so a meta-path finder refuses them).
BLOCKER = textwrap.dedent(
    """
    import sys

    class RefuseOurPackages:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("l0_sparsity", "conopt"):
                raise ModuleNotFoundError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, RefuseOurPackages())
    sys.path[:] = [p for p in sys.path if p.rstrip("/") not in (REPO, REPO + "/applications")]
    try:
        import l0_sparsity  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("l0_sparsity is importable in the child")
    """
)


@torch.no_grad()
def half_gated_resnet18() -> tuple[nn.Module, torch.Tensor]:
    """A gated ResNet-18 with about half of each layer's gates off and BatchNorms calibrated."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5)
    generator = torch.Generator().manual_seed(1)
    for _, layer in gated_layers(model):
        alive = torch.rand(layer.log_alpha.shape, generator=generator) < 0.5
        layer.log_alpha.copy_(torch.where(alive, torch.tensor(3.0), torch.tensor(-3.0)))
    images = torch.randn(8, 3, 32, 32, generator=generator)
    model.train()
    model(images)  # BatchNorm statistics of these inputs: the outputs keep a sane scale
    return model.eval(), images[:4]


def test_onnx_file_matches_the_gated_models_eval_output(tmp_path: Path):
    model, images = half_gated_resnet18()
    path = export_onnx(model, tmp_path / "small.onnx", images)
    with torch.no_grad():
        expected = model(images)
    produced = exporting.onnx_session(path).run(None, {"input": images.numpy()})[0]
    assert expected.abs().max() > 1e-2  # a scale that makes the comparison meaningful
    assert exporting.relative_error(torch.from_numpy(produced), expected) <= exporting.ONNX_RTOL


def test_both_exports_load_and_match_where_l0_sparsity_cannot_be_imported(tmp_path: Path):
    model, images = half_gated_resnet18()
    export_onnx(model, tmp_path / "small.onnx", images)
    export(model, tmp_path / "small.pt2", images)
    np.save(tmp_path / "images.npy", images.numpy())
    repo = repr(str(Path(__file__).resolve().parents[2]))
    child = BLOCKER.replace("REPO", repo) + textwrap.dedent(
        """
        import numpy as np
        import onnxruntime
        import torch

        images = np.load("images.npy")
        session = onnxruntime.InferenceSession("small.onnx", providers=["CPUExecutionProvider"])
        np.save("onnx_out.npy", session.run(None, {"input": images})[0])
        program = torch.export.load("small.pt2")
        with torch.no_grad():
            np.save("pt2_out.npy", program.module()(torch.from_numpy(images)).numpy())
        assert not any(m.partition(".")[0] == "l0_sparsity" for m in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", child],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = model(images)
    for name in ("onnx_out.npy", "pt2_out.npy"):
        produced = torch.from_numpy(np.load(tmp_path / name))
        assert exporting.relative_error(produced, expected) <= exporting.ONNX_RTOL, name


def test_export_onnx_refuses_a_file_whose_output_differs(tmp_path: Path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 3)).eval()

    class WrongSession:
        def run(self, names: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((feed["input"].shape[0], 3), dtype=np.float32)]

    monkeypatch.setattr(exporting, "onnx_session", lambda path, threads=None: WrongSession())
    with pytest.raises(ValueError, match=r"export_onnx: .*wrong\.onnx.*expected <= 0.0001"):
        export_onnx(model, tmp_path / "wrong.onnx", torch.ones(2, 4))


def test_onnx_file_accepts_another_batch_size(tmp_path: Path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    path = export_onnx(model.eval(), tmp_path / "dense.onnx", torch.randn(2, 3, 8, 8))
    out = exporting.onnx_session(path).run(None, {"input": np.ones((5, 3, 8, 8), np.float32)})
    assert out[0].shape == (5, 2)


def test_measure_latency_reports_both_runtimes_in_milliseconds(tmp_path: Path):
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
    example = torch.randn(4, 16)
    path = export_onnx(model, tmp_path / "mlp.onnx", example)
    latency = measure_latency(model, path, example, repeats=3, warmup=1)
    assert 0.0 < latency.pytorch_ms < 1e3 and 0.0 < latency.onnxruntime_ms < 1e3


def test_relative_error_is_measured_on_the_reference_scale():
    reference = torch.tensor([1e-20, 2.0])
    assert exporting.relative_error(torch.tensor([0.0, 2.0]), reference) == pytest.approx(5e-21)
    assert exporting.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        exporting.relative_error(torch.zeros(2), torch.zeros(3))
