"""vAFT: zero budget is natural fine-tuning; ARREST's learning-rate rule."""
import copy

import pytest
import torch
from torch.nn import functional as F

from robustbench_aft.config import TrainConfig
from robustbench_aft.data import collect
from robustbench_aft.engine import build_method, lr_table


def test_zero_budget_update_is_one_step_of_natural_fine_tuning(digits_model, digits):
    x, y = collect(digits.test, range(48))
    method = build_method("vaft", None, eps=0.0, train=TrainConfig(lr=0.025))
    method.prepare(digits_model)
    method.optimizers = method.configure_optimizers()
    reference = copy.deepcopy(digits_model).train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.025, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(reference(x), y).backward()
    optimizer.step()
    method.train()
    method.update((x, y, torch.arange(48)))
    for (name, ours), theirs in zip(method.student.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, msg=name)


def test_arrest_learning_rate_rule():
    method = build_method("vaft", None, eps=8 / 255, train=TrainConfig())
    assert lr_table(method, 20, 0.025) == pytest.approx(
        [0.025] * 10 + [0.02] * 2 + [0.01] * 2 + [0.005] * 2 + [0.0025] * 2 + [0.00125] * 2)
    assert lr_table(method, 20, 0.05)[10] == 0.02  # set outright, as ARREST.py does
