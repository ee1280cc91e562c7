"""Factories the loading tests name as ``model_factories:function`` (this folder on sys.path)."""

from __future__ import annotations

from torch import Tensor, nn

CLASSES = 10


class DigitsNet(nn.Module):
    """conv1 (+ReLU) → conv2 (+ReLU) → global mean → fc: the network of the Keras test model.

    Keras: ``Conv2D(8, 3, "same", relu, name="conv1")``, ``Conv2D(16, 3, "same", relu,
    name="conv2")``, ``GlobalAveragePooling2D``, ``Dense(10)``. As in Keras, the output of the
    layers ``conv1`` and ``conv2`` is taken after their ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.conv1(x)).mean(dim=(2, 3)))


def digits_net() -> nn.Module:
    """A freshly initialized :class:`DigitsNet` (weights come from a file)."""
    return DigitsNet()


def not_a_model() -> str:
    """A factory that returns something salience cannot explain."""
    return "a string"
