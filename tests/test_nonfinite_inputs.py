"""NaN and infinite inputs are refused, overflowing models are reported, inputs stay untouched."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import salience
from salience.adapters.base import NonFiniteInputError, NonFiniteOutputError
from salience.adapters.fused import cached_fused
from salience.adapters.inference_copy import cached_inference_copy, folded_convolutions
from salience.adapters.torch import TorchAdapter

METHODS = {
    "gradient": {},
    "gradcam": {},
    "eigencam": {},
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"n_masks": 8, "grid": 2, "seed": 0},
    "integrated_gradients": {"steps": 4},
}


class Exp(nn.Module):
    """exp of its input: overflows float32 beyond 88."""

    def forward(self, x: Tensor) -> Tensor:
        return x.exp()


def conv_bn(*tail: nn.Module, head: tuple[nn.Module, ...] = ()) -> nn.Sequential:
    """``head``, a conv whose BatchNorm can be folded, ``tail``, pooling and a 3-class head."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        *head,
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        *tail,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


def images() -> Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", list(METHODS))
def test_non_finite_inputs_are_refused_by_every_method(method: str, bad: float) -> None:
    x = images()
    x[0, 1, 2, :3] = bad
    with pytest.raises(NonFiniteInputError, match=r"holds 3 non-finite values .*nan_to_num"):
        salience.explain(conv_bn(), x, method=method, **METHODS[method])
    assert issubclass(NonFiniteInputError, ValueError)


def test_after_a_refused_nan_the_next_finite_call_gets_the_folded_copy() -> None:
    model, x = conv_bn(), images()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        salience.explain(model, bad)
    salience.explain(model, x)
    copy = cached_inference_copy(model, x, fold=True, channels_last=True)
    assert folded_convolutions(copy) == {"0"}


def test_no_folding_or_fusion_verdict_is_cached_from_non_finite_outputs() -> None:
    model, x = conv_bn(), images()
    bad = x.clone()
    bad[:, :, 0, 0] = float("nan")  # both probed samples
    unverified = cached_inference_copy(model, bad, fold=True)
    assert not folded_convolutions(unverified)  # unfolded, since folding could not be checked
    copy = cached_inference_copy(model, x, fold=True)
    assert copy is not unverified and folded_convolutions(copy) == {"0"}
    assert cached_fused(model, (True, False), copy, bad) is None
    fused = cached_fused(model, (True, False), copy, x)
    assert fused is not None and cached_fused(model, (True, False), copy, x) is fused


@pytest.mark.parametrize("method", ["gradient", "eigencam", "occlusion", "ablationcam"])
def test_a_model_that_overflows_on_a_finite_input_is_reported(method: str) -> None:
    model = conv_bn(Exp())  # exp of the conv-BN-ReLU features
    huge = images() * 1e3
    options = METHODS.get(method, {"layer": "2"} if method == "ablationcam" else {})
    with pytest.raises(NonFiniteOutputError, match=r"non-finite values .* on a finite input"):
        salience.explain(model, huge, method=method, **options)
    # The overflowing probe decided nothing: a finite call folds as usual.
    x = images() * 0.1
    assert torch.isfinite(salience.explain(model, x, method=method, **options).attributions).all()
    copy = cached_inference_copy(model, x, fold=True, channels_last=True)
    assert folded_convolutions(copy) == {"0"}


class ClampsInPlace(nn.Module):
    """A forward that writes to its input, as some preprocessing wrappers do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = conv_bn()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.clamp_(min=0))


@pytest.mark.parametrize(
    "model",
    [lambda: conv_bn(head=(nn.ReLU(inplace=True),)), ClampsInPlace],
    ids=["relu-inplace-first", "clamp_"],
)
@pytest.mark.parametrize(
    "options",
    [{}, {"inference_copy": False, "channels_last": False}],
    ids=["copy", "model-itself"],
)
@pytest.mark.parametrize("method", ["occlusion", "gradcam"])
def test_the_callers_tensor_is_never_changed(model: type, options: dict, method: str) -> None:
    x = images()
    before = x.clone()
    adapter = TorchAdapter(model(), **options)
    salience.explain(adapter, x, method=method, **METHODS[method])
    assert torch.equal(x, before)


def test_the_onnx_adapter_refuses_non_finite_inputs(tmp_path: object) -> None:
    pytest.importorskip("onnxruntime")
    import warnings

    from salience.adapters.onnx import OnnxAdapter

    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            conv_bn(),
            (images(),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            dynamo=False,
        )
    x = images()
    x[1, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteInputError, match="holds 1 non-finite value "):
        salience.explain(OnnxAdapter(path), x, method="occlusion", window=4, stride=4)


def test_a_prepared_input_is_checked_once_until_it_is_written_to(monkeypatch) -> None:
    import salience.adapters.torch as torch_adapter

    checked: list[tuple[int, ...]] = []
    check = torch_adapter.check_finite_input

    def counting(x: Tensor) -> Tensor:
        checked.append(tuple(x.shape))
        return check(x)

    monkeypatch.setattr(torch_adapter, "check_finite_input", counting)
    adapter = TorchAdapter(conv_bn())
    x = images()
    prepared = adapter.prepare_input(x)
    again = adapter.prepare_input(prepared)
    assert checked == [tuple(x.shape)]  # the second call trusts the first one's check
    assert again.data_ptr() != prepared.data_ptr() and torch.equal(again, prepared)
    salience.make_explainer(adapter, "gradcam")(x, target=0)
    assert len(checked) == 2  # a method's call checks its input once, not again in its run
    prepared[0, 0, 0, 0] = float("nan")  # written to since: checked again, and refused
    with pytest.raises(NonFiniteInputError):
        adapter.prepare_input(prepared)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.complex64])
def test_finite_values_whose_sum_overflows_are_accepted_and_one_bad_value_is_counted(
    dtype: torch.dtype,
) -> None:
    from salience.adapters.base import non_finite_count

    large = torch.full(
        (2, 3, 4), torch.finfo(torch.float16 if dtype == torch.float16 else torch.float32).max / 2
    ).to(dtype)
    assert not torch.isfinite(large.sum()) and non_finite_count(large) == 0
    for bad in (float("nan"), float("inf"), -float("inf")):
        flawed = torch.ones(2, 3, 4, dtype=dtype)
        flawed[1, 2, 3] = bad
        assert non_finite_count(flawed) == 1
        large[0, 0, 0] = bad
        assert non_finite_count(large) == 1
        large[0, 0, 0] = large[0, 0, 1]
