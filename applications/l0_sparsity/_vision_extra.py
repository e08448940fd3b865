"""Lazy access to the optional ``torchvision`` dependency (the ``vision`` extra).

``import l0_sparsity`` and the MNIST demo never import torchvision; only the torchvision-backed
models (``resnet18``, ``resnet50``) and image-folder datasets (``tinyimagenet``, ``imagenet``) do,
through :func:`import_torchvision`, at the moment they are built.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_torchvision"]


def import_torchvision(user: str, module: str = "torchvision") -> ModuleType:
    """Import and return ``torchvision`` (or one of its modules), or say which extra installs it.

    Args:
        user: What needs torchvision, for the error message (e.g. ``"model 'resnet18'"``).
        module: The module to import, ``torchvision`` or a submodule such as
            ``torchvision.transforms.v2``.

    Returns:
        That module.

    Raises:
        ImportError: If torchvision is not installed; the message names ``user`` and the
            ``vision`` extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{user} is built with torchvision, which is not installed: install the 'vision' "
            "extra (pip install 'torch-conopt[vision]', or a torchvision matching your torch, "
            "e.g. torch==2.14.1 with torchvision==0.29.1)"
        ) from error
