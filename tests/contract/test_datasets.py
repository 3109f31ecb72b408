"""Every registered dataset that is present: [0, 1] images of the shape it declares, labels, indices.

What is checked comes from the registration and the built DataBundle, never from a dataset's name:
a dataset that declares ``input_shape`` in its ``@DATASETS.register`` line must build exactly that
shape, and every image must have the bundle's shape and a label below its ``num_classes``. A new
dataset is tested by registering it.
"""
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch

from robustbench_aft.data import DataBundle, load_dataset
from robustbench_aft.errors import DataNotFoundError
from robustbench_aft.registry import DATASETS

from ..conftest import write_image_folder, write_tiny_imagenet

Miniature = Callable[[Path], Tuple[str, Optional[str]]]

# The one list of exceptions: datasets that are neither bundled nor present on a test machine but
# whose layout a test can write in milliseconds. Each writes a miniature tree under the given folder
# and returns (spec for load_dataset, data_dir). Every other dataset loads from the default data
# folder, or skips saying it is absent.
MINIATURES: Dict[str, Miniature] = {
    "tinyimagenet": lambda root: (write_tiny_imagenet(root) and "tinyimagenet", str(root)),
    # An image size no other dataset has, so that the shape can only come from the tree.
    "folder": lambda root: (f"folder:{write_image_folder(root / 'images', size=12)}", None),
}


def _load(name: str, tmp_path: Path) -> DataBundle:
    """Load a registered dataset from its miniature or from the data this machine has; skip with the
    reason when it is absent."""
    spec, data_dir = MINIATURES[name](tmp_path) if name in MINIATURES else (name, None)
    try:
        return load_dataset(spec, data_dir=data_dir)
    except DataNotFoundError as exc:
        pytest.skip(f"{name} not present: {exc}")


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, tmp_path):
    data = _load(name, tmp_path)
    declared = DATASETS.entry(name).metadata.get("input_shape")
    if declared is not None:
        assert tuple(data.input_shape) == tuple(declared), f"{name} declares input_shape={declared}"
    assert len(data.input_shape) == 3 and min(data.input_shape) >= 1
    assert data.num_classes == len(data.class_names) >= 2
    assert len(data.mean) == len(data.std) == data.input_shape[0]
    assert 0 < data.default_eps < 1
    for split in (data.train, data.test):
        for index in (0, len(split) - 1):
            x, y, returned_index = split[index]
            assert returned_index == index
            assert tuple(x.shape) == tuple(data.input_shape)
            assert x.dtype == torch.float32
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            assert 0 <= y < data.num_classes


@pytest.mark.parametrize("name", DATASETS.names())
def test_a_cacheable_dataset_caches_its_pixels_exactly_and_declares_its_augmentation(name, tmp_path):
    """Where a bundle declares ``augmentation`` and ``plain_train``: the cache holds the plain images
    bit for bit, and every augmented training image is one the declared recipe can make from it."""
    from robustbench_aft.tensorcache import tensor_cache

    data = _load(name, tmp_path)
    if data.augmentation is None or data.plain_train is None:
        pytest.skip(f"{name} declares no augmentation: it stays on the DataLoader path")
    assert len(data.plain_train) == len(data.train)
    cache = tensor_cache(data, progress=False)
    assert cache is not None, f"{name} is cacheable but its cache was not made"
    shift, flip = data.augmentation.shift, data.augmentation.flip
    height, width = data.input_shape[1:]
    for index in sorted({0, len(data.train) // 2, len(data.train) - 1}):
        plain, label, _ = data.plain_train[index]
        assert torch.equal(cache.split("train")[index][0], plain) and data.train[index][1] == label
        padded = torch.nn.functional.pad(plain, (shift,) * 4)
        crops = [padded[:, dy:dy + height, dx:dx + width] for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)]
        reachable = crops + ([c.flip(-1) for c in crops] if flip else [])
        torch.manual_seed(index)
        augmented = data.train[index][0]
        assert any(torch.equal(augmented, c) for c in reachable), f"{name}: not {data.augmentation}"
    for index in (0, len(data.test) - 1):
        assert torch.equal(cache.split("test")[index][0], data.test[index][0])


def test_declared_input_shapes_are_channels_height_width():
    for entry in DATASETS.entries():
        shape = entry.metadata.get("input_shape")
        if shape is not None:
            assert len(shape) == 3 and all(isinstance(n, int) and n >= 1 for n in shape), (entry.name, shape)
