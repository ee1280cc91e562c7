"""How many channels a model's input has, read from the model itself.

A Keras model and an exported program say it in their input shape, an ONNX model in its input's
static shape; a PyTorch module (its code, a pickled module, TorchScript) in its first
convolution's ``in_channels`` (or, for a traced TorchScript convolution that keeps no
attributes, its weight's shape). The preset's ``channels`` and ``--channels`` override what is
read here, and a model that says nothing gets RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["conv_input_channels", "nchw_channels"]


def conv_input_channels(module: Any) -> int | None:
    """``in_channels`` of the first convolution of ``module`` in module order, if it has one.

    Module order is the order the submodules were assigned in ``__init__``: the stem of every
    common architecture. Where a model registers another convolution first, ``--channels``
    (the preset's ``channels``) says what it takes.
    """
    from torch import jit, nn

    for submodule in module.modules():
        if isinstance(submodule, nn.modules.conv._ConvNd):
            return submodule.in_channels or None  # a lazy convolution does not know yet
        if isinstance(submodule, jit.ScriptModule) and str(
            getattr(submodule, "original_name", "")
        ).startswith("Conv"):
            declared = getattr(submodule, "in_channels", None)
            if isinstance(declared, int) and declared > 0:
                return declared
            weight = getattr(submodule, "weight", None)
            groups = getattr(submodule, "groups", 1)
            if weight is not None and weight.ndim >= 3 and isinstance(groups, int):
                return int(weight.shape[1]) * groups
    return None


def nchw_channels(shape: Sequence[int | None] | None) -> int | None:
    """The channel dimension of a static NCHW image shape ``(N, C, H, W)``, if it has one."""
    if shape is None or len(shape) != 4:
        return None
    channels = shape[1]
    return channels if isinstance(channels, int) and channels > 0 else None
