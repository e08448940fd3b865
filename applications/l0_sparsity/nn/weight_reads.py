"""Refusing a layer to gate whose parameters the forward reads outside the layer's call.

A gated copy applies its gates inside its own ``forward``. A model that reads the layer's
parameters directly (``F.conv2d(x, self.conv.weight, self.conv.bias)`` in a parent's
``forward``, ``self.fc.weight.t()``) bypasses them: training would push the gates down while
that read stays dense, and a purge would keep every parameter. torch.fx shows such a read as a
``get_attr`` node; :func:`refuse_weight_reads` turns it into an error before anything is gated.
"""

from __future__ import annotations

from torch import fx, nn

__all__ = ["refuse_weight_reads"]


def _owner(target: str, layers: dict[str, nn.Module]) -> str | None:
    """The longest prefix of ``target`` naming one of ``layers``, if any."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return prefix
    return None


def refuse_weight_reads(model: str, graph: fx.Graph | None, layers: dict[str, nn.Module]) -> None:
    """Raise if the traced forward reads a parameter of one of ``layers`` outside its call.

    Args:
        model: Class name of the model, for the message.
        graph: The traced model (``None`` when it does not trace: nothing can be checked).
        layers: The layers being gated or already gated, by qualified name.

    Raises:
        ValueError: Naming the layer and the read.
    """
    if graph is None:
        return
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        owner = _owner(str(node.target), layers)
        if owner is None:
            continue
        raise ValueError(
            f"sparsify({model}): the forward reads {node.target!r} outside the call of layer "
            f"{owner!r} (e.g. F.conv2d(x, self.{owner}.weight) or self.{owner}.weight.t()); its "
            "gates act only when the layer itself is called, so that read would stay dense while "
            "the gates report it sparse. Call the layer as a module, or keep it dense with "
            f"skip=[{owner!r}]"
        )
