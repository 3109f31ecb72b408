"""Dataset specifics: the digits split, CIFAR-10 (JPEG q75) as a folder, Tiny-ImageNet layout, errors."""
from collections import Counter

import pytest
import torch

from robustbench_aft.data import load_dataset, make_loader
from robustbench_aft.errors import ConfigError, DataNotFoundError, UnknownNameError

from .conftest import write_tiny_imagenet

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _labels(dataset):
    return [int(label) for label in dataset.labels]


def test_digits_split_is_reproducible_stratified_and_seeded():
    first, again, other = load_dataset("digits"), load_dataset("digits"), load_dataset("digits", split_seed=1)
    assert len(first.train) == 1437 and len(first.test) == 360
    assert torch.equal(first.test.images, again.test.images)
    assert not torch.equal(first.test.images, other.test.images)
    train_counts, test_counts = Counter(_labels(first.train)), Counter(_labels(first.test))
    for label in range(10):
        share = test_counts[label] / (train_counts[label] + test_counts[label])
        assert abs(share - 0.2) < 0.01, (label, share)
    assert first.input_shape == (1, 8, 8) and first.default_eps == 0.15


def test_digits_training_augmentation_shifts_by_at_most_one_pixel():
    data = load_dataset("digits")
    torch.manual_seed(0)
    original = data.train.images[0]
    shifted = [data.train[0][0] for _ in range(30)]
    assert any(not torch.equal(s, original) for s in shifted)
    for s in shifted:
        assert any(
            torch.equal(torch.nn.functional.pad(original, (1, 1, 1, 1))[:, dy:dy + 8, dx:dx + 8], s)
            for dy in range(3) for dx in range(3)
        )
    assert torch.equal(data.test[0][0], data.test.images[0])  # no augmentation at test time


def test_loader_order_is_fixed_by_seed_and_batches_carry_indices():
    data = load_dataset("digits")
    orders = [[int(i) for _, _, idx in make_loader(data.test, 50, shuffle=True, seed=s) for i in idx]
              for s in (7, 7, 8)]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(orders[0]) == list(range(len(data.test)))


def test_cifar10_jpeg_folder(cifar10_jpeg_root):
    data = load_dataset(f"folder:{cifar10_jpeg_root}")
    assert data.class_names == CIFAR10_CLASSES
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    x, y, _ = data.test[9_999]
    assert y == 9 and 0 <= x.min() and x.max() <= 1
    assert all(0.3 < m < 0.6 for m in data.mean) and all(0.15 < s < 0.35 for s in data.std)


def test_tinyimagenet_standard_layout(tmp_path):
    write_tiny_imagenet(tmp_path, per_class=2, val_per_class=3)
    data = load_dataset("tinyimagenet", data_dir=str(tmp_path))
    assert data.num_classes == 3 and data.input_shape == (3, 64, 64)
    assert (len(data.train), len(data.test)) == (6, 9)
    # val labels come from val_annotations.txt: image val_<label>_<i> has that label and its colour
    for index in range(len(data.test)):
        x, y, _ = data.test[index]
        assert y == index // 3
        assert abs(float(x[0].mean()) - (80 * y) / 255) < 0.02


def test_missing_data_errors_say_where_they_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="--download"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="tiny-imagenet-200"):
        load_dataset("tinyimagenet", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="train"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("folder")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_dataset("digits:extra")
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar10'"):
        load_dataset("cifar11")
    base = write_tiny_imagenet(tmp_path / "broken")
    (base / "val" / "val_annotations.txt").write_text("val_0_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataNotFoundError, match="val_annotations.txt:1"):
        load_dataset("tinyimagenet", data_dir=str(tmp_path / "broken"))
