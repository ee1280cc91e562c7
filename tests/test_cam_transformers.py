"""Class activation maps on vision transformers: token outputs (N, T, D) laid out on a grid."""

from __future__ import annotations

import pytest
import torch
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
from salience.adapters.inference_copy import cached_inference_copy
from salience.adapters.torch import TorchAdapter
from salience.methods.cam import tokens_to_grid

LAYER = "blocks.1.norm1"  # inside the last block, before attention mixes the tokens


# --- a tiny vision transformer --------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block: attention and an MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Strided-conv patches, a class token, optional register tokens, two blocks, a linear head.

    The tokens are ordered ``[class, registers..., patches (row by row)]``.
    """

    def __init__(
        self,
        image: tuple[int, int] = (16, 16),
        patch: int = 4,
        dim: int = 8,
        registers: int = 0,
        classes: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.grid = (image[0] // patch, image[1] // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.registers = nn.Parameter(torch.zeros(1, registers, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                scale = 1.0 if name.endswith("norm1.weight") or "token" in name else 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        n = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), patches], dim=1) + self.pos_embed
        registers = self.registers.expand(n, -1, -1)
        tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        tokens = self.blocks(tokens)
        return self.head(self.norm(tokens)[:, 0])


# (model options, input size, CAM options, patch grid, prefix tokens)
VARIANTS = {
    "class-token": ({}, (16, 16), {}, (4, 4), 1),
    "registers-inferred": ({"registers": 4}, (16, 16), {}, (4, 4), 5),
    "registers-non-square": ({"registers": 2}, (8, 16), {"grid": (2, 4)}, (2, 4), 3),
}


def vit_and_inputs(variant: str, dtype: torch.dtype = torch.float32):
    options, size, cam_options, grid, prefix = VARIANTS[variant]
    model = TinyViT(image=size, **options).to(dtype).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model, x, cam_options, grid, prefix


def hooks_left(model: nn.Module) -> list[str]:
    """Names of the modules that still carry a hook of any kind."""
    kinds = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    return [
        f"{name or '<root>'}.{kind}"
        for name, module in model.named_modules()
        for kind in kinds
        if getattr(module, kind, None)
    ]


# --- tokens_to_grid ---------------------------------------------------------------------------


def position_tokens(prefix: int, height: int, width: int, batch: tuple[int, ...] = (2,)):
    """Tokens whose channels say where they are: (row, column, flat index); -1 for prefixes."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    patches = torch.stack([rows, cols, torch.arange(height * width)], dim=1).float()
    tokens = torch.cat([torch.full((prefix, 3), -1.0), patches])
    return tokens.expand(*batch, *tokens.shape).clone()


@pytest.mark.parametrize(("prefix", "grid"), [(1, (4, 4)), (5, (4, 4)), (0, (3, 3)), (1, (5, 5))])
def test_tokens_to_grid_drops_the_prefix_and_lays_patches_row_by_row(prefix, grid) -> None:
    height, width = grid
    tokens = position_tokens(prefix, height, width)
    inferred = tokens_to_grid(tokens)
    explicit = tokens_to_grid(tokens, grid)
    for maps in (inferred, explicit):
        assert maps.shape == (2, 3, height, width)
        assert (maps >= 0).all()  # no prefix token survives
        expected_rows = torch.arange(height).reshape(-1, 1).expand(height, width)
        expected_cols = torch.arange(width).reshape(1, -1).expand(height, width)
        assert torch.equal(maps[:, 0], expected_rows.float().expand(2, -1, -1))
        assert torch.equal(maps[:, 1], expected_cols.float().expand(2, -1, -1))
        assert torch.equal(maps[1, 2].flatten(), torch.arange(height * width).float())


def test_tokens_to_grid_with_an_explicit_non_square_grid() -> None:
    tokens = position_tokens(3, 2, 5)  # 13 tokens: a square guess would be 3×3 with 4 prefixes
    maps = tokens_to_grid(tokens, (2, 5))
    assert maps.shape == (2, 3, 2, 5)
    assert torch.equal(maps[0, 0], torch.tensor([[0.0] * 5, [1.0] * 5]))
    assert torch.equal(maps[0, 1], torch.arange(5.0).expand(2, 5))
    tall = tokens_to_grid(position_tokens(1, 6, 2), (6, 2))
    assert torch.equal(tall[0, 2], torch.arange(12.0).reshape(6, 2))


def test_tokens_to_grid_keeps_leading_dimensions() -> None:
    tokens = position_tokens(1, 3, 4, batch=(2, 5))  # e.g. gradients (N, K, T, D)
    maps = tokens_to_grid(tokens, (3, 4))
    assert maps.shape == (2, 5, 3, 3, 4)
    assert torch.equal(maps[1, 4, 2], torch.arange(12.0).reshape(3, 4))


def test_tokens_to_grid_rejects_impossible_grids() -> None:
    with pytest.raises(ValueError, match=r"a 5×5 grid needs 25 tokens; the layer has 17"):
        tokens_to_grid(torch.zeros(1, 17, 4), (5, 5))
    with pytest.raises(ValueError, match=r"cannot lay 3 tokens out on a grid; pass grid=\(H, W\)"):
        tokens_to_grid(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="pass grid"):
        tokens_to_grid(torch.zeros(2, 1, 8))


def test_a_cam_with_an_impossible_grid_says_so() -> None:
    model, x, _, _, _ = vit_and_inputs("class-token")
    with pytest.raises(ValueError, match="needs 25 tokens; the layer has 17"):
        salience.explain(model, x, method="gradcam", layer=LAYER, grid=(5, 5))


# --- every CAM on a vision transformer ---------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", CAM_METHODS)
def test_every_cam_runs_on_a_vision_transformer(method: str, variant: str) -> None:
    model, x, cam_options, (gh, gw), _ = vit_and_inputs(variant)
    explanation = salience.explain(
        model, x, method=method, target="top-2", layer=LAYER, **cam_options
    )
    maps = explanation.attributions
    if method == "guided_gradcam":
        assert maps.shape == (2, 2, *x.shape[1:])
    else:
        assert maps.shape == (2, 2, gh, gw)
        assert explanation.info["feature_shape"] == [8, gh, gw]
        assert (maps >= 0).all()
    assert explanation.info["layer"] == LAYER
    assert torch.isfinite(maps).all()
    assert maps.abs().amax() > 0
    assert explanation.targets.shape == (2, 2)


@pytest.mark.parametrize("method", GRID_CAMS)
def test_tokens_false_reads_a_3d_output_as_a_1d_feature_map(method: str) -> None:
    model, x, _, _, _ = vit_and_inputs("class-token")
    if method == "scorecam":  # masks images with a 2-D map: a 1-D map is refused
        with pytest.raises(ValueError, match="2-D feature map"):
            salience.explain(model, x, method=method, layer=LAYER, tokens=False)
        return
    maps = salience.explain(model, x, method=method, layer=LAYER, tokens=False).attributions
    assert maps.shape == (2, 1, 8)  # (N, K, L): the 17 tokens are the channels, D the length
    assert torch.isfinite(maps).all()


# --- a known answer ----------------------------------------------------------------------------

SIGNAL = (1, 2)  # the patch (row, column) whose channel 0 drives class 0
DISTRACTOR = (3, 0)  # the patch whose channel 1 drives class 1


class SignalTokens(nn.Module):
    """Class 0's logit is 4 · (mean over the patch tokens of channel 0 of ``tokens``) + 0.1.

    Channel 0 of a patch token is the sum of image channel 0 over the patch, channel 1 that of
    image channel 1 times ``distractor``; channels 2..5 see image channel 2 faintly and carry a
    position embedding. Class 1 reads channel 1 the same way. ``tokens`` (a token-wise linear
    layer, the identity) is the layer explained; a transformer block after it mixes the tokens
    but only feeds class 2.
    """

    def __init__(self, distractor: float) -> None:
        super().__init__()
        dim = 6
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, dim))
        self.tokens = nn.Linear(dim, dim)
        self.block = Block(dim)
        self.head = nn.Linear(dim, 3)
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            weight = torch.zeros(dim, 3, 4, 4)
            weight[0, 0] = 1.0
            weight[1, 1] = distractor
            weight[2:, 2] = torch.randn(dim - 2, 4, 4, generator=generator) * 0.02
            self.patch_embed.weight.copy_(weight)
            self.pos_embed[..., :2] = 0
            self.tokens.weight.copy_(torch.eye(dim))
            self.tokens.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, 0] = 4.0
            self.head.weight[1, 1] = 4.0
            self.head.bias.copy_(torch.tensor([0.1, 0.0, 0.0]))
            self.mixed_head = nn.Parameter(torch.randn(dim, generator=generator) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        features = self.tokens(torch.cat([cls, patches], dim=1) + self.pos_embed)
        logits = self.head(features[:, 1:].mean(dim=1))
        mixed = self.block(features)[:, 0] @ self.mixed_head
        return logits + torch.stack([torch.zeros_like(mixed)] * 2 + [mixed], dim=1)


def signal_input() -> Tensor:
    x = torch.zeros(1, 3, 16, 16)
    generator = torch.Generator().manual_seed(3)
    x[0, 2] = torch.rand(16, 16, generator=generator)  # faint texture everywhere
    (r, c), (dr, dc) = SIGNAL, DISTRACTOR
    x[0, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0
    x[0, 1, 4 * dr : 4 * dr + 4, 4 * dc : 4 * dc + 4] = 1.0
    return x


def peak(cam: Tensor) -> tuple[int, int]:
    return divmod(int(cam.argmax()), cam.shape[-1])


@pytest.mark.parametrize("distractor", [0.25, 5.0], ids=["weak-distractor", "strong-distractor"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_peaks_on_the_patch_that_drives_the_class(method: str, distractor: float) -> None:
    model = SignalTokens(distractor).eval()
    x = signal_input()
    explanation = salience.explain(model, x, method=method, target=0, layer="tokens")
    cam = explanation.attributions[0, 0]
    if method == "guided_gradcam":
        # Input resolution: the input gradient is uniform over image channel 0, so the product
        # peaks where the upsampled Grad-CAM does: inside the signal patch's 4×4 pixels.
        assert cam.shape == (3, 16, 16)
        row, col = peak(cam.abs().amax(dim=0))
        assert (row // 4, col // 4) == SIGNAL
        return
    assert cam.shape == (4, 4)
    if method == "eigencam" and distractor > 1:
        # Eigen-CAM is class-agnostic: it shows the first principal component of the
        # activations, here the distractor channel, 5 times stronger than the signal channel.
        assert peak(cam) == DISTRACTOR
        return
    assert peak(cam) == SIGNAL
    others = cam.clone()
    others[SIGNAL] = -torch.inf
    assert cam[SIGNAL] > 2 * others.max()  # a clear peak, not a near tie


def test_class_discriminative_cams_of_the_distractor_class_peak_on_the_distractor() -> None:
    model = SignalTokens(0.25).eval()
    x = signal_input()
    for method in ["gradcam", "hirescam", "layercam", "ablationcam", "scorecam"]:
        cam = salience.explain(model, x, method=method, target=1, layer="tokens").attributions
        assert peak(cam[0, 0]) == DISTRACTOR, method


# --- the formulas, computed by hand on tokens -----------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcam_on_tokens_equals_the_hand_formula(variant: str) -> None:
    model, x, cam_options, (gh, gw), prefix = vit_and_inputs(variant, torch.float64)
    target = 1
    activations, gradients = layer_capture(model, x, LAYER, lambda out: out[:, target])
    n, _, depth = activations.shape
    a = activations[:, prefix:].reshape(n, gh, gw, depth).permute(0, 3, 1, 2)
    g = gradients[:, prefix:].reshape(n, gh, gw, depth).permute(0, 3, 1, 2)
    weights = g.mean(dim=(2, 3))
    expected = (weights[:, :, None, None] * a).sum(dim=1).clamp_min(0)
    assert expected.abs().amax() > 0
    explanation = salience.explain(
        model, x, method="gradcam", target=target, layer=LAYER, **cam_options
    )
    assert explanation.attributions.shape == (2, 1, gh, gw)
    assert relative_error(explanation.attributions[:, 0], expected) < 1e-6


def test_hirescam_on_tokens_equals_the_hand_formula() -> None:
    model, x, _, (gh, gw), prefix = vit_and_inputs("class-token", torch.float64)
    activations, gradients = layer_capture(model, x, LAYER, lambda out: out[:, 2])
    n = activations.shape[0]
    product = (activations * gradients)[:, prefix:].sum(dim=-1).reshape(n, gh, gw)
    expected = product.clamp_min(0)
    maps = salience.explain(model, x, method="hirescam", target=2, layer=LAYER).attributions
    assert relative_error(maps[:, 0], expected) < 1e-6


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("variant", ["class-token", "registers-non-square"])
def test_ablationcam_on_tokens_zeroes_the_channel_in_every_token(variant, chunk_size) -> None:
    model, x, cam_options, (gh, gw), prefix = vit_and_inputs(variant, torch.float64)
    target = 0
    module = model.get_submodule(LAYER)
    with torch.no_grad():
        activations, _ = layer_capture(model, x, LAYER, lambda out: out[:, target])
        original = model(x)[:, target]
        depth = activations.shape[-1]
        ablated = []
        for channel in range(depth):

            def zero(_module, _inputs, output, channel=channel):
                output = output.clone()
                output[..., channel] = 0
                return output

            handle = module.register_forward_hook(zero)
            try:
                ablated.append(model(x)[:, target])
            finally:
                handle.remove()
    ablated = torch.stack(ablated, dim=1)  # (N, D)
    weights = (original[:, None] - ablated) / original[:, None]
    n = x.shape[0]
    grid = activations[:, prefix:].reshape(n, gh, gw, depth).permute(0, 3, 1, 2)
    expected = (weights[:, :, None, None] * grid).sum(dim=1).clamp_min(0)
    assert expected.abs().amax() > 0
    explanation = salience.explain(
        model,
        x,
        method="ablationcam",
        target=target,
        layer=LAYER,
        chunk_size=chunk_size,
        **cam_options,
    )
    assert relative_error(explanation.attributions[:, 0], expected) < 1e-5


def test_explain_all_on_tokens_equals_each_method_alone() -> None:
    model, x, _, _, _ = vit_and_inputs("class-token")
    together = salience.explain_all(model, x, CAM_METHODS, target=1, layer=LAYER)
    for method in CAM_METHODS:
        alone = salience.explain(model, x, method=method, target=1, layer=LAYER)
        assert relative_error(together[method].attributions, alone.attributions) < 1e-6, method


# --- hooks and model state ------------------------------------------------------------------


@pytest.mark.parametrize("inference_copy", [True, False], ids=["copy", "own-model"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_no_hook_remains_and_the_model_is_unchanged(method: str, inference_copy: bool) -> None:
    model, x, _, _, _ = vit_and_inputs("registers-inferred")
    model.train()  # every flag must come back as it was
    model.blocks[0].attn.in_proj_weight.requires_grad_(False)
    before = model_state(model)
    adapter = TorchAdapter(model, inference_copy=inference_copy)
    explanation = salience.explain(adapter, x, method=method, target=0, layer=LAYER)
    assert torch.isfinite(explanation.attributions).all()
    assert hooks_left(model) == []
    assert_same_state(before, model_state(model))
    if inference_copy:
        copy = cached_inference_copy(model, x, fold=True, channels_last=True)
        assert copy is not None and copy is not model
        assert hooks_left(copy) == []
        assert not copy.training and not any(p.requires_grad for p in copy.parameters())


def test_no_hook_remains_after_a_failing_call() -> None:
    model, x, _, _, _ = vit_and_inputs("class-token")
    before = model_state(model)
    adapter = TorchAdapter(model, inference_copy=False)
    for method in CAM_METHODS:
        with pytest.raises(ValueError, match="grid"):
            salience.explain(adapter, x, method=method, layer=LAYER, grid=(3, 7))
        assert hooks_left(model) == [], method
    assert_same_state(before, model_state(model))
