"""GateSet (joint sampling and joint expected density) and the sample_jointly forward hooks."""

import copy
import pickle

import pytest
import torch
from torch import nn

from l0_sparsity.models import build_model
from l0_sparsity.nn import L0Conv2d, L0Linear, gated_layers, sparsify
from l0_sparsity.nn.gate_set import GateSet, JointSampling, sample_jointly
from l0_sparsity.nn.gates import HardConcrete
from l0_sparsity.purging import purge


def _mixed_layers() -> list[nn.Module]:
    """Layers of three kinds and two distributions (so two joint groups)."""
    torch.manual_seed(0)
    return [
        L0Linear(6, 4),
        L0Conv2d(3, 5, 3),
        L0Linear(4, 3, structured=False, distribution=HardConcrete(beta=0.5)),
        L0Linear(3, 2, distribution=HardConcrete(beta=0.5)),
    ]


class _CountingDistribution(HardConcrete):
    """HardConcrete that counts its sample calls (class attribute, shared by instances)."""

    calls = 0

    def sample(self, log_alpha, generator=None):
        type(self).calls += 1
        return super().sample(log_alpha, generator)


def test_gate_set_needs_layers():
    with pytest.raises(ValueError, match="at least one gated layer"):
        GateSet([])


def test_expected_active_params_equal_the_per_layer_values_and_gradients():
    layers = _mixed_layers()
    joint = GateSet(layers).expected_active_params()
    per_layer = torch.stack([layer.expected_active_params() for layer in layers])
    torch.testing.assert_close(joint, per_layer)
    weights = torch.arange(1.0, len(layers) + 1)
    (grads_joint,) = [torch.autograd.grad((joint * weights).sum(), [m.log_alpha for m in layers])]
    grads_layer = torch.autograd.grad((per_layer * weights).sum(), [m.log_alpha for m in layers])
    for a, b in zip(grads_joint, grads_layer, strict=True):
        torch.testing.assert_close(a, b)


def test_joint_samples_have_the_layers_shapes_and_reach_every_gate():
    layers = _mixed_layers()
    gates = GateSet(layers).sample(torch.Generator().manual_seed(0))
    assert [z.shape for z in gates] == [m.log_alpha.shape for m in layers]
    assert all(((z >= 0) & (z <= 1)).all() for z in gates)
    sum(z.sum() for z in gates).backward()
    assert all(m.log_alpha.grad is not None for m in layers)


def test_joint_samples_follow_each_layers_distribution():
    """The Monte Carlo mean of the joint draws matches each layer's closed-form E[z]."""
    layers = _mixed_layers()
    with torch.no_grad():
        for layer in layers:
            layer.log_alpha.uniform_(-2.0, 2.0)
    gates = GateSet(layers)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        draws = [gates.sample(generator) for _ in range(4000)]
    for i, layer in enumerate(layers):
        mean = torch.stack([d[i] for d in draws]).mean(0)
        expected = layer.distribution.mean(layer.log_alpha.detach())
        torch.testing.assert_close(mean, expected, atol=0.03, rtol=0)


def test_models_draw_all_gates_in_one_sample_per_forward():
    model = build_model("mlp").train()
    for _, layer in gated_layers(model):
        layer.distribution = _CountingDistribution()
    _CountingDistribution.calls = 0
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert _CountingDistribution.calls == 1
    assert all(layer.log_alpha.grad.abs().sum() > 0 for _, layer in gated_layers(model))
    model.joint_sampling.remove()
    _CountingDistribution.calls = 0
    model(torch.randn(2, 1, 28, 28))
    assert _CountingDistribution.calls == 3


def test_eval_passes_use_median_gates():
    model = build_model("mlp").eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x))
    assert all("_offered_gates" not in m.__dict__ for _, m in gated_layers(model))


def test_unused_offers_are_withdrawn_after_the_pass_and_after_an_exception():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            if x.shape[0] == 0:
                raise RuntimeError("empty batch")
            return self.used(x)

    model = sparsify(Skips())
    model(torch.randn(3, 4))
    assert "_offered_gates" not in model.unused.__dict__
    with pytest.raises(RuntimeError, match="empty batch"):
        model(torch.randn(0, 4))
    assert all("_offered_gates" not in m.__dict__ for _, m in gated_layers(model))


def test_a_layer_called_twice_gets_a_fresh_sample_the_second_time():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    model = sparsify(Twice())
    model.fc.distribution = _CountingDistribution()
    _CountingDistribution.calls = 0
    model(torch.randn(2, 4))
    assert _CountingDistribution.calls == 2  # the joint draw, then the second call's own


def test_sample_jointly_replaces_previous_hooks_and_rejects_dense_models():
    model = build_model("mlp")
    first = model.joint_sampling
    second = sample_jointly(model)
    assert model.joint_sampling is second and first is not second
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1
    with pytest.raises(ValueError, match="no gated layers"):
        sample_jointly(nn.Sequential(nn.Linear(2, 2)))


def test_sparsify_can_leave_joint_sampling_off():
    model = sparsify(nn.Sequential(nn.Linear(3, 3)), joint_sampling=False)
    assert not hasattr(model, "joint_sampling") and not model._forward_pre_hooks


def test_models_with_joint_sampling_copy_and_pickle():
    model = build_model("mlp")
    clone = copy.deepcopy(model)
    assert isinstance(clone.joint_sampling, JointSampling)
    assert clone.joint_sampling.gates.layers[0] is clone.layers[0]
    restored = pickle.loads(pickle.dumps(model))
    restored(torch.randn(2, 1, 28, 28)).sum().backward()
    assert restored.layers[0].log_alpha.grad is not None


def test_purged_models_carry_no_sampling_hooks():
    """(test_purge.py checks that a saved purged model reloads without this package.)"""
    purged = purge(build_model("mlp"))
    assert not purged._forward_pre_hooks and not purged._forward_hooks
    assert not hasattr(purged, "joint_sampling")
