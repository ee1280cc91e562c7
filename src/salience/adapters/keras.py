"""Run Keras 3 models on Keras' torch backend: every salience method, no TensorFlow needed.

On the torch backend a Keras model is a ``torch.nn.Module`` whose layers compute with torch, so
:class:`KerasAdapter` builds on :class:`~salience.adapters.torch.TorchAdapter`. What differs is
handled at the boundary, on a private copy of the user's model:

- salience hands NCHW batches; a channels-last model gets them transposed, and a layer's
  channels-last output is seen as NCHW by the saliency methods (gradients flow through both).
- Layers are named as in Keras (``block5_conv3``, ``conv2``): each becomes a named submodule of
  :class:`KerasModule`, so CAMs and ``salience layers`` find them; nested models are searched too.
- A final softmax (``Dense(..., activation="softmax")``, ``Activation("softmax")``, ``Softmax()``)
  is made linear on the copy, so logits are explained (keras-vis' "softmax to linear" step); so
  is a final sigmoid (``Dense(1, activation="sigmoid")``, ``Activation("sigmoid")``): a binary
  or multi-label output's logits.

The copy is rebuilt whenever the user's model changes (its layers, their attributes and hooks,
the contents of its variables: :func:`keras_state`); the user's model is never modified.
Keras is the ``keras`` extra: ``pip install 'salience[keras]'``.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from salience.adapters.inference_copy import ModelState, current_state
from salience.adapters.layers import LayerError
from salience.adapters.randomize import (
    OTHER_STD,
    RandomizationError,
    RandomizationUnit,
    he_truncated_normal,
    unit_generator,
)
from salience.adapters.structured import OutputKey
from salience.adapters.torch import EvalModeProvider, TorchAdapter
from salience.errors import InvalidInputError, MissingPackageError, UnsupportedError, first_line

KERAS_INSTALL_HINT = "pip install 'salience[keras]'"
_SOFTMAX_NAMES = frozenset({"softmax", "log_softmax"})
_SIGMOID_NAMES = frozenset({"sigmoid"})
#: Per user model and options: its private NCHW module (weakly keyed: dropped with the model).
_MODULES: weakref.WeakKeyDictionary[Any, dict[tuple, KerasModule]] = weakref.WeakKeyDictionary()


def import_keras(backend: str = "torch") -> ModuleType:
    """Import Keras 3 on ``backend`` (``torch``, or ``tensorflow`` for the TensorFlow adapter).

    Keras chooses its backend once, when it is first imported, from ``KERAS_BACKEND``: that
    variable is set to ``backend`` only when Keras is not imported yet and the user set none. A
    ``KERAS_BACKEND`` the user set is never overwritten; when it names another backend, the
    error says so.

    Raises
    ------
    ImportError
        When Keras 3 is not installed, or runs (or is set to run) on another backend.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules and requested is None:
        os.environ["KERAS_BACKEND"] = backend
    try:
        import keras
    except ImportError as error:
        raise MissingPackageError(
            f"Keras models need Keras 3 (run on its torch backend): {KERAS_INSTALL_HINT}"
        ) from error
    version = str(getattr(keras, "__version__", "0"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 3:
        raise MissingPackageError(
            f"salience needs Keras 3, found Keras {version}: {KERAS_INSTALL_HINT}"
        )
    found = keras.backend.backend()
    if found != backend:
        fix = (
            "open the model with --backend tensorflow (salience.explain runs a model object on "
            "its own backend), or set KERAS_BACKEND=torch before anything imports keras"
            if found == "tensorflow"
            else f"set KERAS_BACKEND={backend} before anything imports keras"
        )
        raise MissingPackageError(
            f"Keras was already imported with the {found} backend (KERAS_BACKEND="
            f"{requested or found}); this needs its {backend} backend: {fix}"
        )
    return keras


def is_keras_model(model: object) -> bool:
    """Whether ``model`` is a Keras model (never imports Keras: none exists before it is)."""
    keras = sys.modules.get("keras")
    model_class = getattr(keras, "Model", None)
    return isinstance(model_class, type) and isinstance(model, model_class)


def keras_state(model: Any) -> ModelState:
    """The state of a Keras model: the same object as long as nothing of it changed.

    Its layers (identity, type, attributes, hooks) and the contents of its variables, compared
    as :func:`salience.adapters.inference_copy.model_state` compares a torch model's.
    """
    keras = import_keras()
    layers = [(layer.name, layer) for layer in _keras_layers(keras, model)]
    values = [variable.value for variable in model.weights]
    return current_state(model, [("", model), *layers], values)


def _keras_layers(keras: ModuleType, model: Any) -> Iterator[Any]:
    """Every layer of ``model``, nested models' layers included, in model order."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield layer
        if isinstance(layer, keras.Model):
            yield from _keras_layers(keras, layer)


def _output_layer(keras: ModuleType, model: Any) -> Any | None:
    """The layer that computes a functional or Sequential model's (first) output."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    layer = getattr(history, "operation", None)
    if layer is None and model.layers:
        layer = model.layers[-1]
    if isinstance(layer, keras.Model):
        return _output_layer(keras, layer)
    return layer


def strip_final_softmax(keras: ModuleType, model: Any) -> bool:
    """Make a final softmax of ``model`` linear, in place; whether there was one.

    Only for a private copy: the model then returns logits.
    """
    return strip_final_activation(keras, model, sigmoid=False) == "softmax"


def strip_final_activation(
    keras: ModuleType, model: Any, *, softmax: bool = True, sigmoid: bool = True
) -> str | None:
    """Make a final softmax or sigmoid of ``model`` linear, in place; which one it was.

    Only for a private copy: the model then returns logits.
    """
    layer = _output_layer(keras, model)
    kind = _final_activation(keras, layer)
    if kind is None or not (softmax if kind == "softmax" else sigmoid):
        return None
    if isinstance(layer, keras.layers.Softmax):
        layer.call = lambda inputs, mask=None: inputs
    else:
        layer.activation = keras.activations.linear
    return kind


def _final_activation(keras: ModuleType, layer: Any) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` when the output layer applies one, else None."""
    if layer is None:
        return None
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    if name in _SOFTMAX_NAMES or isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return "sigmoid" if name in _SIGMOID_NAMES else None


def ends_in_softmax(model: Any) -> bool:
    """Whether a Keras model's output layer applies a softmax."""
    keras = import_keras()
    return _final_activation(keras, _output_layer(keras, model)) == "softmax"


class KerasLayer(nn.Module):
    """A Keras layer's output, seen channels-first: where salience's hooks attach."""

    def forward(self, output: Any) -> Any:
        """The output itself; hooks on this module may read or replace it."""
        return output


@functools.cache
def _tap_class(keras_class: str) -> type[KerasLayer]:
    """A :class:`KerasLayer` subclass named after the Keras class (``salience layers`` shows it)."""
    return type(keras_class, (KerasLayer,), {"__module__": __name__})


class KerasModule(nn.Module):
    """A Keras model as a channels-first torch module whose submodules carry its layer names.

    Parameters
    ----------
    model : keras.Model
        The user's model; never modified. A private copy runs (rebuilt when the model's weights
        change); a model that cannot be copied (a subclassed model whose class Keras cannot
        find) runs itself, with hooks present only during a call.
    layout : {"nhwc", "nchw"}
        The layout the Keras model takes.
    strip_softmax : bool
        Explain the logits of a model whose output layer applies a softmax or a sigmoid.

    Notes
    -----
    Layers are reachable by their Keras name when it is unique in the model and a valid module
    name. A layer output of 4 or more dimensions is moved to channels-first for the hooks; other
    outputs (``(N, T, D)`` tokens, ``(N, C)`` vectors) are seen as they are.
    """

    def __init__(self, model: Any, *, layout: str = "nhwc", strip_softmax: bool = True) -> None:
        super().__init__()
        self._keras_module = import_keras()
        self._source = weakref.ref(model)
        self.layout = layout
        self.strip_softmax = strip_softmax
        self.stripped_softmax = False
        #: The final activation cut on the copy ("softmax", "sigmoid"), if any.
        self.stripped_activation: str | None = None
        self._state: ModelState | None = None
        self._running: list[Any] = []  # the model that runs; a list keeps it out of the tree
        self._layers: dict[str, Any] = {}
        self.refresh()
        for name, layer in self._layers.items():
            if not hasattr(self, name):  # a name like "forward" cannot be a submodule
                self.add_module(name, _tap_class(type(layer).__name__)())

    @property
    def keras_model(self) -> Any:
        """The Keras model that runs: the private copy (or the user's model, if not copyable)."""
        return self._running[0]

    @property
    def device(self) -> torch.device:
        """Where the model's variables live."""
        for variable in self.keras_model.weights:
            return variable.value.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's variables."""
        for variable in self.keras_model.weights:
            if variable.value.is_floating_point():
                return variable.value.dtype
        return torch.float32

    def refresh(self) -> ModelState:
        """Rebuild the private copy if the user's model changed since it was made.

        Returns
        -------
        ModelState
            The user's model's state (see :func:`keras_state`), which the copy now matches.
        """
        source = self._source()
        if source is None:
            raise ReferenceError("the Keras model of this adapter no longer exists")
        state = keras_state(source)
        if state is self._state:
            return state
        keras = self._keras_module
        try:
            running = copy.deepcopy(source)
        except Exception as error:
            running = source
            self.stripped_activation, self.stripped_softmax = None, False
            kind = _final_activation(keras, _output_layer(keras, source))
            if self.strip_softmax and kind is not None:
                warnings.warn(
                    f"cannot copy this Keras model ({first_line(error)}); its final "
                    f"{kind} is kept, so probabilities are explained, not logits",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            for variable in running.weights:
                variable.value.requires_grad_(False)
            if self.strip_softmax:
                self.stripped_activation = strip_final_activation(keras, running)
                self.stripped_softmax = self.stripped_activation == "softmax"
        layers: dict[str, Any] = {}
        seen: set[str] = set()
        for layer in _keras_layers(keras, running):
            if layer.name in seen:
                layers.pop(layer.name, None)  # ambiguous: two layers share the name
            elif layer.name and "." not in layer.name:
                layers[layer.name] = layer
            seen.add(layer.name)
        self._running[:] = [running]
        self._layers = layers
        self._state = state
        return state

    def _through(self, tap: nn.Module) -> Callable[..., Any]:
        channels_last = self.layout == "nhwc"

        def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
            if channels_last and isinstance(output, Tensor) and output.ndim >= 4:
                return tap(output.movedim(-1, 1)).movedim(1, -1)
            return tap(output)

        return hook

    def forward(self, x: Tensor) -> Any:
        """The model's output (all of its outputs) for an NCHW batch ``x``."""
        if self.layout == "nhwc" and x.ndim >= 4:
            x = x.movedim(1, -1)
        with ExitStack() as hooks:
            for name, tap in self.named_children():
                layer = self._layers.get(name)
                if layer is not None and (tap._forward_hooks or tap._forward_pre_hooks):
                    hooks.callback(layer.register_forward_hook(self._through(tap)).remove)
            try:
                output = self.keras_model(x)
            except ValueError as error:
                if refusal := _input_refusal(error, self.layout):
                    raise InvalidInputError(refusal) from error
                raise
        return output


_INCOMPATIBLE = re.compile(r"is incompatible with the layer: (.*)")
_EXPECTED_AXIS = re.compile(r"expected axis (-?\d+) of input shape to have value (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _input_refusal(error: ValueError, layout: str) -> str | None:
    """One line for Keras' refusal of an input's shape: what the model expected, and the fix.

    Keras says it in a paragraph under "Exception encountered when calling ..."; the line
    kept is the one naming the expected and received shapes.
    """
    match = _INCOMPATIBLE.search(_ANSI.sub("", str(error)))
    if match is None:
        return None
    detail = match.group(1).strip()
    expected = _EXPECTED_AXIS.search(detail)
    channel_axis = 3 if layout == "nhwc" else 1
    if expected is not None and int(expected.group(1)) % 4 == channel_axis:
        fix = f"prepare {expected.group(2)}-channel images: --channels {expected.group(2)}"
    else:
        fix = "prepare images as the model takes them (--size, --channels, --layout)"
    return f"the Keras model refused its input ({detail}); {fix}"


def keras_module(model: Any, *, layout: str = "nhwc", strip_softmax: bool = True) -> KerasModule:
    """The private :class:`KerasModule` of ``model`` for these options, made once per model."""
    modules = _MODULES.setdefault(model, {})
    key = (layout, strip_softmax)
    if key not in modules:
        modules[key] = KerasModule(model, layout=layout, strip_softmax=strip_softmax)
    return modules[key]


def keras_input_shape(model: Any) -> tuple[int | None, ...] | None:
    """The static shape of a Keras model's first input (batch included), when it has one."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    return tuple(d if isinstance(d, int) else None for d in inputs[0].shape)


def image_size(shape: Sequence[int | None] | None, layout: str) -> tuple[int, int] | None:
    """(height, width) of a static 4-D input shape (batch included) in ``layout``, else None."""
    if shape is None or len(shape) != 4:
        return None
    height, width = (shape[1], shape[2]) if layout == "nhwc" else (shape[2], shape[3])
    return (height, width) if height and width else None


class KerasProvider(EvalModeProvider):
    """What a :class:`KerasAdapter` runs: its :class:`KerasModule`, whose private Keras copy is
    brought up to the user's model before each pass (its state is the Keras model's)."""

    def __init__(self, module: KerasModule) -> None:
        super().__init__(module)
        self.module = module

    def state(self) -> ModelState:
        """The Keras model's state (the private copy is brought up to it first)."""
        return self.module.refresh()

    @contextmanager
    def runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> Iterator[nn.Module]:
        """The module in eval mode, its copy current (``state``: just refreshed)."""
        if state is None:
            self.module.refresh()
        with super().runnable(sample, layer, state) as model:
            yield model


class KerasAdapter(TorchAdapter):
    """Adapter for Keras 3 models, run on Keras' torch backend.

    Every method works as on a ``torch.nn.Module``: gradients, CAMs on layers named as in Keras,
    guided backprop, perturbations. Batches are NCHW as everywhere in salience.

    Parameters
    ----------
    model : keras.Model
        The model (functional, Sequential, or subclassed); it is never modified.
    layout : {"nhwc", "nchw"}, optional
        The layout the model takes; by default read from its input shape, else Keras'
        ``image_data_format``.
    strip_softmax : bool
        Explain the logits when the output layer applies a softmax or a sigmoid (on a private
        copy).
    output : str or int, optional
        Which output of a model with several to explain (an index, or a key of a dict of
        outputs); by default the first.
    """

    def __init__(
        self,
        model: Any,
        *,
        layout: str | None = None,
        strip_softmax: bool = True,
        output: OutputKey = None,
    ) -> None:
        keras = import_keras()
        if not isinstance(model, keras.Model):
            raise UnsupportedError(f"expected a keras.Model, got {type(model).__name__}")
        self.keras_model = model
        layout = (layout or _default_layout(keras, model)).lower()
        if layout not in ("nhwc", "nchw"):
            raise InvalidInputError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
        module = keras_module(model, layout=layout, strip_softmax=strip_softmax)
        # The module runs a private copy already: no second copy, no fusion.
        super().__init__(
            module,
            fold_batchnorm=False,
            strip_softmax=False,
            strip_sigmoid=False,
            output=_first_of_a_list(model) if output is None else output,
            provider=KerasProvider(module),
        )
        self.layout = layout

    @property
    def device(self) -> torch.device:
        """Where the model's variables live."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's variables."""
        return self.model.dtype

    @property
    def stripped_softmax(self) -> bool:
        """Whether a final softmax is bypassed (logits are explained)."""
        return self.model.stripped_softmax

    def final_activation(self, x: Tensor) -> str | None:
        """The final activation cut on the private copy (``"softmax"``, ``"sigmoid"``), if any."""
        self.model.refresh()
        return self.model.stripped_activation

    def layer_names(self) -> list[str]:
        """The Keras names of the layers that can be captured."""
        return [name for name, _ in self.model.named_children()]

    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the model's static input shape, if it has one."""
        return image_size(keras_input_shape(self.keras_model), self.layout)

    def input_channels(self) -> int | None:
        """The channels of the model's static input shape, if it has them."""
        shape = keras_input_shape(self.keras_model)
        if shape is None or len(shape) != 4:
            return None
        return shape[3] if self.layout == "nhwc" else shape[1]

    def randomization_units(
        self, x: Tensor, layers: Sequence[str] | None = None
    ) -> list[RandomizationUnit]:
        """The Keras layers a randomization test re-initializes, from the output down.

        Layers with weights, in model order, a normalization layer joined to the layer before
        it; or the layers named in ``layers``, in that order.
        """
        return keras_randomization_units(import_keras(), self.keras_model, layers)

    def randomized(self, units: Sequence[RandomizationUnit], *, seed: int) -> KerasAdapter:
        """An adapter of a copy of the Keras model with ``units`` re-initialized (seeded).

        The rules of :mod:`salience.adapters.randomize`, with Keras' kernel layout: fan-in is
        the product of a kernel's dimensions but the last (as Keras' own initializers count it).
        """
        keras = import_keras()
        try:
            duplicate = copy.deepcopy(self.keras_model)
        except Exception as error:
            raise RandomizationError(
                f"randomization works on a copy of the model, and copying it failed: {error}"
            ) from error
        for unit in units:
            generator = unit_generator(seed, unit, torch.device("cpu"))
            for name in unit.modules:
                reinitialize_keras_layer(keras, duplicate.get_layer(name), generator)
        return KerasAdapter(
            duplicate,
            layout=self.layout,
            strip_softmax=self.model.strip_softmax,
            output=self.output,
        )


def _first_of_a_list(model: Any) -> int | None:
    """0 for a model whose outputs are a list (its first is explained by default), else None."""
    try:
        structure = model.output
    except (AttributeError, ValueError):  # a Sequential or subclassed model before it is built
        return None
    return 0 if isinstance(structure, list | tuple) else None


def keras_randomization_units(
    keras: ModuleType, model: Any, layers: Sequence[str] | None = None
) -> list[RandomizationUnit]:
    """The layers of a Keras model (any flavour: ``keras`` or ``tf_keras``) a randomization test
    re-initializes, from the output down (see :meth:`KerasAdapter.randomization_units`)."""
    if layers is not None:
        units = []
        for name in layers:
            try:
                layer = model.get_layer(name)
            except ValueError as error:
                raise LayerError(f"the Keras model has no layer {name!r}") from error
            if not layer.weights:
                raise LayerError(f"layer {name!r} has no parameters to randomize")
            units.append(RandomizationUnit(name, (name,)))
        return units
    groups: list[list[str]] = []
    for layer in _keras_layers(keras, model):
        if not layer.weights or isinstance(layer, keras.Model):
            continue
        if groups and isinstance(layer, _keras_norm_types(keras)):
            groups[-1].append(layer.name)
        else:
            groups.append([layer.name])
    if not groups:
        raise LayerError("the Keras model has no parameters to randomize")
    return [RandomizationUnit(group[0], tuple(group)) for group in reversed(groups)]


def _keras_norm_types(keras: ModuleType) -> tuple[type, ...]:
    layers = keras.layers
    return (layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization)


_NORM_VALUES = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}


def reinitialize_keras_layer(keras: ModuleType, layer: Any, generator: torch.Generator) -> None:
    """New weights for one Keras layer (``keras`` or ``tf_keras``), drawn from ``generator``
    (see :meth:`KerasAdapter.randomized`)."""
    norm = isinstance(layer, _keras_norm_types(keras))
    for variable in layer.weights:
        name = str(getattr(variable, "path", variable.name)).rsplit("/", 1)[-1].split(":")[0]
        shape = tuple(variable.shape)
        if norm:
            values = torch.full(shape, _NORM_VALUES.get(name, 0.0))
        elif len(shape) >= 2:
            values = he_truncated_normal(shape, math.prod(shape[:-1]), generator)
        elif name == "bias":
            values = torch.zeros(shape)
        else:
            values = he_truncated_normal(shape, 1, generator, std=OTHER_STD)
        dtype = variable.dtype
        variable.assign(values.numpy().astype(getattr(dtype, "as_numpy_dtype", dtype)))


def _default_layout(keras: ModuleType, model: Any) -> str:
    from salience.adapters.onnx import infer_layout

    shape = keras_input_shape(model)
    if shape is not None and len(shape) == 4:
        layout, certain = infer_layout(shape)
        if certain:
            return layout
    return "nhwc" if keras.backend.image_data_format() == "channels_last" else "nchw"


__all__ = [
    "KERAS_INSTALL_HINT",
    "KerasAdapter",
    "KerasModule",
    "import_keras",
    "is_keras_model",
]
