"""module_mode/eval_mode put a module back in the mode it was in, also when the block raises."""
import pytest
from torch import nn

from robustbench_aft.modes import eval_mode, module_mode


def test_eval_mode_restores_train_mode_and_survives_an_error():
    network = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    with eval_mode(network):
        assert not network.training and not network[1].training
    assert network.training and network[1].training
    with pytest.raises(RuntimeError):
        with module_mode(network.eval(), True):
            assert network.training
            raise RuntimeError("inside")
    assert not network.training
