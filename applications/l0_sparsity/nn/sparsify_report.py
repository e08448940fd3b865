"""What one :func:`~l0_sparsity.nn.sparsifying.sparsify` call did: :class:`SparsifyReport`.

The report lists the layers gated, kept dense and left ungated; :func:`listed_names` formats
such name lists for it and for the messages of ``sparsify``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SparsifyReport", "listed_names"]


@dataclass(frozen=True)
class SparsifyReport:
    """What one :func:`~l0_sparsity.sparsify` call did; set as ``model.sparsify_report``, logged.

    Attributes:
        model: Class name of the model.
        gated: Qualified names of the layers replaced by gated copies in this call.
        gated_norms: Names of the ``BatchNorm2d`` layers replaced by
            :class:`~l0_sparsity.nn.batchnorm.GatedBatchNorm2d`.
        skipped: Names of the layers that ``skip`` kept dense.
        not_gateable: ``(name, kind)`` of the layers holding weights that sparsify cannot gate
            and left dense (e.g. ``nn.MultiheadAttention``, ``nn.Conv1d``, ``nn.Embedding``, a
            ``Linear`` with hooks); ``skip`` patterns naming them are not counted here.
        unmatched_patterns: The ``skip`` glob patterns that matched no layer.
        followers: ``(grouped conv, producer conv)``: grouped convolutions (depthwise ones
            included) left ungated because they follow the channel gates of the convolution
            feeding them (a purge drops their groups with that producer's channels;
            :mod:`~l0_sparsity.nn.following`).
    """

    model: str
    gated: tuple[str, ...]
    gated_norms: tuple[str, ...]
    skipped: tuple[str, ...]
    not_gateable: tuple[tuple[str, str], ...]
    unmatched_patterns: tuple[str, ...]
    followers: tuple[tuple[str, str], ...] = ()

    def summary(self) -> str:
        """One line listing what was gated, kept dense and left ungated."""
        parts = [
            f"sparsify({self.model}): gated {len(self.gated)} layer(s) {listed_names(self.gated)}"
        ]
        if self.gated_norms:
            parts.append(f"BatchNorm2d gated after their conv: {listed_names(self.gated_norms)}")
        if self.followers:
            listed = listed_names(tuple(f"{dw} (follows {conv})" for dw, conv in self.followers))
            parts.append(f"grouped convs following their producer's gates: {listed}")
        if self.skipped:
            parts.append(f"kept dense by skip: {listed_names(self.skipped)}")
        if self.not_gateable:
            listed = listed_names(tuple(f"{name} ({kind})" for name, kind in self.not_gateable))
            parts.append(f"left dense, cannot gate: {listed}")
        if self.unmatched_patterns:
            parts.append(f"skip patterns matching nothing: {list(self.unmatched_patterns)}")
        return "; ".join(parts)


def listed_names(names: tuple[str, ...], limit: int = 8) -> str:
    """Layer names as ``[a, b, ...]`` for a message, the root module shown as ``<root>``.

    Args:
        names: Qualified layer names (``""`` is the root module).
        limit: How many to show; the rest are counted.

    Returns:
        The bracketed list, e.g. ``[conv1, layer1.0.conv1, ... (3 more)]``.
    """
    shown = ", ".join(name or "<root>" for name in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"
