"""Own ``py:`` models and ``models.adapt``: the split into features and a linear head is verified on
a probe batch (models/_probe.py), never assumed.

Every model here is valid PyTorch; the adapter must reproduce it exactly or refuse it in one line
that says what is in the way (the factories are in tests/own_model_factories.py).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustbench_aft.errors import ConfigError
from robustbench_aft.models import adapt, build_model
from robustbench_aft.models._probe import probe_forward
from tests import own_model_factories as factories

PY = "py:tests.own_model_factories"
SHAPE = (3, 8, 8)


def build(name: str, num_classes: int = 5):
    torch.manual_seed(0)
    return build_model(f"{PY}:{name}", num_classes, 3, [0.5] * 3, [0.25] * 3, SHAPE)


def refusal(call) -> str:
    with pytest.raises(ConfigError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_model_returning_a_tuple_is_one_line_saying_how_to_wrap_it():
    message = refusal(lambda: build("tuple_output"))
    assert message.startswith(f"{PY}:tuple_output returns a tuple, not a tensor of logits")
    assert "wrap it in a module whose forward returns only the logits" in message
    assert "returns a tuple" in refusal(lambda: adapt(factories.tuple_output(5), SHAPE))


@pytest.mark.parametrize("name, follower", [
    ("fc_then_logsoftmax", "post (LogSoftmax) runs on its output"),
    ("fc_then_temperature", r"Tensor.div (a / in its forward) runs on its output"),
])
def test_an_operation_after_the_classifier_is_refused_naming_it(name, follower):
    replaced = refusal(lambda: build(name))
    assert f"its classifier fc Linear(8, 5) is not the last operation of its forward: {follower}" in replaced
    assert "a new head in its place would move that onto the features" in replaced
    kept = refusal(lambda: adapt(getattr(factories, name)(5), SHAPE))
    assert f"{follower}; the adapted network would not reproduce its logits" in kept


def test_adapt_of_a_log_softmax_model_no_longer_changes_its_predictions():
    """The defect: adapt() moved the LogSoftmax onto the features; 64 of 64 predictions changed."""
    torch.manual_seed(0)
    network = factories.fc_then_logsoftmax(10, in_channels=1)
    with pytest.raises(ConfigError, match="post \\(LogSoftmax\\) runs on its output"):
        adapt(network, (1, 8, 8))


def test_operations_that_keep_the_logits_are_accepted():
    torch.manual_seed(0)
    network = factories.fc_then_dropout_and_view(5).eval()
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        expected = network(x)
    model = adapt(copy.deepcopy(network), SHAPE).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert build("fc_then_dropout_and_view").head.out_features == 5


def test_the_classifier_is_the_linear_the_forward_calls_last_not_the_last_registered():
    """``out`` is registered before ``hidden`` but runs after it: it is the head (it was refused before)."""
    torch.manual_seed(0)
    network = factories.output_registered_first(5).eval()
    assert [m for m in network.modules() if isinstance(m, nn.Linear)][-1] is network.hidden
    x = torch.rand(64, *SHAPE)
    with torch.no_grad():
        expected = network(x)
    original_out = copy.deepcopy(network.out)
    model = adapt(network, SHAPE).eval()
    assert model.body.classifier is network.out and torch.equal(model.head.weight, original_out.weight)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(model.head(model.forward_features(x)), logits)
    assert int((logits.argmax(1) == expected.argmax(1)).sum()) == 64

    built = build("output_registered_first").eval()
    assert built.feature_dim == 16 and built.head.out_features == 5
    with torch.no_grad():
        assert built.forward_features(x).shape == (64, 16)


def test_an_fc_attribute_that_is_a_hidden_layer_is_refused_naming_the_linear_after_it():
    message = refusal(lambda: build("fc_before_another_linear"))
    assert "its classifier fc Linear(8, 16) is not the last operation of its forward: logits Linear(16, 5) " \
           "runs after it" in message


def test_an_fc_attribute_the_forward_never_calls_is_refused():
    message = refusal(lambda: build("unused_fc"))
    assert "its classifier fc Linear(8, 5) is never called by its forward (out Linear(8, 5) is the last" in message


def test_the_probe_names_in_place_and_nested_operations_and_restores_every_mode():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.post = nn.Linear(3, 4), nn.Sequential(nn.LogSoftmax(dim=1))
            self.post.train()

        def forward(self, x):
            logits = self.fc(x)
            logits.div_(2.0)  # changes the classifier's output in place
            return logits

    class Nested(InPlace):
        def forward(self, x):
            return self.post(self.fc(x))

    x = torch.rand(2, 3)
    in_place = InPlace().eval()
    in_place.post.train()
    probe = probe_forward(in_place, x)
    assert not probe.output_is_classifier_output() and probe.follower == "Tensor.div_ (a /= in its forward)"
    assert not in_place.training and in_place.post.training and in_place.post[0].training  # as they were
    assert probe_forward(Nested(), x).follower == "post.0 (LogSoftmax)"


def test_building_does_not_move_the_global_random_state():
    """The probe batch has its own generator: a seeded run draws what it drew before the check."""
    from robustbench_aft.models.external import _probe_batch, verified_classifier

    torch.manual_seed(123)
    factories.output_registered_first(5)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    network = factories.output_registered_first(5)

    verified_classifier("x", network, _probe_batch(SHAPE), None, keep_head=False)
    assert torch.equal(torch.rand(1), expected_next)
