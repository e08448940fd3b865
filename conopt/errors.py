"""The exceptions of conopt's own conditions (beside the usual ``TypeError`` and ``ValueError``)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(ValueError):
    """A loss or constraint value, or a dual update, is NaN or infinite; the step was refused.

    Nothing has been changed then: parameters, multipliers and optimizer states are as before.
    """
