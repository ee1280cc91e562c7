"""Class activation maps for segmentation targets, regression outputs and negative evidence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from conftest import (
    CAM_METHODS,
    GRID_CAMS,
    assert_same_state,
    layer_capture,
    model_state,
    relative_error,
)
from salience.adapters.torch import TorchAdapter
from salience.postprocess import upsample
from salience.targets import TargetError, segmentation_target


def hand_gradcam(activations: Tensor, gradients: Tensor, relu: bool = True) -> Tensor:
    """Grad-CAM (N, h, w): ReLU(Σ_c mean_s(G_c) · A_c)."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activations).sum(dim=1)
    return cam.clamp_min(0) if relu else cam


def peak(cam: Tensor) -> tuple[int, int]:
    return divmod(int(cam.argmax()), cam.shape[-1])


# --- a segmentation model --------------------------------------------------------------------


class TinySegNet(nn.Module):
    """Fully convolutional: conv-BN-ReLU, a stride-2 stage (``features``), 1×1 head, upsampling.

    Outputs logits ``(N, classes, H, W)`` at the input's resolution.
    """

    def __init__(self, classes: int = 3, channels: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(nn.Conv2d(channels, channels, 2, stride=2), nn.ReLU())
        self.head = nn.Conv2d(channels, classes, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            self.bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            self.bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        a = self.features(F.relu(self.bn(self.stem(x))))
        return F.interpolate(self.head(a), size=x.shape[-2:], mode="bilinear", align_corners=False)


def seg_inputs(dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=dtype)


def seg_mask() -> Tensor:
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[1:7, 2:9] = True
    return mask


@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_cam_explains_a_segmentation_target(method: str) -> None:
    model = TinySegNet().eval()
    x = seg_inputs()
    target = segmentation_target(1, seg_mask())
    explanation = salience.explain(model, x, method=method, target=target, layer="features")
    maps = explanation.attributions
    expected = (2, 1, 3, 12, 12) if method == "guided_gradcam" else (2, 1, 6, 6)
    assert maps.shape == expected
    assert torch.isfinite(maps).all()
    assert maps.abs().amax() > 0
    assert explanation.targets.tolist() == [[-1], [-1]]  # a custom score has no class index
    logits = model(x)
    assert torch.allclose(explanation.scores[:, 0], (logits[:, 1] * seg_mask()).sum(dim=(1, 2)))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("class_index", [1, -1])
def test_gradcam_with_a_segmentation_target_equals_the_hand_formula(class_index, relu) -> None:
    model = TinySegNet().double().eval()
    x = seg_inputs(torch.float64)
    mask = seg_mask()
    activations, gradients = layer_capture(
        model, x, "features", lambda out: (out[:, class_index] * mask).sum(dim=(1, 2))
    )
    expected = hand_gradcam(activations, gradients, relu)
    assert expected.abs().amax() > 0
    explanation = salience.explain(
        model,
        x,
        method="gradcam",
        target=segmentation_target(class_index, mask),
        layer="features",
        relu=relu,
    )
    assert relative_error(explanation.attributions[:, 0], expected) < 1e-6


def test_a_per_sample_mask_weighs_each_sample_by_its_own_mask() -> None:
    model = TinySegNet().double().eval()
    x = seg_inputs(torch.float64)
    masks = torch.zeros(2, 12, 12)
    masks[0, :6, :6] = 1
    masks[1, 6:, 3:] = 0.5  # weights, not only booleans
    activations, gradients = layer_capture(
        model, x, "features", lambda out: (out[:, 2] * masks).sum(dim=(1, 2))
    )
    expected = hand_gradcam(activations, gradients)
    target = segmentation_target(2, masks)
    maps = salience.explain(model, x, method="gradcam", target=target, layer="features")
    assert relative_error(maps.attributions[:, 0], expected) < 1e-6


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_a_per_sample_mask_with_the_perturbation_cams(method: str) -> None:
    # Each sample's map with the (N, H, W) mask must be the map of that sample alone with its
    # own (H, W) mask.
    model = TinySegNet().double().eval()
    x = seg_inputs(torch.float64)
    masks = torch.zeros(2, 12, 12)
    masks[0, :6, :6] = 1
    masks[1, 6:, 3:] = 1
    together = salience.explain(
        model, x, method=method, target=segmentation_target(1, masks), layer="features"
    ).attributions
    for n in range(2):
        alone = salience.explain(
            model,
            x[n : n + 1],
            method=method,
            target=segmentation_target(1, masks[n]),
            layer="features",
        ).attributions
        assert relative_error(together[n], alone[0]) < 1e-6, n


# --- a segmentation model whose answer is known --------------------------------------------


class KnownSegNet(TinySegNet):
    """Class 1's logits are channel 0 of ``features`` (upsampled); class 0's are channel 1.

    ``stem`` channel 0 is the 3×3 mean of image channel 0, channel 1 that of image channel 1
    (times ``distractor``), channels 2..5 faint random views of image channel 2; BatchNorm is
    the identity and ``features`` 2×2 averages each channel. Inside any mask, class 1's logits
    depend only on channel 0 of ``features`` near that mask.
    """

    def __init__(self, distractor: float = 0.5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        with torch.no_grad():
            stem = torch.zeros(6, 3, 3, 3)
            stem[0, 0] = 1 / 9
            stem[1, 1] = distractor / 9
            stem[2:, 2] = torch.randn(4, 3, 3, generator=generator) * 0.03
            self.stem.weight.copy_(stem)
            self.stem.bias.zero_()
            self.bn.running_mean.zero_()
            self.bn.running_var.fill_(1 - self.bn.eps)
            self.bn.weight.fill_(1)
            self.bn.bias.zero_()
            pool = torch.zeros(6, 6, 2, 2)
            pool[range(6), range(6)] = 0.25
            self.features[0].weight.copy_(pool)
            self.features[0].bias.zero_()
            head = torch.zeros(3, 6, 1, 1)
            head[1, 0] = 1.0
            head[0, 1] = 1.0
            head[2, 2:] = torch.randn(4, 1, 1, generator=generator)
            self.head.weight.copy_(head)
            self.head.bias.copy_(torch.tensor([0.0, 0.05, 0.0]))


SIGNAL_CELLS = (slice(1, 3), slice(1, 3))  # the signal in the 6×6 feature grid
SIGNAL_PIXELS = (slice(2, 6), slice(2, 6))
DISTRACTOR_PIXELS = (slice(8, 12), slice(6, 10))


def known_input() -> Tensor:
    x = torch.zeros(1, 3, 12, 12)
    x[0, 2] = torch.rand(12, 12, generator=torch.Generator().manual_seed(5))
    x[(0, 0, *SIGNAL_PIXELS)] = 1.0
    x[(0, 1, *DISTRACTOR_PIXELS)] = 1.0
    return x


def known_mask() -> Tensor:
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[0:7, 0:8] = True  # holds the signal, not the distractor
    return mask


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_of_a_segmentation_target_peaks_where_the_class_is_decided(method: str) -> None:
    model = KnownSegNet().eval()
    target = segmentation_target(1, known_mask())
    cam = salience.explain(
        model, known_input(), method=method, target=target, layer="features"
    ).attributions[0, 0]
    if method == "guided_gradcam":
        # Guided backpropagation only passes where stem channel 0 is positive: around the signal.
        row, col = peak(cam.abs().amax(dim=0))
        rows, cols = SIGNAL_PIXELS
        assert rows.start - 1 <= row <= rows.stop and cols.start - 1 <= col <= cols.stop
        return
    row, col = peak(cam)
    rows, cols = SIGNAL_CELLS
    assert rows.start <= row < rows.stop and cols.start <= col < cols.stop, (row, col)
    assert cam[4:, 3:].max() < 0.5 * cam.max()  # not on the distractor


def test_the_other_class_peaks_on_the_distractor() -> None:
    model = KnownSegNet().eval()
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[6:, 4:] = True
    target = segmentation_target(0, mask)
    for method in ["gradcam", "hirescam", "layercam", "scorecam", "ablationcam"]:
        cam = salience.explain(
            model, known_input(), method=method, target=target, layer="features"
        ).attributions[0, 0]
        row, col = peak(cam)
        assert 4 <= row < 6 and 3 <= col < 5, (method, row, col)


# --- segmentation targets that do not fit ----------------------------------------------------


def test_segmentation_target_rejects_a_mask_of_the_wrong_shape() -> None:
    model = TinySegNet().eval()
    adapter = TorchAdapter(model, inference_copy=False)
    before = model_state(model)
    for method in ["gradcam", "scorecam", "ablationcam", "eigencam"]:
        target = segmentation_target(1, torch.ones(5, 7))
        with pytest.raises(
            TargetError, match=r"the mask is \(5, 7\) but the outputs are \(12, 12\)"
        ):
            salience.explain(adapter, seg_inputs(), method=method, target=target, layer="features")
    assert_same_state(before, model_state(model))  # no hook left behind by the failing calls
    with pytest.raises(TargetError, match=r"the mask must be \(H, W\) or \(N, H, W\).*\(12,\)"):
        segmentation_target(1, torch.ones(12))
    with pytest.raises(TargetError, match=r"\(1, 2, 12, 12\)"):
        segmentation_target(1, torch.ones(1, 2, 12, 12))


@pytest.mark.parametrize("class_index", [3, 10, -4])
def test_segmentation_target_rejects_a_class_out_of_range(class_index: int) -> None:
    target = segmentation_target(class_index, seg_mask())
    with pytest.raises(TargetError, match=f"class index {class_index} is out of range.*3 classes"):
        salience.explain(TinySegNet().eval(), seg_inputs(), method="gradcam", target=target)


def test_segmentation_target_needs_4d_outputs(small_cnn, images) -> None:
    target = segmentation_target(1, torch.ones(12, 12))
    for method in ["gradcam", "scorecam", "ablationcam"]:
        with pytest.raises(TargetError, match=r"needs outputs \(N, classes, H, W\).*\(2, 5\)"):
            salience.explain(small_cnn, images, method=method, target=target)


# --- a regression model ------------------------------------------------------------------------


class Regressor(nn.Module):
    """A small CNN with one output: ``(N,)`` or ``(N, 1)``."""

    def __init__(self, squeeze: bool, seed: int = 0) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.features = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(6, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
            self.fc.bias.fill_(1.0)  # a positive output, for Ablation-CAM's relative drop

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc(self.features(F.relu(self.conv1(x))).mean(dim=(2, 3)))
        return out[:, 0] if self.squeeze else out


@pytest.mark.parametrize("squeeze", [True, False], ids=["(N,)", "(N,1)"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_cam_explains_a_regression_output(method: str, squeeze: bool) -> None:
    model = Regressor(squeeze).eval()
    x = seg_inputs()
    explanation = salience.explain(model, x, method=method, layer="features")
    maps = explanation.attributions
    expected = (2, 1, 3, 12, 12) if method == "guided_gradcam" else (2, 1, 6, 6)
    assert maps.shape == expected
    assert torch.isfinite(maps).all()
    assert maps.abs().amax() > 0
    assert explanation.targets.tolist() == [[0], [0]]
    assert torch.allclose(explanation.scores[:, 0], model(x).reshape(-1))


@pytest.mark.parametrize("squeeze", [True, False], ids=["(N,)", "(N,1)"])
def test_gradcam_of_a_regression_output_equals_the_hand_formula(squeeze: bool) -> None:
    model = Regressor(squeeze).double().eval()
    x = seg_inputs(torch.float64)
    activations, gradients = layer_capture(model, x, "features", lambda out: out.reshape(-1))
    expected = hand_gradcam(activations, gradients)
    assert expected.abs().amax() > 0
    maps = salience.explain(model, x, method="gradcam", layer="features").attributions
    assert relative_error(maps[:, 0], expected) < 1e-6


def test_scorecam_of_a_regression_output_weighs_by_the_output_itself() -> None:
    model = Regressor(True).double().eval()
    explanation = salience.explain(model, seg_inputs(torch.float64), method="scorecam")
    assert explanation.info["weights"] == "logit"  # no softmax over a single output


# --- negative evidence: relu=False --------------------------------------------------------------


class ForAndAgainst(nn.Module):
    """Output = 2·mean(channel 0) − 2·mean(channel 1) of ``features``.

    Channel 0 sees image channel 0 (bright top-left square), channel 1 image channel 1 (dimmer
    bottom-right square): the evidence is positive on the first, negative on the second.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.ReLU())
        self.fc = nn.Linear(4, 1)
        generator = torch.Generator().manual_seed(6)
        with torch.no_grad():
            weight = torch.zeros(4, 3, 2, 2)
            weight[0, 0] = 0.25
            weight[1, 1] = 0.25
            weight[2:, 2] = torch.rand(2, 2, 2, generator=generator) * 0.1
            self.features[0].weight.copy_(weight)
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[2.0, -2.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


FOR_CELLS = (slice(0, 3), slice(0, 3))
AGAINST_CELLS = (slice(3, 6), slice(3, 6))


def for_and_against_input() -> Tensor:
    x = torch.zeros(1, 3, 12, 12)
    x[0, 0, :6, :6] = 1.0
    x[0, 1, 6:, 6:] = 0.5
    x[0, 2] = torch.rand(12, 12, generator=torch.Generator().manual_seed(7))
    return x


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "scorecam", "ablationcam"])
def test_relu_false_keeps_the_negative_evidence(method: str) -> None:
    model = ForAndAgainst().eval()
    x = for_and_against_input()
    signed = salience.explain(model, x, method=method, relu=False).attributions[0, 0]
    clipped = salience.explain(model, x, method=method).attributions[0, 0]
    assert signed.shape == clipped.shape == (6, 6)
    assert (signed[AGAINST_CELLS] < 0).all()
    assert (signed[FOR_CELLS] > 0).all()
    assert (clipped >= 0).all()
    assert (clipped[AGAINST_CELLS] == 0).all()
    assert torch.allclose(clipped, signed.clamp(min=0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", GRID_CAMS)
def test_relu_true_is_the_clamped_relu_false_map(method: str) -> None:
    model = TinySegNet().eval()
    x = seg_inputs()
    target = segmentation_target(2, seg_mask())
    signed = salience.explain(
        model, x, method=method, target=target, layer="features", relu=False
    ).attributions
    clipped = salience.explain(model, x, method=method, target=target, layer="features")
    assert clipped.params["relu"] is True
    assert torch.allclose(clipped.attributions, signed.clamp(min=0), rtol=1e-6, atol=1e-6)
    assert (clipped.attributions >= 0).all()


def test_guided_gradcam_relu_false_uses_the_signed_gradcam() -> None:
    # Guided Grad-CAM = guided backprop × the Grad-CAM upsampled to the input; relu=False keeps
    # the Grad-CAM's negative part, which bilinear upsampling blends into the positive part.
    model = ForAndAgainst().eval()
    x = for_and_against_input()
    guided = salience.explain(model, x, method="guided_backprop").attributions
    results = {}
    for relu in (True, False):
        cam = salience.explain(model, x, method="gradcam", relu=relu).attributions
        assert (cam < 0).any() != relu
        expected = guided * upsample(cam, (12, 12)).unsqueeze(2)
        results[relu] = salience.explain(model, x, method="guided_gradcam", relu=relu)
        assert results[relu].params["relu"] is relu
        assert relative_error(results[relu].attributions, expected) < 1e-6
    assert not torch.allclose(results[True].attributions, results[False].attributions)
