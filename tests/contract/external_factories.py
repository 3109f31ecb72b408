"""``py:`` model factories used by the external-model tests (``py:tests.contract.external_factories:NAME``)."""
from torch import nn


class _Sequential(nn.Module):
    def __init__(self, num_classes: int, last_op: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(8, num_classes)
        self.last_op = last_op

    def forward(self, x):
        logits = self.out(self.features(x))
        return logits if self.last_op else 2.0 * logits


def tiny_cnn(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A small CNN with its classifier in ``fc`` (replaced by Identity by the adapter)."""
    body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.fc(self.body(x))

    return Net()


def unnamed_head(num_classes: int = 10) -> nn.Module:
    """No fc/classifier/head attribute: the adapter falls back to the last nn.Linear."""
    return _Sequential(num_classes, last_op=True)


def scaled_logits(num_classes: int = 10) -> nn.Module:
    """Its last Linear is followed by a scaling: it cannot be split into features and a linear head."""
    return _Sequential(num_classes, last_op=False)


def not_a_module() -> str:
    return "a string"
