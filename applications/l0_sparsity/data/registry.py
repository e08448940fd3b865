"""Dataset registry: ``build_datasets(name, root, **options) -> (train, test, info)``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .base import DatasetInfo
from .cifar import build_cifar10, build_cifar100
from .folders import build_imagenet, build_tinyimagenet
from .mnist import build_fashion_mnist, build_mnist5k
from .synthetic import build_synthetic

__all__ = ["DATASETS", "DEFAULT_DATASET", "build_datasets", "dataset_options"]

Builder = Callable[..., tuple[Any, Any, DatasetInfo]]

DATASETS: Mapping[str, Builder] = MappingProxyType(
    {
        "mnist5k": build_mnist5k,
        "fashion_mnist": build_fashion_mnist,
        "cifar10": build_cifar10,
        "cifar100": build_cifar100,
        "tinyimagenet": build_tinyimagenet,
        "imagenet": build_imagenet,
        "synthetic": build_synthetic,
    }
)
"""Read-only mapping from dataset name to its builder ``f(root, **options)``."""

DEFAULT_DATASET = "mnist5k"
"""The dataset used when none is named (available offline, fast on CPU)."""


def build_datasets(
    name: str, root: str | os.PathLike[str] | None = None, **options: Any
) -> tuple[Any, Any, DatasetInfo]:
    """Build the train and test splits of a named dataset.

    Args:
        name: One of :data:`DATASETS` (``"mnist5k"``, ``"fashion_mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"tinyimagenet"``, ``"imagenet"``, ``"synthetic"``).
        root: Where the files are; ``None`` uses the builder's default location.
        **options: Keyword options of that builder (e.g. ``subset=1000``).

    Returns:
        ``(train, test, info)``: two datasets (:class:`TensorImageDataset` for in-memory
        sources, :class:`ImageFileDataset` for image folders) and their :class:`DatasetInfo`.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names).
        TypeError: If an option is not accepted by that builder (the message lists them).
        DatasetNotFoundError: If the files are missing or malformed.
    """
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"dataset {name!r} does not accept {', '.join(unknown)}; "
            f"its options are: {', '.join(accepted)}"
        )
    return DATASETS[name](root, **options)


def dataset_options(name: str) -> list[str]:
    """The keyword options that the builder of dataset ``name`` accepts.

    Args:
        name: One of :data:`DATASETS`.

    Returns:
        The option names, in the builder's order (e.g. ``subset``, ``test_subset``, ...).

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names).

    Example:
        >>> from l0_sparsity.data import dataset_options
        >>> "subset" in dataset_options("mnist5k")
        True
    """
    try:
        builder = DATASETS[name]
    except KeyError:
        valid = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; valid names: {valid}") from None
    return [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
