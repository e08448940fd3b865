"""The BatchNorm that applies the gates of the structured convolution before it.

A structured :class:`~l0_sparsity.nn.conv.L0Conv2d` that feeds a BatchNorm would lose its
gates in training, since batch normalization undoes any per-channel scale and turns a zeroed
channel into its bias. Such a pair is therefore gated *after* the normalization:
:class:`GatedBatchNorm2d` computes ``z · BN(conv(x))`` by scaling its affine parameters,
``BN_{γz, βz}``, and the convolution runs ungated (``conv.gate_in_norm`` is set). The pair then
outputs exactly 0 on dead channels, both in training (``z = 0``) and in eval mode (median gate
0), which is what makes purging exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l0_sparsity.nn.conv import L0Conv2d

__all__ = ["GatedBatchNorm2d"]


class GatedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that multiplies its output by the output-filter gates of the preceding conv.

    Computes ``z ⊙ BN(x) = BN_{γ·z, β·z}(x)``: the gates scale the affine parameters, so the
    gating costs no extra pass over the activations. ``z`` is a fresh sample in training and
    the median gate in eval mode, so dead channels output exactly 0. Running statistics are
    those of the ungated convolution output, hence consistent between training and eval.

    Each gate applies to ``num_features / num_gates`` consecutive channels
    (:attr:`channels_per_gate`): one for the norm right after a conv with one gate per filter,
    more after a conv whose gates govern blocks of filters, or after a grouped convolution that
    follows the gates of the conv feeding it (:mod:`~l0_sparsity.nn.following`).

    The gate layer is referenced, not registered as a submodule, so it appears once in
    ``named_modules()`` and ``state_dict()`` (under its own name).

    Args:
        num_features: Number of channels.
        gate_layer: Structured :class:`L0Conv2d` whose gates this norm applies; its
            ``gate_in_norm`` flag is set.
        eps: Added to the variance for numerical stability.
        momentum: Running-statistics momentum (``None`` for a cumulative average).
        affine: Whether the norm has learnable ``weight`` and ``bias``.
        track_running_stats: Whether running statistics are tracked.
        device: Device of the parameters and buffers.
        dtype: Dtype of the parameters and buffers.
    """

    def __init__(
        self,
        num_features: int,
        gate_layer: L0Conv2d,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.attach(gate_layer)

    def attach(self, gate_layer: L0Conv2d) -> None:
        """Make this norm apply the gates of ``gate_layer`` (and that conv run ungated).

        Args:
            gate_layer: A structured :class:`L0Conv2d` whose number of gates divides
                ``num_features``.

        Raises:
            ValueError: If the conv is unstructured or its gates do not divide the channels.
        """
        if not (isinstance(gate_layer, L0Conv2d) and gate_layer.structured):
            raise ValueError("GatedBatchNorm2d needs a structured L0Conv2d")
        if self.num_features % gate_layer.num_gates:
            raise ValueError(
                f"conv has {gate_layer.num_gates} gates ({gate_layer.out_channels} filters), "
                f"which do not divide the norm's {self.num_features} channels"
            )
        object.__setattr__(self, "_gate_layer", gate_layer)
        gate_layer.gate_in_norm = True

    @property
    def channels_per_gate(self) -> int:
        """Consecutive channels each of the conv's gates applies to."""
        return self.num_features // self.gate_layer.num_gates

    def channel_gates(self, gates: Tensor) -> Tensor:
        """The conv's gates repeated to one per channel of this norm.

        Args:
            gates: Gate values shaped like the conv's ``log_alpha``.

        Returns:
            One value per channel.
        """
        k = self.channels_per_gate
        return gates if k == 1 else gates.repeat_interleave(k)

    @property
    def gate_layer(self) -> L0Conv2d:
        """The convolution whose gates this norm applies."""
        return self.__dict__["_gate_layer"]

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, gate_layer: L0Conv2d) -> GatedBatchNorm2d:
        """Gated copy of ``bn`` (parameters, running statistics and mode are copied).

        Args:
            bn: The norm to copy.
            gate_layer: The structured conv whose gates the new norm applies.

        Returns:
            A new :class:`GatedBatchNorm2d`.
        """
        ref = bn.weight if bn.weight is not None else bn.running_mean
        new = cls(
            bn.num_features,
            gate_layer,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        """Batch-normalize ``x`` and multiply each channel by its gate."""
        self._check_input_dim(x)
        z = self.channel_gates(self.gate_layer.gates())
        weight = z if self.weight is None else self.weight * z.to(self.weight.dtype)
        bias = None if self.bias is None else self.bias * z.to(self.bias.dtype)
        factor = 0.0
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            weight,
            bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    @torch.no_grad()
    def dense_module(self) -> nn.BatchNorm2d:
        """Plain BatchNorm2d with the test-time gates folded into ``weight`` and ``bias``."""
        z = self.channel_gates(self.gate_layer.test_gates())
        ref = self.running_mean if self.running_mean is not None else z
        out = nn.BatchNorm2d(
            self.num_features,
            self.eps,
            self.momentum,
            True,
            self.track_running_stats,
            device=ref.device,
            dtype=ref.dtype,
        )
        out.weight.copy_(z if self.weight is None else self.weight * z)
        out.bias.copy_(torch.zeros_like(z) if self.bias is None else self.bias * z)
        if self.running_mean is not None and self.running_var is not None:
            out.running_mean.copy_(self.running_mean)
            out.running_var.copy_(self.running_var)
            if self.num_batches_tracked is not None and out.num_batches_tracked is not None:
                out.num_batches_tracked.copy_(self.num_batches_tracked)
        return out.train(self.training)

    def extra_repr(self) -> str:
        """BatchNorm summary plus the gating note."""
        return super().extra_repr() + ", gated"
