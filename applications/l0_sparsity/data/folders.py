"""Image-folder datasets decoded lazily by torchvision: TinyImageNet and ImageNet.

The folders are scanned by ``torchvision.datasets`` (``find_classes`` and ``make_dataset``, the
scan behind ``ImageFolder``), images are decoded by its ``default_loader`` and transformed by
``torchvision.transforms.v2`` pipelines (:mod:`l0_sparsity.data.transforms`). torchvision (the
``vision`` extra) is imported when a dataset is built; without it the error names the extra.
TinyImageNet's labelled ``val`` split is not an ImageFolder tree (one flat folder and an
annotation file), so its labels are read here, and checked.

Layouts:

* TinyImageNet (``tiny-imagenet-200``): ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG``
  and ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>bbox…``); the labelled ``val`` split is
  the test set. Classes are the sorted wnids.
* ImageNet (ImageFolder layout): ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``; classes
  are the sorted ``train`` sub-folders.

A sample can be fetched as ``dataset[i]`` (global RNG for the augmentation) or as
``dataset[(i, seed)]``, which seeds the augmentation from ``seed``: the samplers of
:mod:`l0_sparsity.data.loaders` pass such pairs so augmentations do not depend on the number of
workers and repeat exactly when a run is resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from l0_sparsity._vision_extra import import_torchvision

from .base import (
    DEFAULT_DATA_ROOT,
    DatasetFormatError,
    DatasetInfo,
    apply_subsets,
    missing_files_error,
)
from .transforms import ImageEvalTransform, ImageTrainTransform

__all__ = [
    "IMAGENET_STATS",
    "ImageFileDataset",
    "build_imagenet",
    "build_tinyimagenet",
]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""ImageNet per-channel mean/std, also used for TinyImageNet (a subset of ImageNet)."""
ImageTransform = Callable[[Any, "torch.Generator | None"], Tensor]
ImageLoader = Callable[[str], Any]
Split = tuple["ImageFileDataset", "ImageFileDataset", DatasetInfo]


class ImageFileDataset(Dataset):
    """Images on disk, decoded on access, with their labels.

    Args:
        samples: ``(path, label)`` pairs.
        classes: Class names; ``classes[label]`` names a label.
        transform: Maps a decoded image (and an optional generator) to a tensor.
        loader: Decodes a file into an RGB image (torchvision's ``default_loader``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        classes: Sequence[str],
        transform: ImageTransform,
        loader: ImageLoader,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    @property
    def targets(self) -> Tensor:
        """All labels as an ``int64`` tensor (no image is read)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, int]:
        """Load sample ``key`` (an index, or ``(index, augmentation_seed)``).

        Returns:
            ``(image tensor, label, index)``.

        Raises:
            DatasetFormatError: If the file cannot be read or decoded.
        """
        generator = None
        if isinstance(key, tuple):
            index, seed = key
            generator = torch.Generator()
            generator.manual_seed(seed)
        else:
            index = key
        path, label = self.samples[index]
        try:
            image = self.loader(os.fspath(path))
        except OSError as error:
            raise DatasetFormatError(f"cannot decode image {path}: {error}") from error
        return self.transform(image, generator), label, index

    def subset(self, indices: Tensor) -> ImageFileDataset:
        """A dataset with the given samples only (renumbered from 0).

        Args:
            indices: Indices to keep.

        Returns:
            The smaller dataset, same classes and transform.
        """
        return ImageFileDataset(
            [self.samples[i] for i in indices.tolist()], self.classes, self.transform, self.loader
        )


def _scan(
    dataset: str, directory: Path, label_of: dict[str, int], folder: Any
) -> list[tuple[str, int]]:
    """The images under ``directory/<class>/`` (recursively), by torchvision's folder scan."""
    try:
        return folder.make_dataset(directory, label_of, extensions=folder.IMG_EXTENSIONS)
    except FileNotFoundError as error:  # a class folder without a single image
        raise DatasetFormatError(f"{dataset}: {directory}: {error}") from error


def _classes(dataset: str, directory: Path, folder: Any, hint: str = "") -> list[str]:
    """The sorted class folders of ``directory`` (torchvision's ``find_classes``)."""
    try:
        classes, _ = folder.find_classes(directory)
    except FileNotFoundError as error:
        raise DatasetFormatError(f"{dataset}: no class folders in {directory}{hint}") from error
    return classes


def _resolve(root: str | os.PathLike[str] | None, folder: str) -> tuple[Path, Path]:
    """``(base, dataset_dir)``: ``root`` may be the dataset folder itself or its parent."""
    base = Path(root) if root is not None else DEFAULT_DATA_ROOT
    return base, (base if base.name == folder else base / folder)


def _transforms(
    augment: bool, crop_size: int, resize_size: int
) -> tuple[ImageTransform, ImageTransform]:
    evaluation = ImageEvalTransform(crop_size, resize_size, *IMAGENET_STATS)
    training = ImageTrainTransform(crop_size, *IMAGENET_STATS) if augment else evaluation
    return training, evaluation


def build_tinyimagenet(
    root: str | os.PathLike[str] | None = None,
    *,
    crop_size: int = 64,
    resize_size: int | None = None,
    augment: bool = True,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
) -> Split:
    """TinyImageNet (200 classes, 100k train / 10k val at 64×64), decoded lazily.

    Training: random resized crop to ``crop_size`` + flip; evaluation: resize the shorter side
    to ``resize_size`` (default ``crop_size``, i.e. no resizing of 64×64 images) + center crop.

    Args:
        root: ``tiny-imagenet-200`` itself or its parent (default ``./data``).
        crop_size: Output side.
        resize_size: Shorter side before the evaluation center crop.
        augment: Use the random training pipeline (else the evaluation one) for ``train``.
        subset: Keep only this many training images (stratified).
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``; ``test`` is the labelled ``val`` split.

    Raises:
        DatasetNotFoundError: If files are missing; :class:`DatasetFormatError` if malformed.
    """
    base, directory = _resolve(root, "tiny-imagenet-200")
    annotations = directory / "val" / "val_annotations.txt"
    expected = [directory / "train", directory / "val" / "images", annotations]
    if not (expected[0].is_dir() and expected[1].is_dir() and annotations.is_file()):
        raise missing_files_error(
            "tinyimagenet",
            [expected[0] / "<wnid>/images/*.JPEG", expected[1] / "*.JPEG", annotations],
            "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
            f"{base}, which then holds tiny-imagenet-200/",
        )
    folder = import_torchvision("dataset 'tinyimagenet'", "torchvision.datasets.folder")
    classes = _classes("tinyimagenet", directory / "train", folder)
    label_of = {wnid: label for label, wnid in enumerate(classes)}
    train_samples = _scan("tinyimagenet", directory / "train", label_of, folder)
    present = set(os.listdir(directory / "val" / "images"))
    test_samples: list[tuple[str | Path, int]] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of or fields[0] not in present:
            raise DatasetFormatError(
                f"tinyimagenet: {annotations}:{number}: expected 'file<TAB>wnid' with an image "
                f"in val/images and a wnid among train/, got {line!r}"
            )
        test_samples.append((directory / "val" / "images" / fields[0], label_of[fields[1]]))
    training, evaluation = _transforms(augment, crop_size, resize_size or crop_size)
    info = DatasetInfo("tinyimagenet", len(classes), 3, crop_size, *IMAGENET_STATS)
    train, test = apply_subsets(
        ImageFileDataset(train_samples, classes, training, folder.default_loader),
        ImageFileDataset(test_samples, classes, evaluation, folder.default_loader),
        subset,
        test_subset,
        subset_seed,
    )
    return train, test, info


def build_imagenet(
    root: str | os.PathLike[str] | None = None,
    *,
    crop_size: int = 224,
    resize_size: int = 256,
    augment: bool = True,
    subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
) -> Split:
    """ImageNet (or any ImageFolder tree with ``train/`` and ``val/``), decoded lazily.

    Training: random resized crop to ``crop_size`` (area 8–100 %, ratio 3/4–4/3) + flip;
    evaluation: resize the shorter side to ``resize_size`` + center crop ``crop_size``.

    Args:
        root: Directory holding ``train/`` and ``val/`` (default ``./data/imagenet``).
        crop_size: Output side.
        resize_size: Shorter side before the evaluation center crop.
        augment: Use the random training pipeline (else the evaluation one) for ``train``.
        subset: Keep only this many training images (stratified).
        test_subset: Keep only this many test images (stratified).
        subset_seed: Seed of the subsets.

    Returns:
        ``(train, test, info)``; ``test`` is the ``val`` split.

    Raises:
        DatasetNotFoundError: If folders are missing; :class:`DatasetFormatError` if malformed.
    """
    directory = Path(root) if root is not None else DEFAULT_DATA_ROOT / "imagenet"
    train_dir, val_dir = directory / "train", directory / "val"
    if not (train_dir.is_dir() and val_dir.is_dir()):
        raise missing_files_error(
            "imagenet",
            [train_dir / "<class>/*.JPEG", val_dir / "<class>/*.JPEG"],
            "download ILSVRC2012 from https://image-net.org, extract train and val into "
            f"{directory}, and sort val images into one folder per class (val/<wnid>/)",
        )
    folder = import_torchvision("dataset 'imagenet'", "torchvision.datasets.folder")
    classes = _classes("imagenet", train_dir, folder)
    val_classes = _classes(
        "imagenet", val_dir, folder, "; a flat val/ must be sorted into val/<wnid>/ folders first"
    )
    if not set(val_classes) <= set(classes):
        raise DatasetFormatError(
            f"imagenet: the class folders of {val_dir} must be a subset of those of {train_dir}; "
            f"not in train/: {', '.join(sorted(set(val_classes) - set(classes))[:5])}"
        )
    label_of = {name: label for label, name in enumerate(classes)}
    val_labels = {name: label_of[name] for name in val_classes}
    train_samples = _scan("imagenet", train_dir, label_of, folder)
    test_samples = _scan("imagenet", val_dir, val_labels, folder)
    training, evaluation = _transforms(augment, crop_size, resize_size)
    info = DatasetInfo("imagenet", len(classes), 3, crop_size, *IMAGENET_STATS)
    train, test = apply_subsets(
        ImageFileDataset(train_samples, classes, training, folder.default_loader),
        ImageFileDataset(test_samples, classes, evaluation, folder.default_loader),
        subset,
        test_subset,
        subset_seed,
    )
    return train, test, info
