"""Every registered architecture satisfies the classifier contract (design.md §4)."""
import pytest
import torch
from torch import nn

from robustbench_aft.models import build_model
from robustbench_aft.registry import MODELS

SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_equals_head_of_pooled_features(arch, shape):
    torch.manual_seed(0)
    channels = shape[0]
    model = build_model(arch, num_classes=7, in_channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    model.eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (3, 7)
    assert features.dim() == 2 and features.shape[0] == 3
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == features.shape[1] and model.head.out_features == 7
    torch.testing.assert_close(model.head(features), logits)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", MODELS.names())
def test_every_parameter_gets_a_gradient_and_normalize_is_first(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    model.train()
    x = torch.rand(2, 3, 32, 32)
    model(x).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    # Normalisation is a buffer-only first layer: (x - mean) / std computed inside the model.
    first = next(iter(model.children()))
    torch.testing.assert_close(first(torch.full((1, 3, 1, 1), 0.5)).flatten(),
                               torch.tensor([0.0, 0.5, 1.0]))
    assert not list(first.parameters())
