"""Class activation maps: known answers, equality with the papers' formulas, one shared pass."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from conftest import CAM_METHODS, assert_same_state, layer_capture, model_state, relative_error
from salience.adapters.torch import TorchAdapter

GRADIENT_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


# --- a model whose answer is known ---------------------------------------------------------


class OneRegion(nn.Module):
    """Class 0's logit is the sum of channel 0 of ``features`` over one 2×2 region; class 1 is 0.

    ``features`` (stride 2, 8×8) responds in channel 0 to brightness; the other channels carry
    weak unrelated signal. Nothing but that region of that channel drives class 0.
    """

    region = (slice(2, 4), slice(5, 7))

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.ReLU())
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            weight = torch.randn(4, 3, 2, 2, generator=generator) * 0.01
            weight[0] = 1 / 12
            self.features[0].weight.copy_(weight)
            self.features[0].bias.copy_(torch.tensor([0.0, 0.02, 0.02, 0.02]))
        mask = torch.zeros(8, 8)
        mask[self.region] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        a = self.features(x)
        region_sum = (a[:, 0] * self.mask).sum(dim=(1, 2))
        return torch.stack([region_sum, torch.zeros_like(region_sum)], dim=1)


def one_region_input() -> Tensor:
    x = torch.full((1, 3, 16, 16), 0.3)
    x[:, :, 4:8, 10:14] = 1.0  # the region, at input resolution
    x[:, :, 12:16, 0:4] = 0.6  # a dimmer bright patch that does not count
    return x


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_peaks_on_the_only_region_that_drives_the_class(method: str) -> None:
    model = OneRegion().eval()
    explanation = salience.explain(model, one_region_input(), method=method, target=0)
    cam = explanation.attributions[0, 0]
    if method == "guided_gradcam":  # input resolution: back to the layer's 8×8 grid
        cam = F.avg_pool2d(cam.abs().amax(dim=0, keepdim=True), 2)[0]
    assert cam.shape == (8, 8)
    row, col = divmod(int(cam.argmax()), 8)
    rows, cols = OneRegion.region
    assert rows.start <= row < rows.stop and cols.start <= col < cols.stop, (method, row, col)


# --- the formulas, computed by hand ------------------------------------------------------------


class RandomConvNet(nn.Module):
    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Conv2d(12, 16, 3, padding=1), nn.Tanh())
        self.fc = nn.Linear(16 * 6 * 6, classes)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                    module.running_var.copy_(
                        torch.rand(module.num_features, generator=generator) + 0.5
                    )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.block2(self.block1(x))).flatten(1))


def captured(model: nn.Module, layer: str, x: Tensor, classes: list[int]) -> tuple:
    """Activations (N, C, H, W) and gradients (N, K, C, H, W) by plain hooks and autograd."""
    pairs = [layer_capture(model, x, layer, lambda out, c=c: out[:, c]) for c in classes]
    return pairs[0][0].double(), torch.stack([g for _, g in pairs], 1).double()


def hand_terms(method: str, a: Tensor, g: Tensor) -> Tensor:
    """The papers' per-channel terms (N, K, C, H, W) on activations a (N, C, H, W) and gradients
    g (N, K, C, H, W); the CAM is ReLU of their sum over channels."""
    a = a.unsqueeze(1)
    if method == "gradcam":
        return g.mean(dim=(3, 4), keepdim=True) * a
    if method == "gradcam++":
        g2, g3 = g**2, g**3
        denominator = 2 * g2 + a.sum(dim=(3, 4), keepdim=True) * g3
        alpha = torch.where(g != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        return (alpha * torch.relu(g)).sum(dim=(3, 4), keepdim=True) * a
    if method == "xgradcam":
        weights = (g * a).sum(dim=(3, 4), keepdim=True) / (a.sum(dim=(3, 4), keepdim=True) + 1e-7)
        return weights * a
    if method == "layercam":
        return torch.relu(g) * a
    if method == "hirescam":
        return g * a
    raise AssertionError(method)


@pytest.mark.parametrize("layer", ["block2", "block2.0", "head"])
@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_gradient_cams_equal_the_hand_computed_formula(method: str, layer: str) -> None:
    # In float64, so the bound follows from the arithmetic and not from a CPU's float32 kernels:
    # the map is computed in float64 and stored as float32 (half an ulp, 2^-24 of each value,
    # and a value is at most the sum of its terms' magnitudes); float64 rounding adds ~1e-15.
    torch.manual_seed(0)
    model = RandomConvNet().double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    explanation = salience.explain(model, x, method=method, layer=layer, target="top-2")
    classes = explanation.targets
    assert classes.shape == (3, 2)
    for k in range(2):
        for n in range(3):
            a, g = captured(model, layer, x[n : n + 1], [int(classes[n, k])])
            terms = hand_terms(method, a, g)[0, 0]
            expected = torch.relu(terms.sum(0))
            error = (explanation.attributions[n, k].double() - expected).abs().max()
            assert float(error / terms.abs().sum(0).max()) < 2**-23


def test_gradcam_keeps_negative_evidence_without_relu() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(2, 3, 12, 12)
    signed = salience.explain(model, x, method="gradcam", layer="head", relu=False).attributions
    relued = salience.explain(model, x, method="gradcam", layer="head").attributions
    assert (signed < 0).any()
    torch.testing.assert_close(relued, signed.clamp_min(0))


def test_hirescam_equals_gradcam_before_global_average_pooling_and_a_linear_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 10, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 5),
    )
    model, x = model.double(), torch.randn(2, 3, 9, 9, dtype=torch.float64)  # no float32 kernels
    for relu in (True, False):
        options = {"layer": "3", "target": "top-3", "relu": relu}
        hires = salience.explain(model, x, method="hirescam", **options).attributions
        grad = salience.explain(model, x, method="gradcam", **options).attributions
        assert relative_error(hires, grad) < 2**-22  # each stored as float32


def test_gradcam_on_a_convolution_whose_batchnorm_is_folded_in_the_private_copy() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(2, 3, 12, 12)
    fast = salience.explain(model, x, method="gradcam", layer="block1.0").attributions
    plain = salience.explain(
        TorchAdapter(model, inference_copy=False), x, method="gradcam", layer="block1.0"
    ).attributions
    assert relative_error(fast, plain) < 1e-6  # the conv's own output, not conv + BatchNorm


def test_eigencam_is_the_first_principal_component_of_the_activations() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(2, 3, 12, 12)
    maps = salience.explain(model, x, method="eigencam", layer="block2", relu=False)
    a, _ = captured(model, "block2", x, [0])
    for n in range(2):
        positions = a[n].reshape(a.shape[1], -1).T.numpy()  # (S, C)
        centred = positions - positions.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0]
        totals = positions.sum(axis=1)
        if projection @ (totals - totals.mean()) < 0:
            projection = -projection
        expected = torch.from_numpy(projection.reshape(a.shape[2:]))
        assert relative_error(maps.attributions[n, 0], expected) < 1e-5


# --- Score-CAM and Ablation-CAM against straightforward references ---------------------------


def scorecam_reference(model: nn.Module, layer: str, x: Tensor, target: int) -> Tensor:
    """Wang et al. 2020, written out: every channel's masked input, no skipping, no batching."""
    a, _ = captured(model, layer, x, [target])
    a = a[0].float()
    with torch.no_grad():
        base = torch.softmax(model(torch.zeros_like(x)), 1)[0, target]
        weights = []
        for channel in a:
            up = F.interpolate(channel[None, None], x.shape[-2:], mode="bilinear")[0, 0]
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            weights.append(torch.softmax(model(x * mask), 1)[0, target] - base)
    return torch.relu((torch.stack(weights)[:, None, None] * a).sum(0))


def ablationcam_reference(model: nn.Module, layer: str, x: Tensor, target: int) -> Tensor:
    """Desai & Ramaswamy 2020, written out: one full forward pass per zeroed channel."""
    a, _ = captured(model, layer, x, [target])
    a = a[0].float()
    with torch.no_grad():
        original = model(x)[0, target]
        weights = []
        for c in range(a.shape[0]):

            def zero(_m: nn.Module, _i: tuple, out: Tensor, c: int = c) -> Tensor:
                out = out.clone()
                out[:, c] = 0
                return out

            handle = model.get_submodule(layer).register_forward_hook(zero)
            try:
                weights.append((original - model(x)[0, target]) / original)
            finally:
                handle.remove()
    return torch.relu((torch.stack(weights)[:, None, None] * a).sum(0))


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("layer", ["block1", "block2"])
def test_scorecam_equals_the_papers_definition(layer: str, chunk_size: int) -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(1, 3, 12, 12)
    explanation = salience.explain(
        model, x, method="scorecam", layer=layer, target=3, chunk_size=chunk_size
    )
    expected = scorecam_reference(model, layer, x, 3)
    assert relative_error(explanation.attributions[0, 0], expected) < 1e-4
    assert explanation.info["weights"] == "probability"


def test_scorecam_skips_constant_channels_exactly() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(1, 3, 12, 12)
    with torch.no_grad():  # three channels of block2 that are always zero after the ReLU
        model.block2[1].bias[:3] = -100
    explanation = salience.explain(model, x, method="scorecam", layer="block2", target=1)
    assert explanation.info["skipped_channels"] >= 3
    expected = scorecam_reference(model, "block2", x, 1)
    assert relative_error(explanation.attributions[0, 0], expected) < 1e-4


class BatchSizeFromInput(nn.Module):
    """Reshapes with the input's batch size after the layer: no fan-out possible."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        return self.fc(self.features(x).reshape(n, -1))


class Residual(nn.Module):
    """A skip connection from before the layer to after it: fan-out broadcasts correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        return self.fc((self.body(h) + h).relu().mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (RandomConvNet, "block2"),
        (RandomConvNet, "head"),
        (BatchSizeFromInput, "features"),
        (Residual, "body"),
    ],
)
def test_ablationcam_equals_full_forward_passes_with_the_channel_zeroed(build, layer: str) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, *((12, 12) if build is RandomConvNet else (8, 8)))
    before = model_state(model)
    explanation = salience.explain(model, x, method="ablationcam", layer=layer, chunk_size=4)
    for n in range(2):
        target = int(explanation.targets[n, 0])
        expected = ablationcam_reference(model, layer, x[n : n + 1], target)
        assert relative_error(explanation.attributions[n, 0], expected) < 1e-5
    assert_same_state(before, model_state(model))
    assert all(not m._forward_hooks for m in model.modules())


# --- one shared pass ------------------------------------------------------------------------


class CountingNet(RandomConvNet):
    calls = 0

    def forward(self, x: Tensor) -> Tensor:
        type(self).calls += 1
        return super().forward(x)


def test_gradient_cams_asked_together_share_one_forward_and_one_backward_pass() -> None:
    torch.manual_seed(0)
    model, x = CountingNet(), torch.randn(2, 3, 12, 12)
    adapter = TorchAdapter(model, inference_copy=False)
    methods = [*GRADIENT_CAMS, "eigencam"]
    alone = {m: salience.explain(adapter, x, method=m, layer="block2") for m in methods}
    CountingNet.calls = 0
    with mock.patch("torch.autograd.grad", wraps=torch.autograd.grad) as backward:
        together = salience.explain_all(adapter, x, methods, layer="block2")
    assert CountingNet.calls == 1
    assert backward.call_count == 1
    assert list(together) == methods
    for method in methods:
        assert torch.equal(together[method].attributions, alone[method].attributions), method
        assert together[method].method == method


def test_explain_all_mixes_shared_and_multi_pass_methods() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(1, 3, 12, 12)
    methods = ["gradcam", "gradient", "scorecam", "guided_gradcam"]
    together = salience.explain_all(model, x, methods, layer="block2", target=2)
    for method in methods:
        options = {"layer": "block2"} if method != "gradient" else {}
        alone = salience.explain(model, x, method=method, target=2, **options)
        assert relative_error(together[method].attributions, alone.attributions) < 1e-6
        assert int(together[method].targets[0, 0]) == 2
    with pytest.raises(ValueError, match="once"):
        salience.explain_all(model, x, ["gradcam", "gradcam"])


def test_guided_gradcam_is_guided_backprop_times_the_upsampled_gradcam() -> None:
    torch.manual_seed(0)
    model, x = RandomConvNet(), torch.randn(2, 3, 12, 12)
    guided = salience.explain(model, x, method="guided_backprop").attributions
    cam = salience.explain(model, x, method="gradcam", layer="block2").attributions
    combined = salience.explain(model, x, method="guided_gradcam", layer="block2").attributions
    upsampled = F.interpolate(cam, size=(12, 12), mode="bilinear", align_corners=False)
    assert relative_error(combined, guided * upsampled.unsqueeze(2)) < 1e-6


def test_smoothgrad_over_a_gradient_cam_averages_layer_maps() -> None:
    torch.manual_seed(0)  # float64: four noiseless copies in one batch run other kernels than one
    model, x = RandomConvNet().double(), torch.randn(1, 3, 12, 12, dtype=torch.float64)
    smooth = salience.explain(
        model, x, method="smoothgrad", base="gradcam", layer="block2", n_samples=4, noise=0.0
    )
    plain = salience.explain(model, x, method="gradcam", layer="block2")
    assert smooth.attributions.shape == plain.attributions.shape == (1, 1, 6, 6)
    assert relative_error(smooth.attributions, plain.attributions) < 2**-22  # zero noise


# --- the bundled model and photo ---------------------------------------------------------------


def test_gradcam_of_the_predicted_cat_peaks_on_the_cat() -> None:
    from salience.zoo import SAMPLE_IMAGES, imagenet_class_names, load_model, model_spec

    image = model_spec().preset.prepare(SAMPLE_IMAGES["chelsea"]())
    explanation = salience.explain(load_model(), image.tensor, method="gradcam")
    assert "cat" in imagenet_class_names()[int(explanation.targets[0, 0])]
    assert explanation.info["layer"] == "_head_activation"
    on_photo = image.geometry.to_original(explanation.map(0, 0).numpy())
    row, col = np.unravel_index(np.nanargmax(on_photo), on_photo.shape)
    # chelsea() is 300×451; the cat's head fills x 100–360, y 40–300 (background on the right)
    assert 40 <= row < 300 and 100 <= col < 360, (row, col)


class RaisesOnBatches(RandomConvNet):
    """Fails only once its head sees more than one sample: in Ablation-CAM's ablated passes."""

    def forward(self, x: Tensor) -> Tensor:
        features = self.head(self.block2(self.block1(x)))
        if features.shape[0] > 1:
            raise RuntimeError("boom in an ablated pass")
        return self.fc(features.flatten(1))


@pytest.mark.parametrize("inference_copy", [True, False])
def test_a_call_that_raises_mid_ablation_leaves_no_hook_and_no_change(inference_copy: bool) -> None:
    torch.manual_seed(0)
    model = RaisesOnBatches().train()
    before = model_state(model)
    adapter = TorchAdapter(model, inference_copy=inference_copy)
    with pytest.raises(RuntimeError, match="boom in an ablated pass"):
        salience.explain(adapter, torch.randn(1, 3, 12, 12), method="ablationcam", layer="block2")
    assert_same_state(before, model_state(model))
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())
