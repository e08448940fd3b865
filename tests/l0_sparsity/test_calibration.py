"""recalibrate_batchnorm: BatchNorm statistics under the test-time gates; the trainer's option."""

import pytest
import torch
from torch import nn

from l0_sparsity.nn import GatedBatchNorm2d, sparsify
from l0_sparsity.training import trainer as l0_train
from l0_sparsity.training.calibration import recalibrate_batchnorm
from l0_sparsity.training.presets import get_preset


def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = sparsify(
        nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 4)
        )
    )
    assert isinstance(model[1], GatedBatchNorm2d)
    with torch.no_grad():
        model[0].log_alpha.copy_(torch.tensor([5.0, -5.0, 0.5, 5.0, -0.5, 1.0]))
    return model


def _batches(count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(5, 3, 8, 8, generator=generator) * 2 + 1 for _ in range(count)]


def test_statistics_are_the_average_over_the_batches_under_test_time_gates():
    model = _conv_bn_net().train()
    model(torch.randn(5, 3, 8, 8))  # running statistics gathered under sampled gates
    batches = _batches()
    assert recalibrate_batchnorm(model, batches) == 3
    conv, norm = model[0], model[1]
    with torch.no_grad():
        features = [conv(x) for x in batches]  # ungated conv: the norm applies the gates
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean)
    torch.testing.assert_close(norm.running_var, expected_var)
    assert int(norm.num_batches_tracked) == 3


def test_modes_and_momentum_are_restored():
    model = _conv_bn_net().train()
    model[1].momentum = 0.3
    recalibrate_batchnorm(model, _batches(1))
    assert model.training and all(m.training for m in model.modules())
    assert model[1].momentum == 0.3
    model.eval()
    recalibrate_batchnorm(model, _batches(1))
    assert not any(m.training for m in model.modules())


def test_no_batches_or_a_failing_batch_keep_the_previous_statistics():
    model = _conv_bn_net().train()
    model(torch.randn(5, 3, 8, 8))
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    assert recalibrate_batchnorm(model, []) == 0
    for key, value in model[1].state_dict().items():
        torch.testing.assert_close(value, before[key])
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [_batches(1)[0], torch.randn(5, 2, 8, 8)])
    for key, value in model[1].state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert model.training and model[1].momentum == 0.1


def test_models_without_batchnorm_are_left_alone():
    model = sparsify(nn.Sequential(nn.Linear(4, 2)))
    assert recalibrate_batchnorm(model, [torch.randn(3, 4)]) == 0


def test_trainer_recalibrates_before_each_evaluation(tmp_path, monkeypatch):
    calls = []

    def recording(model, batches, **kwargs):
        batches = list(batches)
        calls.append(len(batches))
        return recalibrate_batchnorm(model, batches, **kwargs)

    monkeypatch.setattr(l0_train, "recalibrate_batchnorm", recording)
    config = get_preset("synthetic_smoke").replace(
        threads=1, num_workers=0, bn_recalibration=3, output_dir=str(tmp_path)
    )
    result = l0_train.train(config)
    assert calls == [3] * config.epochs and len(result.history) == config.epochs
    with pytest.raises(ValueError, match="bn_recalibration must be >= 0"):
        config.replace(bn_recalibration=-1).validate()
