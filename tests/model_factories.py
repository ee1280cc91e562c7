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


def seeded_digits_net() -> nn.Module:
    """A :class:`DigitsNet` with fixed weights (seed 0) and no biases: the same model in every
    process, not too sure of itself."""
    import torch

    model = DigitsNet()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.3 if name.endswith("weight") else 0.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


class _Slow(nn.Module):
    def __init__(self, model: nn.Module, seconds: float) -> None:
        super().__init__()
        self.model = model
        self.seconds = seconds

    def forward(self, x: Tensor) -> Tensor:
        import time

        time.sleep(self.seconds)
        return self.model(x)


def slow_digits_net() -> nn.Module:
    """:func:`seeded_digits_net` taking 20 ms more per forward pass (to interrupt jobs midway)."""
    return _Slow(seeded_digits_net(), 0.02)


class _FailsOnBrightImages(nn.Module):
    """Raises RuntimeError when asked for gradients of an image brighter than the preset's mean:
    predictions (no gradients) work on every image, explaining a bright one fails."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        import torch

        if torch.is_grad_enabled() and float(x.detach().mean()) > 0:
            raise RuntimeError("cannot explain bright images\nsecond line of the model's message")
        return self.model(x)


def fragile_digits_net() -> nn.Module:
    """:func:`seeded_digits_net` that raises while explaining a bright image."""
    return _FailsOnBrightImages(seeded_digits_net())


class _DiesInWorkers(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        import multiprocessing
        import os
        import signal

        if multiprocessing.current_process().name != "MainProcess":
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        return self.model(x)


def dying_digits_net() -> nn.Module:
    """:func:`seeded_digits_net` whose forward pass kills the worker process it runs in."""
    return _DiesInWorkers(seeded_digits_net())


class XrayNet(nn.Module):
    """A 1-channel CNN with one logit: conv1 → pool → conv2 → pool → conv3 → global max → head.

    The network of the X-ray test's Keras model: ``Conv2D(8|16|16, 3, "same", relu,
    name="conv1|conv2|conv3")``, ``MaxPooling2D``, ``GlobalMaxPooling2D``, ``Dense(1)``; each
    ``convN`` is taken after its ReLU, as in Keras.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv3(self.pool(self.conv2(self.pool(self.conv1(x)))))
        return self.head(features.amax(dim=(2, 3)))


def xray_net() -> nn.Module:
    """A freshly initialized :class:`XrayNet` (weights come from a file)."""
    return XrayNet()


def volume_net() -> nn.Module:
    """A small 3-D CNN: Conv3d(2→4) → ReLU → Conv3d(4→3, stride 2) → ReLU → pooled → 5 classes."""
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(3, 5),
    ).eval()
