"""Every registered architecture satisfies the classifier contract (design.md §4) on the image shape of
every registered dataset it declares it fits.

Nothing here names an arch or a dataset: the shapes are what the dataset registrations declare
(``input_shape``), and which of them an arch runs on is what its registration declares
(``min_input_size``, the smallest image side it can run). A new dataset or arch is tested by
registering it.
"""
from functools import lru_cache
from typing import List, Tuple

import pytest
import torch
from torch import nn

from robustbench_aft.models import ImageClassifier, build_model
from robustbench_aft.registry import DATASETS, MODELS

NUM_CLASSES = 7
MEANS = (0.5, 0.4, 0.3)  # distinct per channel, so that a Normalize reading the wrong channel shows


def declared_shapes() -> List[Tuple[int, int, int]]:
    """The distinct input shapes the registered datasets declare (a dataset whose shape depends on its
    data, like folder:PATH, declares none)."""
    shapes = {tuple(entry.metadata["input_shape"]) for entry in DATASETS.entries() if "input_shape" in entry.metadata}
    return sorted(shapes)


def min_input_size(arch: str) -> int:
    size = MODELS.entry(arch).metadata.get("min_input_size")
    assert isinstance(size, int) and size >= 1, (
        f"arch {arch!r} must declare min_input_size=N in its @MODELS.register line (the smallest image side "
        f"it can run), got {size!r}")
    return size


CASES = [(arch, shape) for arch in MODELS.names() for shape in declared_shapes() if shape[1] >= min_input_size(arch)
         and shape[2] >= min_input_size(arch)]


@lru_cache(maxsize=None)
def _built(arch: str, channels: int) -> ImageClassifier:
    """One model per (arch, channels) for the whole module: building the wide ResNets costs more than
    running them on a few images. Every test sets the mode it needs."""
    torch.manual_seed(0)
    return build_model(arch, num_classes=NUM_CLASSES, in_channels=channels, mean=list(MEANS[:channels]),
                       std=[0.25] * channels)


@pytest.fixture(autouse=True, scope="module")
def _free_the_models():
    yield
    _built.cache_clear()


def _assert_classifier_contract(model: ImageClassifier, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (len(x), NUM_CLASSES)
    assert features.dim() == 2 and features.shape[0] == len(x)
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == features.shape[1] and model.head.out_features == NUM_CLASSES
    torch.testing.assert_close(model.head(features), logits)
    assert torch.isfinite(logits).all()


def test_the_registries_declare_shapes_to_test():
    assert declared_shapes(), "no registered dataset declares input_shape; the arch contract would test nothing"
    assert {arch for arch, _ in CASES} == set(MODELS.names()), "an arch fits no registered dataset's shape"


@pytest.mark.parametrize("arch, shape", CASES, ids=[f"{a}-{'x'.join(map(str, s))}" for a, s in CASES])
def test_forward_equals_head_of_pooled_features(arch, shape):
    torch.manual_seed(0)
    _assert_classifier_contract(_built(arch, shape[0]), torch.rand(2, *shape))


@pytest.mark.parametrize("arch", MODELS.names())
def test_the_declared_min_input_size_is_exact(arch):
    size = min_input_size(arch)
    model = _built(arch, 3)
    torch.manual_seed(0)
    _assert_classifier_contract(model, torch.rand(2, 3, size, size))
    if size > 1:  # one pixel less and some stage has nothing left to pool
        with pytest.raises(RuntimeError):
            with torch.no_grad():
                model.eval()(torch.rand(2, 3, size - 1, size - 1))


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_parameter_gets_a_gradient_and_normalize_is_first(arch):
    model = _built(arch, 3)
    model.zero_grad(set_to_none=True)
    model.train()
    # On the smallest registered dataset side the arch fits: cheap, and unlike a 1-pixel image it
    # reaches every tap of a 3x3 kernel.
    size = min(shape[1] for case_arch, shape in CASES if case_arch == arch)
    torch.manual_seed(0)
    model(torch.rand(2, 3, size, size)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    model.zero_grad(set_to_none=True)
    assert not missing
    # Normalisation is a buffer-only first layer: (x - mean) / std computed inside the model.
    first = next(iter(model.children()))
    torch.testing.assert_close(first(torch.full((1, 3, 1, 1), 0.5)).flatten(),
                               torch.tensor([0.0, 0.4, 0.8]))
    assert not list(first.parameters())
