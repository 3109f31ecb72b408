"""Every registered dataset that is present: [0, 1] images of the stated shape, labels, indices."""
import pytest
import torch

from robustbench_aft.data import load_dataset
from robustbench_aft.errors import DataNotFoundError
from robustbench_aft.registry import DATASETS

from ..conftest import SHARED_CIFAR10_JPEG, write_tiny_imagenet


def _load(name, tmp_path):
    """Load a registered dataset from the data this machine has; skip with the reason when absent."""
    try:
        if name == "folder":
            if not (SHARED_CIFAR10_JPEG / "train").is_dir():
                pytest.skip(f"no ImageFolder tree at {SHARED_CIFAR10_JPEG}")
            return load_dataset(f"folder:{SHARED_CIFAR10_JPEG}")
        if name == "tinyimagenet":
            write_tiny_imagenet(tmp_path)
            return load_dataset(name, data_dir=str(tmp_path))
        return load_dataset(name)
    except DataNotFoundError as exc:
        pytest.skip(f"{name} not present: {exc}")


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, tmp_path):
    data = _load(name, tmp_path)
    assert data.num_classes == len(data.class_names) >= 2
    assert len(data.mean) == len(data.std) == data.input_shape[0]
    assert 0 < data.default_eps < 1
    for split in (data.train, data.test):
        for index in (0, len(split) - 1):
            x, y, returned_index = split[index]
            assert returned_index == index
            assert tuple(x.shape) == data.input_shape
            assert x.dtype == torch.float32
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            assert 0 <= y < data.num_classes
