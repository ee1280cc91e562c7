"""Run TensorFlow models natively: ``tf_keras`` models, Keras 3 on the TensorFlow backend, and
SavedModel signatures.

:class:`TensorFlowAdapter` takes a Keras model of either flavour (``tf_keras``, the Keras 2 of
``TF_USE_LEGACY_KERAS=1``, or Keras 3 imported with ``KERAS_BACKEND=tensorflow``) and implements
the pass contract with ``tf.GradientTape``:

- the model runs in TensorFlow; its outputs cross to torch, where the method's score function
  (a torch function of the outputs) is evaluated. The gradient of each score with respect to the
  outputs, taken by torch, is the cotangent TensorFlow's tape pulls back to the input and the
  layer (``tape.gradient(outputs, sources, output_gradients=cotangent)``): the chain rule, so the
  gradients are exact for any score function.
- a layer's activations and their gradients come from a functional model with that layer's
  output as a second output (as tf-keras-vis builds it).
- everything runs on a private clone of the user's model (``clone_model`` and its weights),
  rebuilt whenever the model changes: a final softmax or sigmoid is made linear there (logits
  are explained), and for guided backpropagation a second clone's ReLUs get the guided rule
  (``tf.custom_gradient``). The user's model is never called, and never modified.
- salience's batches are NCHW torch tensors; a channels-last model gets them transposed, and a
  layer's channels-last output is seen as ``(N, C, H, W)``, as for Keras on the torch backend.

:class:`SignatureAdapter` runs a SavedModel's serving signature (no Keras layers): its outputs
and input gradients, no layer access. TensorFlow is the ``tensorflow`` extra:
``pip install 'salience[tensorflow]'``.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
import xxhash
from torch import Tensor, nn

from salience.adapters.base import (
    Need,
    Outputs,
    ScoreFn,
    check_batch,
    check_finite_input,
    check_scaling_arguments,
)
from salience.adapters.inference_copy import ModelState, cached_for, current_state
from salience.adapters.keras import (
    _default_layout,
    _keras_layers,
    _output_layer,
    _tap_class,
    image_size,
    keras_input_shape,
    keras_randomization_units,
    reinitialize_keras_layer,
)
from salience.adapters.layers import LayerError, LayerInfo, LayerLike, choose_layer, layer_name
from salience.adapters.randomize import RandomizationError, RandomizationUnit, unit_generator
from salience.errors import InvalidInputError, MissingPackageError, UnsupportedError, first_line

TENSORFLOW_INSTALL_HINT = "pip install 'salience[tensorflow]'"
CUT_ACTIVATIONS = frozenset({"softmax", "log_softmax", "sigmoid"})
"""Final activations made linear on the private clone: the logits before them are explained."""
_RELU_NAMES = frozenset({"relu", "relu6"})
_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
#: Per user model and state: its private clones, keyed by (backward rule, ...).
_CLONES: weakref.WeakKeyDictionary[Any, tuple[ModelState, dict]] = weakref.WeakKeyDictionary()
#: Per user model: the holder of its weights' digests (a node of its state).
_DIGESTS: weakref.WeakKeyDictionary[Any, _WeightDigests] = weakref.WeakKeyDictionary()


def import_tensorflow() -> ModuleType:
    """Import TensorFlow, or say how to install it.

    TensorFlow imports Keras 3 as it starts (``tf.keras``), and Keras then chooses its backend
    for the whole process. Unless the user chose one (``KERAS_BACKEND``, or ``tf_keras`` with
    ``TF_USE_LEGACY_KERAS=1``), ``KERAS_BACKEND`` is set to ``torch`` first: salience's default
    for Keras files, kept when a TensorFlow model is explained before one.
    """
    chosen = "KERAS_BACKEND" in os.environ or "TF_USE_LEGACY_KERAS" in os.environ
    if "tensorflow" not in sys.modules and "keras" not in sys.modules and not chosen:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import tensorflow
    except ImportError as error:
        raise MissingPackageError(
            f"TensorFlow models need TensorFlow: {TENSORFLOW_INSTALL_HINT}"
        ) from error
    return tensorflow


def keras_flavour(model: object) -> ModuleType | None:
    """The Keras package whose model ``model`` is when it runs on TensorFlow: ``tf_keras``, or
    ``keras`` imported on the TensorFlow backend; None otherwise (never imports either)."""
    legacy = sys.modules.get("tf_keras")
    if legacy is not None and isinstance(model, legacy.Model):
        return legacy
    keras = sys.modules.get("keras")
    model_class = getattr(keras, "Model", None)
    if isinstance(model_class, type) and isinstance(model, model_class):
        backend = getattr(getattr(keras, "backend", None), "backend", None)
        if callable(backend) and backend() == "tensorflow":
            return keras
    return None


def is_tensorflow_model(model: object) -> bool:
    """Whether ``model`` is a Keras model that computes with TensorFlow."""
    return keras_flavour(model) is not None


def _lock_for(model: object) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class _WeightDigests:
    """A node of a TensorFlow model's state: the digest of every variable's bytes."""

    def __init__(self) -> None:
        self.digests: tuple = ()
        self._reader: tuple[tuple[int, ...], Any] | None = None

    def read(self, variables: Sequence[Any]) -> list[Any]:
        """The values of ``variables``, read by one ``tf.function`` (one call, not one a
        variable: 0.4 s → a few ms for MobileNetV2's 262)."""
        key = tuple(id(variable) for variable in variables)
        if self._reader is None or self._reader[0] != key:
            tf = import_tensorflow()
            listed = list(variables)
            self._reader = (key, tf.function(lambda: [tf.identity(v) for v in listed]))
        return [value.numpy() for value in self._reader[1]()] if variables else []


def tensorflow_state(keras: ModuleType, model: Any) -> ModelState:
    """The state of a TensorFlow Keras model: the same object as long as nothing of it changed.

    Its layers (name, type, identity, activation, a replaced ``call``) and a digest of each
    variable's contents; checked once per explanation, as a torch model's state is. (A Keras
    layer's other attributes are not compared: walking them costs more than the pass.)
    """
    holder = _DIGESTS.get(model)
    if holder is None:
        holder = _DIGESTS[model] = _WeightDigests()

    def nodes() -> Iterator[tuple[str, object]]:  # read only when the state is checked
        layers = tuple(
            (
                layer.name,
                type(layer).__qualname__,
                id(layer),
                id(getattr(layer, "activation", None)),
                id(vars(layer).get("call")),
                bool(getattr(layer, "trainable", True)),
            )
            for layer in _keras_layers(keras, model)
        )
        values = [np.asarray(value) for value in holder.read(model.weights)]
        weights = tuple(
            (str(v.dtype), v.shape, xxhash.xxh3_128_intdigest(np.ascontiguousarray(v).data))
            for v in values
        )
        holder.digests = (id(model), layers, weights)
        yield ("model", holder)

    return current_state(model, nodes())


def _guided_relu(tf: ModuleType, upper: float | None = None) -> Callable[[Any], Any]:
    """ReLU (ReLU6 with ``upper``) whose gradient passes only where the input is inside and the
    incoming gradient is positive (Springenberg et al.), as ``salience.adapters.rules``."""

    @tf.custom_gradient
    def guided(x: Any) -> Any:
        inside = x > 0 if upper is None else tf.logical_and(x > 0, x < upper)
        y = tf.nn.relu(x) if upper is None else tf.clip_by_value(x, 0.0, upper)

        def grad(dy: Any) -> Any:
            return dy * tf.cast(dy > 0, dy.dtype) * tf.cast(inside, dy.dtype)

        return y, grad

    return lambda x, *_args, **_kwargs: guided(x)


class _Clone:
    """A private clone of the user's model and the functional models built on it."""

    def __init__(self, keras: ModuleType, source: Any, *, cut: bool, rule: str | None) -> None:
        self.keras = keras
        self.cut_activation: str | None = None
        self.scales: Any = None  # set during a scaled pass (scaled_layer_outputs)
        self._captures: dict[str, Any] = {}
        self._compiled: Any = None
        self._functions: dict[tuple, Any] = {}
        try:
            model = keras.models.clone_model(source)
            model.set_weights(source.get_weights())
        except Exception as error:
            if rule is not None:
                raise UnsupportedError(
                    f"guided backpropagation runs on a clone of the model, and cloning it "
                    f"failed ({first_line(error)}); build it as a functional or Sequential model"
                ) from error
            warnings.warn(
                f"cannot clone this TensorFlow model ({first_line(error)}); it runs as it is, "
                "so a final softmax is kept and probabilities are explained",
                RuntimeWarning,
                stacklevel=4,
            )
            model = source
            cut = False
        self.model = model
        self.cloned = model is not source
        if cut:
            self.cut_activation = _cut_final_activation(keras, model)
        if rule == "guided_relu":
            _guide_relus(keras, model)

    def compiled(self, tf: ModuleType) -> Any:
        """The clone's forward pass as a ``tf.function`` (traced once per input shape): what
        long runs of forward passes (perturbation methods) call."""
        if self._compiled is None:
            model = self.model
            self._compiled = tf.function(
                lambda inputs: model(inputs, training=False), reduce_retracing=True
            )
        return self._compiled

    def pass_functions(self, tf: ModuleType, layer: str | None, sources: tuple[bool, bool]) -> Any:
        """``(forward, pull_back)`` as two ``tf.function`` (traced once per input shape) for a
        pass that captures ``layer`` and pulls back to the ``(input, layer)`` ``sources``.

        ``forward(inputs)`` gives the (activations and) outputs; ``pull_back(inputs,
        cotangent)`` runs the pass again under a tape and pulls ``cotangent`` back from the
        outputs: a second forward pass in a graph costs less than one run op by op.
        """
        key = (layer, sources)
        if key not in self._functions:
            net = self.capture(layer) if layer is not None else self.model

            def forward(inputs: Any) -> Any:
                result = net(inputs, training=False)
                return (result[0], _first(result[1])) if layer is not None else _first(result)

            def pull_back(inputs: Any, cotangent: Any) -> Any:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(inputs)
                    result = net(inputs, training=False)
                    if layer is not None:
                        activation, output = result[0], _first(result[1])
                    else:
                        activation, output = None, _first(result)
                wanted = ([inputs] if sources[0] else []) + ([activation] if sources[1] else [])
                return tape.gradient(
                    output,
                    wanted,
                    output_gradients=cotangent,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )

            self._functions[key] = (
                tf.function(forward, reduce_retracing=True),
                tf.function(pull_back, reduce_retracing=True),
            )
        return self._functions[key]

    def layer(self, name: str) -> Any:
        """The clone's layer named ``name``."""
        try:
            return self.model.get_layer(name)
        except ValueError:
            raise LayerError(f"the model has no layer {name!r}") from None

    def capture(self, name: str) -> Any:
        """A functional model with outputs ``[layer output, model output]``."""
        if name not in self._captures:
            layer = self.layer(name)
            try:
                self._captures[name] = self.keras.Model(
                    self.model.inputs, [layer.output, self.model.outputs[0]]
                )
            except Exception as error:
                raise LayerError(
                    f"the output of layer {name!r} cannot be reached from the model's input "
                    f"({first_line(error)}); choose a layer of the outer model (salience layers "
                    "MODEL lists them)"
                ) from error
        return self._captures[name]

    def scalable(self, name: str) -> None:
        """Make layer ``name`` multiply its output by ``self.scales`` while they are set."""
        layer = self.layer(name)
        if getattr(layer, "_salience_scaled", False):
            return
        call = layer.call
        clone = self

        def scaled_call(*args: Any, **kwargs: Any) -> Any:
            output = call(*args, **kwargs)
            return output if clone.scales is None else output * clone.scales

        layer.call = scaled_call
        layer._salience_scaled = True


def _first(result: Any) -> Any:
    """A model's first output (a dict's first value)."""
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, list | tuple):
        if not result:
            raise InvalidInputError("the model returned no output")
        return result[0]
    return result


def _cut_final_activation(keras: ModuleType, model: Any) -> str | None:
    """Make the output layer's softmax or sigmoid linear, in place (a clone's); which it was."""
    layer = _output_layer(keras, model)
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in CUT_ACTIVATIONS:
        layer.activation = keras.activations.linear
        return name
    if isinstance(layer, keras.layers.Softmax):
        layer.call = lambda inputs, *_args, **_kwargs: inputs
        return "softmax"
    return None


def _guide_relus(keras: ModuleType, model: Any) -> None:
    """Give every ReLU of ``model`` (a clone) the guided backward rule, in place."""
    tf = import_tensorflow()
    for layer in _keras_layers(keras, model):
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", None)
        if name in _RELU_NAMES:
            layer.activation = _guided_relu(tf, 6.0 if name == "relu6" else None)
        elif isinstance(layer, keras.layers.ReLU):
            config = layer.get_config()
            plain = not config.get("negative_slope") and not config.get("threshold")
            upper = config.get("max_value")
            if plain and (upper is None or float(upper) == 6.0):
                guided = _guided_relu(tf, None if upper is None else 6.0)
                layer.call = lambda inputs, *_args, _guided=guided, **_kwargs: _guided(inputs)


class TensorFlowAdapter:
    """Adapter for Keras models on TensorFlow (``tf_keras``, or Keras 3 on its TensorFlow
    backend), run with ``tf.GradientTape``.

    Every method works as on a ``torch.nn.Module``: gradients, CAMs on layers named as in Keras,
    guided backprop, perturbations, randomization. Batches are NCHW torch tensors.

    Parameters
    ----------
    model : tf_keras.Model or keras.Model
        The model (functional or Sequential; a subclassed model runs as it is, without layer
        access); it is never modified.
    layout : {"nhwc", "nchw"}, optional
        The layout the model takes; by default read from its input shape, else the Keras
        ``image_data_format``.
    strip_softmax : bool
        Explain the logits when the output layer applies a softmax or a sigmoid (made linear on
        a private clone).
    """

    is_adapter = True

    def __init__(
        self, model: Any, *, layout: str | None = None, strip_softmax: bool = True
    ) -> None:
        keras = keras_flavour(model)
        if keras is None:
            raise UnsupportedError(
                f"expected a tf_keras model or a Keras 3 model on the TensorFlow backend, got "
                f"{type(model).__name__}"
            )
        self.tf = import_tensorflow()
        self.keras = keras
        self.keras_model = model
        self.strip_softmax = strip_softmax
        layout = (layout or _default_layout(keras, model)).lower()
        if layout not in ("nhwc", "nchw"):
            raise InvalidInputError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
        self.layout = layout
        self.model = LayerNames(model, self.layer_names())
        self._lock = _lock_for(model)

    # -- what runs -----------------------------------------------------------------------------
    def _state(self) -> ModelState:
        return tensorflow_state(self.keras, self.keras_model)

    def _clone(self, rule: str | None = None) -> _Clone:
        """The private clone for ``rule``, current with the user's model."""
        clones = cached_for(_CLONES, self.keras_model, self._state())
        key = (rule, self.strip_softmax)
        if key not in clones:
            clones[key] = _Clone(self.keras, self.keras_model, cut=self.strip_softmax, rule=rule)
        return clones[key]

    @property
    def stripped_softmax(self) -> bool:
        """Whether a final softmax (or sigmoid) is bypassed: logits are explained."""
        with self._lock:
            return self._clone().cut_activation is not None

    def final_activation(self, x: Tensor) -> str | None:
        """The final activation cut on the private clone (``"softmax"``, ``"sigmoid"``), if
        any: what the output kind is detected from (:mod:`salience.outputs`)."""
        with self._lock:
            cut = self._clone().cut_activation
        return "softmax" if cut == "log_softmax" else cut

    @property
    def device(self) -> torch.device:
        """salience's side of the model: CPU tensors (TensorFlow places its own)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's input (float32 unless it says otherwise)."""
        inputs = getattr(self.keras_model, "inputs", None) or []
        if inputs:
            name = self.tf.as_dtype(inputs[0].dtype).name
            if name in ("float16", "float64", "bfloat16"):
                return getattr(torch, name)
        return torch.float32

    # -- boundary ------------------------------------------------------------------------------
    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` as a CPU batch in the model's input dtype, in storage of its own.

        Raises
        ------
        NonFiniteInputError
            When ``x`` holds NaN or infinite values (a ``ValueError``).
        """
        return _cpu_batch(x, self.dtype)

    def _to_tf(self, x: Tensor) -> Any:
        if self.layout == "nhwc" and x.ndim >= 4:
            x = x.movedim(1, -1)
        return self.tf.constant(x.contiguous().numpy())

    def _to_torch(self, value: Any, *, batch_dims: int = 1) -> Tensor:
        """A TensorFlow result as torch; a channels-last feature map moved to channels-first."""
        tensor = torch.from_numpy(np.array(value))
        if self.layout == "nhwc" and tensor.ndim >= 3 + batch_dims:
            tensor = tensor.movedim(-1, batch_dims)
        return tensor.contiguous()

    @staticmethod
    def _first(result: Any) -> Any:
        return _first(result)

    # -- the pass contract ---------------------------------------------------------------------
    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs (logits) for a batch, without gradients, in chunks of ``chunk_size``.

        ``bulk`` (many passes of same-sized inputs follow) runs the clone as a ``tf.function``.
        """
        x = self.prepare_input(x)
        size = chunk_size or x.shape[0]
        with self._lock:
            clone = self._clone()
            model = clone.compiled(self.tf) if bulk else clone.model
            parts = [
                torch.from_numpy(np.array(self._first(model(self._to_tf(x[i : i + size])))))
                if bulk
                else torch.from_numpy(
                    np.array(self._first(model(self._to_tf(x[i : i + size]), training=False)))
                )
                for i in range(0, x.shape[0], size)
            ]
        return torch.cat(parts)

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One forward pass and, when ``need`` asks for gradients, one pull-back per target.

        Both run as graphs (:meth:`_Clone.pass_functions`); the pull-back's cotangent is the
        gradient of the torch score with respect to the outputs.
        """
        tf = self.tf
        x = self.prepare_input(x)
        sources = (need.input_grad, need.layer_grad)
        with self._lock:
            clone = self._clone(need.backward_rule)
            forward, pull_back = clone.pass_functions(tf, need.layer, sources)
            inputs = self._to_tf(x)
            result = forward(inputs)
        activation, output = result if need.layer is not None else (None, result)
        logits = torch.from_numpy(np.array(output))
        with torch.enable_grad() if need.any_grad else torch.inference_mode():
            logits = logits.requires_grad_(need.any_grad)
            scores = score(logits)
            if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
                raise InvalidInputError(
                    f"score function returned shape {tuple(scores.shape)}; expected "
                    f"({x.shape[0]}, K)"
                )
            input_grads: list[Tensor] = []
            layer_grads: list[Tensor] = []
            count = scores.shape[1] if need.any_grad else 0
            for k in range(count):
                (cotangent,) = torch.autograd.grad(
                    scores[:, k].sum(), logits, retain_graph=k < count - 1, allow_unused=True
                )
                if cotangent is None:
                    cotangent = torch.zeros_like(logits)
                with self._lock:
                    grads = pull_back(inputs, tf.constant(cotangent.numpy()))
                if need.input_grad:
                    input_grads.append(self._to_torch(grads[0]))
                if need.layer_grad:
                    layer_grads.append(self._to_torch(grads[-1]))
        return Outputs(
            outputs=logits.detach(),
            scores=scores.detach(),
            input_grad=torch.stack(input_grads, 1) if input_grads else None,
            activations=None if activation is None else self._to_torch(activation),
            layer_grad=torch.stack(layer_grads, 1) if layer_grads else None,
        )

    def scaled_layer_outputs(
        self, x: Tensor, layer: str, scales: Tensor, *, channel_dim: int = 1
    ) -> Tensor:
        """One sample's outputs with ``layer``'s channels scaled by each row of ``scales``
        (``channel_dim`` counted in salience's channels-first view of the layer's output)."""
        x = self.prepare_input(x)
        check_scaling_arguments(x, scales)
        with self._lock:
            clone = self._clone()
            clone.scalable(layer)
            sample = clone.capture(layer)(self._to_tf(x), training=False)[0]
            ndim = len(sample.shape)
            dim = channel_dim % ndim
            if self.layout == "nhwc" and ndim >= 4 and dim >= 1:
                dim = ndim - 1 if dim == 1 else dim - 1
            if sample.shape[dim] != scales.shape[1]:
                raise InvalidInputError(
                    f"layer {layer!r} has {sample.shape[dim]} channels on dimension "
                    f"{channel_dim}, but {scales.shape[1]} scales were given"
                )
            shape = [1] * ndim
            shape[0], shape[dim] = scales.shape[0], scales.shape[1]
            clone.scales = self.tf.constant(scales.detach().to(self.dtype).reshape(shape).numpy())
            try:
                batch = x.expand(scales.shape[0], *x.shape[1:])
                output = clone.model(self._to_tf(batch), training=False)
            finally:
                clone.scales = None
        return torch.from_numpy(np.array(self._first(output)))

    # -- layers --------------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """The Keras names of the layers that can be captured (the outer model's)."""
        names: dict[str, int] = {}
        for layer in getattr(self.keras_model, "layers", []):
            if not isinstance(layer, self.keras.layers.InputLayer):
                names[layer.name] = names.get(layer.name, 0) + 1
        return [name for name, count in names.items() if count == 1 and "." not in name]

    def layer_table(self, x: Tensor) -> list[LayerInfo]:
        """Every layer with its output shape on inputs like ``x`` (channels-first view)."""
        return self._traced(x)[0]

    def _traced(self, x: Tensor) -> tuple[list[LayerInfo], list[str]]:
        sample = self.prepare_input(x)[:1]
        with self._lock:
            clone = self._clone()
            names = self.layer_names()
            try:
                tracer = self.keras.Model(
                    clone.model.inputs, [clone.layer(name).output for name in names]
                )
            except Exception as error:
                raise LayerError(
                    f"the layers of this model cannot be reached ({first_line(error)}); build "
                    "it as a functional or Sequential model"
                ) from error
            outputs = tracer(self._to_tf(sample), training=False)
        if len(names) == 1:
            outputs = [outputs]
        layers = []
        for name, output in zip(names, outputs, strict=True):
            shape = tuple(int(d) for d in output.shape)
            if self.layout == "nhwc" and len(shape) >= 4:
                shape = (shape[0], shape[-1], *shape[1:-1])
            kind = type(clone.layer(name)).__name__
            layers.append(LayerInfo(name, kind, shape, 1))
        return layers, names

    def resolve_layer(self, layer: LayerLike, x: Tensor) -> str:
        """The name of ``layer`` (None or ``"auto"``: the last spatial feature map)."""
        name = layer_name(self.model, layer)
        if name is not None:
            return name
        return choose_layer(*self._traced(x))

    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the model's static input shape, if it has one."""
        return image_size(keras_input_shape(self.keras_model), self.layout)

    # -- randomization -------------------------------------------------------------------------
    def randomization_units(
        self, x: Tensor, layers: Sequence[str] | None = None
    ) -> list[RandomizationUnit]:
        """The Keras layers a randomization test re-initializes, from the output down."""
        return keras_randomization_units(self.keras, self.keras_model, layers)

    def randomized(self, units: Sequence[RandomizationUnit], *, seed: int) -> TensorFlowAdapter:
        """An adapter of a clone of the model with ``units`` re-initialized (seeded), by the
        rules of :meth:`salience.adapters.keras.KerasAdapter.randomized`."""
        try:
            duplicate = self.keras.models.clone_model(self.keras_model)
            duplicate.set_weights(self.keras_model.get_weights())
        except Exception as error:
            raise RandomizationError(
                f"randomization works on a clone of the model, and cloning it failed: "
                f"{first_line(error)}"
            ) from error
        for unit in units:
            generator = unit_generator(seed, unit, torch.device("cpu"))
            for name in unit.modules:
                reinitialize_keras_layer(self.keras, duplicate.get_layer(name), generator)
        return TensorFlowAdapter(duplicate, layout=self.layout, strip_softmax=self.strip_softmax)

    def __repr__(self) -> str:
        return f"TensorFlowAdapter({self.keras_model.name!r}, layout={self.layout!r})"


class LayerNames(nn.Module):
    """A TensorFlow model's layers as named (empty) submodules: what salience's layer lookups
    (``layer=NAME``, close matches) search; nothing of it runs."""

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        super().__init__()
        self._source = weakref.ref(model)
        for name in names:
            if name and not hasattr(self, name):
                layer = model.get_layer(name)
                self.add_module(name, _tap_class(type(layer).__name__)())


def _cpu_batch(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` as a CPU batch in ``dtype``, in storage of its own (a finite batch, checked)."""
    check_batch(x)
    prepared = check_finite_input(x.detach().to(device="cpu", dtype=dtype))
    return prepared.clone() if prepared.data_ptr() == x.data_ptr() else prepared


class SignatureAdapter:
    """A SavedModel's serving signature: outputs and input gradients, no layers.

    Parameters
    ----------
    function : callable
        The signature (``loaded.signatures["serving_default"]``), taking one image input by
        keyword and returning a dict of outputs.
    input_name : str
        The keyword of the image input.
    output_name : str
        The output explained.
    input_shape : sequence of int or None
        The input's shape (batch included), to read the layout from.
    layout : {"nhwc", "nchw"}, optional
        The layout the signature takes (by default read from ``input_shape``, else NHWC).
    dtype : torch.dtype
        The input's dtype.
    """

    is_adapter = True

    def __init__(
        self,
        function: Any,
        *,
        input_name: str,
        output_name: str,
        input_shape: Sequence[int | None],
        layout: str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from salience.adapters.onnx import infer_layout

        self.tf = import_tensorflow()
        self.model = function
        self.input_name = input_name
        self.output_name = output_name
        self.input_shape = tuple(input_shape)
        if layout is None:
            layout = "nhwc"
            if len(self.input_shape) == 4:
                guess, certain = infer_layout(self.input_shape)
                layout = guess if certain else "nhwc"
        self.layout = layout.lower()
        self.dtype = dtype
        self.stripped_softmax = False

    @property
    def device(self) -> torch.device:
        """Inputs are CPU tensors."""
        return torch.device("cpu")

    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the signature's static input shape, if it has one."""
        return image_size(self.input_shape, self.layout)

    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` as a CPU batch in the signature's dtype, in storage of its own."""
        return _cpu_batch(x, self.dtype)

    def _call(self, inputs: Any) -> Any:
        try:
            return self.model(**{self.input_name: inputs})[self.output_name]
        except (TypeError, ValueError) as error:  # a shape or dtype the signature refuses
            raise InvalidInputError(
                f"the SavedModel's signature refused a batch of shape {tuple(inputs.shape)}: "
                f"{first_line(error)}; prepare images at its size (--size) or give its layout "
                "(--layout)"
            ) from error

    def _to_tf(self, x: Tensor) -> Any:
        if self.layout == "nhwc" and x.ndim >= 4:
            x = x.movedim(1, -1)
        return self.tf.constant(x.contiguous().numpy())

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs for a batch, in chunks of ``chunk_size``."""
        x = self.prepare_input(x)
        size = chunk_size or x.shape[0]
        parts = [
            torch.from_numpy(np.array(self._call(self._to_tf(x[i : i + size]))))
            for i in range(0, x.shape[0], size)
        ]
        return torch.cat(parts)

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One forward pass and the input gradient of each score (a signature has no layers)."""
        if need.layer is not None or need.backward_rule is not None:
            raise LayerError(
                "a SavedModel signature has no layers or backward rules to reach; save the model "
                "with its Keras layers (tf_keras model.save) for CAMs and guided backprop"
            )
        tf = self.tf
        x = self.prepare_input(x)
        inputs = self._to_tf(x)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            output = self._call(inputs)
        logits = torch.from_numpy(np.array(output))
        with torch.enable_grad() if need.input_grad else torch.inference_mode():
            logits = logits.requires_grad_(need.input_grad)
            scores = score(logits)
            grads: list[Tensor] = []
            for k in range(scores.shape[1] if need.input_grad else 0):
                (cotangent,) = torch.autograd.grad(
                    scores[:, k].sum(), logits, retain_graph=True, allow_unused=True
                )
                cotangent = torch.zeros_like(logits) if cotangent is None else cotangent
                grad = tape.gradient(
                    output,
                    inputs,
                    output_gradients=tf.constant(cotangent.numpy()),
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                value = torch.from_numpy(np.array(grad))
                if self.layout == "nhwc" and value.ndim >= 4:
                    value = value.movedim(-1, 1)
                grads.append(value.contiguous())
        del tape
        return Outputs(
            outputs=logits.detach(),
            scores=scores.detach(),
            input_grad=torch.stack(grads, 1) if grads else None,
        )


__all__ = [
    "CUT_ACTIVATIONS",
    "TENSORFLOW_INSTALL_HINT",
    "SignatureAdapter",
    "TensorFlowAdapter",
    "import_tensorflow",
    "is_tensorflow_model",
    "keras_flavour",
    "tensorflow_state",
]
