"""Each adapter has exactly the capabilities it implements, and callers ask by protocol.

The capabilities (``salience.adapters.base``) are structural types: an ONNX model is a black
box and nothing more, a PyTorch or Keras model has them all. The server's watched adapter has
those of the adapter it wraps, except randomization (a randomized copy would run unwatched).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import salience
from salience.adapters.base import (
    CAPABILITIES,
    BlackBoxAdapter,
    GradientsUnavailableError,
    Need,
    Outputs,
    ScoreFn,
)
from salience.adapters.inference_copy import ModelState
from salience.adapters.layers import LayerError
from salience.adapters.program import ProgramAdapter
from salience.adapters.torch import EvalModeProvider, InferenceCopyProvider, TorchAdapter
from salience.errors import InvalidInputError
from salience.methods import black_box_methods
from salience.registry import available
from salience.server.watch import Watch, WatchedAdapter
from test_perturbation import OutOfMemory

# Keras 3.15 calls __array__ without numpy 2's copy keyword; torch.jit.script is deprecated.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


class GradientsOnly:
    """An adapter with a gradient pass but no access to the layers."""

    is_adapter = True
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.model = small_net()

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.detach().clone()

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        with torch.no_grad():
            return self.model(x)

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        x = x.detach().requires_grad_(True)
        logits = self.model(x)
        scores = score(logits)
        grads = [torch.autograd.grad(scores[:, k].sum(), x)[0] for k in range(scores.shape[1])]
        return Outputs(logits.detach(), scores.detach(), input_grad=torch.stack(grads, 1))


def onnx_adapter(folder: Path) -> BlackBoxAdapter:
    pytest.importorskip("onnxruntime")
    from salience.adapters.onnx import OnnxAdapter

    path = folder / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(small_net().eval(), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False)
    return OnnxAdapter(path, strip_softmax=False)


def keras_adapter(_folder: Path) -> BlackBoxAdapter:
    try:
        from salience.adapters.keras import KerasAdapter, import_keras

        keras = import_keras()
    except ImportError:
        pytest.skip("Keras 3 is not installed (the keras extra)")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    outputs = keras.layers.Dense(5, name="dense")(keras.layers.GlobalAveragePooling2D()(x))
    return KerasAdapter(keras.Model(inputs, outputs))


def watched(make: Callable[[Path], BlackBoxAdapter]) -> Callable[[Path], BlackBoxAdapter]:
    return lambda folder: WatchedAdapter(make(folder), Watch(60.0))


def torch_adapter(_folder: Path) -> BlackBoxAdapter:
    return TorchAdapter(small_net())


def program_adapter(_folder: Path) -> BlackBoxAdapter:
    return ProgramAdapter(torch.jit.script(small_net()))


#: adapter -> (black box, differentiable, layer access, randomizable)
EXPECTED: dict[str, tuple[Callable[[Path], object], tuple[bool, bool, bool, bool]]] = {
    "TorchAdapter": (torch_adapter, (True, True, True, True)),
    "KerasAdapter": (keras_adapter, (True, True, True, True)),
    "ProgramAdapter": (program_adapter, (True, True, True, True)),
    "OnnxAdapter": (onnx_adapter, (True, False, False, False)),
    "WatchedAdapter(TorchAdapter)": (watched(torch_adapter), (True, True, True, False)),
    "WatchedAdapter(ProgramAdapter)": (watched(program_adapter), (True, True, True, False)),
    "WatchedAdapter(OnnxAdapter)": (watched(onnx_adapter), (True, False, False, False)),
    "WatchedAdapter(GradientsOnly)": (
        watched(lambda _: GradientsOnly()),
        (True, True, False, False),
    ),
    "GradientsOnly (test fake)": (lambda _: GradientsOnly(), (True, True, False, False)),
    "OutOfMemory (test fake)": (lambda _: OutOfMemory(), (True, False, False, False)),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_each_adapter_has_the_capabilities_it_implements(name: str, tmp_path: Path) -> None:
    make, expected = EXPECTED[name]
    adapter = make(tmp_path)
    found = tuple(isinstance(adapter, protocol) for protocol in CAPABILITIES)
    assert found == expected, dict(zip([p.__name__ for p in CAPABILITIES], found, strict=True))


def test_a_model_object_is_not_mistaken_for_an_adapter() -> None:
    assert not any(isinstance(small_net(), protocol) for protocol in CAPABILITIES)


def test_the_black_box_methods_are_exactly_those_that_explain_a_black_box() -> None:
    listed = black_box_methods()
    assert listed, "no black-box method is registered"
    for name in available("method"):
        if name in listed:
            salience.make_explainer(OutOfMemory(), name)
        else:
            with pytest.raises(GradientsUnavailableError, match=", ".join(listed)):
                salience.make_explainer(OutOfMemory(), name)


def test_a_watched_black_box_is_refused_by_gradient_methods_like_the_black_box(
    tmp_path: Path,
) -> None:
    adapter = WatchedAdapter(onnx_adapter(tmp_path), Watch(60.0))
    with pytest.raises(GradientsUnavailableError, match="black-box models: "):
        salience.make_explainer(adapter, "gradient")
    x = torch.rand(2, 3, 8, 8)
    explanation = salience.explain(adapter, x, method="occlusion", window=4, stride=4)
    assert explanation.attributions.shape[0] == 2


def test_gradients_without_layers_run_gradient_methods_and_refuse_cams() -> None:
    adapter = GradientsOnly()
    x = torch.rand(2, 3, 8, 8)
    torch_run = TorchAdapter(adapter.model, inference_copy=False, channels_last=False).run
    expected = torch_run(x, lambda out: out[:, :1], Need(input_grad=True)).input_grad
    explanation = salience.explain(adapter, x, method="gradient", target=0)
    assert torch.equal(explanation.attributions, expected)  # the same arithmetic, run alike
    with pytest.raises(LayerError, match="gradcam needs the model's layers"):
        salience.make_explainer(adapter, "gradcam")


# --- what runs: module providers ---------------------------------------------------------------


class CountingProvider(EvalModeProvider):
    """The model in eval mode, counting the passes it serves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.passes = 0

    @contextmanager
    def runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> Iterator[nn.Module]:
        self.passes += 1
        with super().runnable(sample, layer, state) as model:
            yield model


def test_the_adapter_runs_what_its_provider_gives() -> None:
    net = small_net().train()
    provider = CountingProvider(net)
    adapter = TorchAdapter(net, provider=provider)
    x = torch.rand(2, 3, 8, 8)
    adapter.forward(x)
    salience.explain(adapter, x, method="gradcam")
    assert provider.passes == 2 and net.training  # the provider's eval mode was undone
    assert not adapter.inference_copy
    with pytest.raises(InvalidInputError, match=r"provider runs another module.*same module"):
        TorchAdapter(net, provider=EvalModeProvider(small_net()))


def test_each_adapter_chooses_a_provider_instead_of_overriding_the_engine(tmp_path: Path) -> None:
    assert type(TorchAdapter(small_net()).provider) is InferenceCopyProvider
    assert type(TorchAdapter(small_net(), inference_copy=False).provider) is EvalModeProvider
    assert type(program_adapter(tmp_path).provider) is EvalModeProvider
    keras = keras_adapter(tmp_path)
    assert type(keras.provider).__name__ == "KerasProvider"
    engine = {name for name in vars(TorchAdapter) if name.startswith("_") and name[1] != "_"}
    for adapter in (keras, program_adapter(tmp_path)):
        overridden = {name for cls in type(adapter).__mro__[:-2] for name in vars(cls)} & engine
        assert not overridden, f"{type(adapter).__name__} overrides {sorted(overridden)}"
