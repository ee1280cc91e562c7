"""Run any ``torch.nn.Module`` for saliency methods: scores, input gradients, layer captures.

The user's model is never changed. By default the adapter runs a private inference copy (eval
mode, frozen, BatchNorm folded into convolutions, rebuilt whenever anything of the user's model
changes: :func:`~salience.adapters.inference_copy.model_state`);
with ``inference_copy=False`` it runs the user's model itself in eval mode and restores every
module's training flag afterwards. Gradients are taken with ``torch.autograd.grad`` with respect
to the input (and a captured layer) only, so no ``.grad`` is ever written to a parameter. All
hooks live inside one ``try``/``finally``.

What runs for each pass is the adapter's :class:`ModuleProvider`: the inference copy
(:class:`InferenceCopyProvider`), the model in eval mode (:class:`EvalModeProvider`), or another
one a kind of model brings (Keras); the adapter itself is the pass engine.

Inputs are refused when they hold NaN or infinite values, and the model never gets the caller's
tensor itself (a forward that works in place, ``x.clamp_()``, would change it): a copy is made
when moving it to the model's device and dtype did not make one already.
"""

from __future__ import annotations

import copy
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from salience.adapters.base import (
    Need,
    Outputs,
    ScoreFn,
    check_batch,
    check_finite_input,
    check_scaling_arguments,
)
from salience.adapters.fused import (
    Capture,
    cached_capture,
    has_program,
    record_execution,
    run_fused,
)
from salience.adapters.inference_copy import (
    CopyError,
    ModelState,
    all_finite,
    cached_for,
    cached_inference_copy,
    folded_convolutions,
    model_state,
    outputs_equal,
)
from salience.adapters.layers import (
    LayerError,
    LayerInfo,
    LayerLike,
    choose_layer,
    layer_name,
    trace_layers,
)
from salience.adapters.randomize import (
    RandomizationUnit,
    named_units,
    randomization_units,
    randomized_copy,
)
from salience.adapters.rules import backward_rule_mode
from salience.adapters.structured import OutputKey, select_output
from salience.errors import InvalidInputError, SalienceError, UnsupportedError

CAPTURED_BATCH = 4
"""A captured program runs the inputs of a long run in batches of this size, whatever the
caller's chunk: its fused kernels are fastest on small batches, whose activations stay in the
CPU's caches (``bench/capture.py --batches 2 4 8 16 32``: 10.9, 10.5, 13.2, 15.7 and 17.8 ms
per image on EfficientNet-Lite0 at 224×224, 2 cores), where the eager copy is best at 8 to 24."""
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
#: Per model and state: traced layer tables by (input shape, dtype).
_LAYER_TABLES: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = (
    weakref.WeakKeyDictionary()
)
#: Per model and state, by (input shape, dtype): the final activation a pass cuts, if any.
_FINAL_ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = (
    weakref.WeakKeyDictionary()
)
#: Per model and state, by layer: whether the layers after it broadcast a fanned-out batch.
_FAN_OUT: weakref.WeakKeyDictionary[nn.Module, tuple[ModelState, dict]] = (
    weakref.WeakKeyDictionary()
)


def _has_forward_hooks(model: nn.Module) -> bool:
    """Whether a forward (pre-)hook would run on ``model``: one of its modules', or a global one."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class ModelOutputError(SalienceError, TypeError):
    """A layer returned something other than one tensor."""


def _lock_for(model: nn.Module) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block; restore each module's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


_FINAL_FUNCTIONS: dict[Callable[..., Any], str] = {
    **dict.fromkeys((torch.softmax, F.softmax, Tensor.softmax, torch.special.softmax), "softmax"),
    **dict.fromkeys(
        (torch.log_softmax, F.log_softmax, Tensor.log_softmax, torch.special.log_softmax),
        "softmax",
    ),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, Tensor.sigmoid, torch.special.expit), "sigmoid"),
}
"""The calls a pass watches for a final activation, module or function alike: ``nn.Softmax``,
``nn.LogSoftmax`` and ``nn.Sigmoid`` call them too. In-place forms (``x.sigmoid_()``) are not
watched: they overwrite their input, so there is no logit left to explain."""


class _Capture(TorchFunctionMode):
    """What one pass records: a layer's output (a forward hook), and the input of the last
    softmax or sigmoid call (a function mode, so ``torch.sigmoid(x)`` in a ``forward`` is seen
    as well as an ``nn.Sigmoid`` module)."""

    def __init__(
        self, *, track_grad: bool = False, softmax: bool = False, sigmoid: bool = False
    ) -> None:
        super().__init__()
        self.activation: Tensor | None = None
        #: The last softmax or sigmoid called: (its input, its output, which).
        self.last_activation: tuple[Tensor, Tensor, str] | None = None
        #: Which final activation :meth:`logits` cut ("softmax", "sigmoid"), if any.
        self.cut: str | None = None
        self.track_grad = track_grad
        self.watched = {"softmax": softmax, "sigmoid": sigmoid}

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        kind = _FINAL_FUNCTIONS.get(func)
        if kind is not None and self.watched[kind] and isinstance(output, Tensor):
            source = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if isinstance(source, Tensor):
                self.last_activation = (source, output, kind)
        return output

    def watching(self) -> AbstractContextManager[object]:
        """This mode, for the forward pass, when it watches for an activation at all."""
        return self if any(self.watched.values()) else nullcontext()

    def layer_hook(self, _module: nn.Module, _inputs: tuple, output: object) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise ModelOutputError(
                f"the captured layer returned a {type(output).__name__}, not one tensor; choose "
                "a layer whose output is a tensor (salience layers MODEL shows the shapes)"
            )
        if self.track_grad and not output.requires_grad:
            # Nothing before the layer needs a graph: start one here, so the forward pass
            # records only the layers after it and the backward pass stops at it.
            output = output.detach().requires_grad_(True)
            self.activation = output
            return output
        self.activation = output
        return None

    def logits(self, output: Tensor) -> Tensor:
        """The activation's input when the model's output is the output of a softmax or
        sigmoid (recorded in :attr:`cut`)."""
        last, self.last_activation = self.last_activation, None
        if last is not None and last[1] is output:
            self.cut = last[2]
            return last[0]
        return output


class ModuleProvider(Protocol):
    """Which module a :class:`TorchAdapter` runs for each pass, and the state its caches key on.

    The adapter is the pass engine (hooks, gradients, chunks, the layer table); a provider
    decides what runs: :class:`InferenceCopyProvider` (a private folded copy, the default),
    :class:`EvalModeProvider` (the user's model in eval mode; compiled programs too) or the
    Keras provider (``salience.adapters.keras``). A new kind of model is a new provider, not a
    subclass that overrides the engine.
    """

    @property
    def model(self) -> nn.Module:
        """The module whose names, parameters and state the adapter reports."""
        ...

    def state(self) -> ModelState:
        """The model's current state: the key of every cache built from it."""
        ...

    def runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> AbstractContextManager[nn.Module]:
        """The module to run for one pass on inputs like ``sample`` that captures ``layer``;
        ``state``: the model's state, when the caller has just taken it."""
        ...


class EvalModeProvider:
    """The user's model itself, in eval mode for each pass; every module's flag is restored.

    Parameters
    ----------
    model : nn.Module
        The module to run.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    @property
    def model(self) -> nn.Module:
        """The module that runs."""
        return self._model

    def state(self) -> ModelState:
        """The model's current state (:func:`~salience.adapters.inference_copy.model_state`)."""
        return model_state(self._model)

    @contextmanager
    def runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> Iterator[nn.Module]:
        """The model in eval mode for the block."""
        with eval_mode(self._model) as model:
            yield model


class InferenceCopyProvider(EvalModeProvider):
    """A private frozen copy of the model (BatchNorm folded, channels-last), rebuilt whenever
    the model changes; the model itself in eval mode where no copy can be built.

    Parameters
    ----------
    model : nn.Module
        The user's model (never changed).
    fold_batchnorm : bool
        Fold BatchNorm into the preceding convolution when this is exact.
    channels_last : bool
        Convolutions in channels-last memory format.
    """

    def __init__(self, model: nn.Module, *, fold_batchnorm: bool, channels_last: bool) -> None:
        super().__init__(model)
        self.fold_batchnorm = fold_batchnorm
        self.channels_last = channels_last

    @contextmanager
    def runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> Iterator[nn.Module]:
        """The copy; the unfolded copy when ``layer`` is a convolution a BatchNorm was folded
        into (it outputs what the norm did); the model in eval mode when no copy can be built.
        """
        state = state or self.state()
        copy = self.copy(sample, self.fold_batchnorm, state)
        if copy is not None and layer is not None and layer in folded_convolutions(copy):
            copy = self.copy(sample, False, state)
        if copy is not None:
            yield copy
            return
        with super().runnable(sample, layer, state) as model:
            yield model

    def copy(self, sample: Tensor, fold: bool, state: ModelState) -> nn.Module | None:
        """The cached copy for inputs like ``sample``; None (with a warning) when it fails."""
        try:
            return cached_inference_copy(
                self._model, sample, fold=fold, channels_last=self.channels_last, state=state
            )
        except CopyError as error:
            warnings.warn(
                f"cannot build an inference copy of this model ({error}); running the model "
                "itself in eval mode",
                RuntimeWarning,
                stacklevel=4,
            )
            return None


class TorchAdapter:
    """Adapter for ``torch.nn.Module`` models.

    Parameters
    ----------
    model : nn.Module
        Any module mapping a batch ``(N, ...)`` to outputs ``(N, classes)`` or ``(N,)``.
    inference_copy : bool
        Run a private frozen copy (faster, and the user's model is not even touched). Copies are
        cached per model and rebuilt when anything of it changes (modules, attributes, hooks,
        parameter and buffer contents), so adapters are cheap to create.
    fold_batchnorm : bool
        In that copy, fold BatchNorm into the preceding convolution when this is exact.
    channels_last : bool
        Run 4-D inputs (and the copy's convolutions) in channels-last memory format: measured
        25% faster on CPU for EfficientNet-Lite0 (bench/chunk_size.py).
    strip_softmax : bool
        Explain the logits when the model ends in a softmax or log-softmax (a module, or a
        call such as ``torch.softmax(z, 1)`` whose output the model returns).
    strip_sigmoid : bool
        Explain the logits when the model ends in a sigmoid (a binary or multi-label output;
        see :mod:`salience.outputs`).
    output : str or int, optional
        Which output to explain when the model returns a tuple, a dict, a dataclass or an
        object with ``.logits`` (:func:`~salience.adapters.structured.select_output`); by
        default the only tensor, the ``logits``, or a detector's packed detections.
    fuse : bool
        For long runs of forward passes (occlusion, RISE, Score-CAM, deletion/insertion), run a
        program captured with ``torch.export`` (which refuses value-dependent control flow),
        frozen and fused by oneDNN: about 1.6× faster on CPU, verified equal to the eager copy,
        cached per model state and input shape (``salience.adapters.fused``). A model that
        cannot be captured runs eagerly, and the explanation's info says why.
    provider : ModuleProvider, optional
        What runs for each pass (by default an :class:`InferenceCopyProvider`, or an
        :class:`EvalModeProvider` with ``inference_copy=False``); its ``model`` must be
        ``model``.
    """

    is_adapter = True

    def __init__(
        self,
        model: nn.Module,
        *,
        inference_copy: bool = True,
        fold_batchnorm: bool = True,
        channels_last: bool = True,
        strip_softmax: bool = True,
        strip_sigmoid: bool = True,
        output: OutputKey = None,
        fuse: bool = True,
        provider: ModuleProvider | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UnsupportedError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if provider is None:
            provider = (
                InferenceCopyProvider(
                    model, fold_batchnorm=fold_batchnorm, channels_last=channels_last
                )
                if inference_copy
                else EvalModeProvider(model)
            )
        elif provider.model is not model:
            raise InvalidInputError(
                "the provider runs another module than the adapter's model; build it from the "
                "same module, e.g. TorchAdapter(model, provider=EvalModeProvider(model))"
            )
        self.provider = provider
        self.model = model
        self.fold_batchnorm = fold_batchnorm
        self.channels_last = channels_last
        self.strip_softmax = strip_softmax
        self.strip_sigmoid = strip_sigmoid
        self.output = output
        self.fuse = fuse
        self._lock = _lock_for(model)

    @property
    def inference_copy(self) -> bool:
        """Whether a private inference copy runs (an :class:`InferenceCopyProvider`)."""
        return isinstance(self.provider, InferenceCopyProvider)

    # -- public contract -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for parameter-free models)."""
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's first parameter (float32 for parameter-free models)."""
        for tensor in self.model.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def layer_names(self) -> list[str]:
        """Names of all submodules, as ``model.named_modules()`` gives them."""
        return [name for name, _ in self.model.named_modules() if name]

    def layer_table(self, x: Tensor) -> list[LayerInfo]:
        """Every module the model calls on inputs shaped like ``x``, with its output shape."""
        return self._traced(x)[0]

    def resolve_layer(self, layer: LayerLike, x: Tensor) -> str:
        """The name of ``layer`` (a name, a submodule, or None/"auto" for the last feature map).

        Raises
        ------
        LayerError
            For an unknown name (close matches are listed), a foreign module, or a model without
            a spatial feature map when the layer is to be chosen automatically.
        """
        name = layer_name(self.model, layer)
        if name is not None:
            return name
        layers, finished = self._traced(x)
        return choose_layer(layers, finished)

    def randomization_units(
        self, x: Tensor, layers: Sequence[str] | None = None
    ) -> list[RandomizationUnit]:
        """The blocks a randomization test re-initializes, from the top down.

        Parameters
        ----------
        x : Tensor
            An input, to see which modules run and in which order.
        layers : sequence of str, optional
            Module names to use as the units instead, in the order given.
        """
        if layers is not None:
            return named_units(self.model, layers)
        return randomization_units(self.model, self.layer_table(x))

    def randomized(self, units: Sequence[RandomizationUnit], *, seed: int) -> TorchAdapter:
        """An adapter of a copy of the model with ``units`` re-initialized (seeded).

        The user's model is not touched; the copy is explained with this adapter's settings.
        """
        return TorchAdapter(
            randomized_copy(self.model, units, seed),
            inference_copy=self.inference_copy,
            fold_batchnorm=self.fold_batchnorm,
            channels_last=self.channels_last,
            strip_softmax=self.strip_softmax,
            strip_sigmoid=self.strip_sigmoid,
            output=self.output,
            fuse=self.fuse,
        )

    def _traced(self, x: Tensor) -> tuple[list[LayerInfo], list[str]]:
        sample = self.prepare_input(x)[:1]
        key = (tuple(sample.shape[1:]), sample.dtype)
        with self._lock:
            tables = cached_for(_LAYER_TABLES, self.model, self._state())
            if key not in tables:
                with eval_mode(self.model) as model:
                    tables[key] = trace_layers(model, self._layout(sample))
            return tables[key]

    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` on the model's device in its floating dtype, in storage of its own.

        Raises
        ------
        NonFiniteInputError
            When ``x`` holds NaN or infinite values (a ``ValueError``).
        """
        check_batch(x)
        if _checked_before(x, self.device):  # prepared here, unchanged since: copy it only
            return _mark_checked(x.detach().clone())
        dtype = x.dtype if x.is_floating_point() else self.dtype
        prepared = check_finite_input(x.detach().to(device=self.device, dtype=dtype))
        if prepared.device == x.device and prepared.data_ptr() == x.data_ptr():
            prepared = prepared.clone()  # never the caller's storage: a forward may write to it
        return _mark_checked(prepared)

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs (logits) for a batch, without gradients, in chunks of ``chunk_size``.

        ``bulk`` says that many forward passes of same-sized inputs follow (a perturbation
        method): a captured program runs then where the model allows one (``fuse``).
        """
        x = self.prepare_input(x)
        size = chunk_size or x.shape[0]
        if bulk:
            piece = min(size, CAPTURED_BATCH)
            verdict = self._capture(x[:piece])
            if verdict is not None:
                record_execution(verdict.note)
            if verdict is not None and verdict.program is not None:
                whole = x.shape[0] - x.shape[0] % piece
                with self._lock:
                    program = verdict.program
                    parts = [
                        run_fused(program, self._layout(x[i : i + piece])).clone()
                        for i in range(0, whole, piece)
                    ]
                if whole < x.shape[0]:  # a shorter remainder: eager, not a capture of its own
                    parts.append(self._eager_forward(x[whole:], size))
                return torch.cat(parts)
        return self._eager_forward(x, size)

    def _eager_forward(self, x: Tensor, size: int) -> Tensor:
        """Outputs of the eager runnable for prepared inputs ``x``, in chunks of ``size``."""
        with self._lock, self._runnable(x) as model, ExitStack() as hooks:
            capture = self._install(model, None, hooks)
            parts = []
            with torch.inference_mode():
                for start in range(0, x.shape[0], size):
                    chunk = x[start : start + size]
                    parts.append(self._logits(capture, model, chunk).clone())
            return torch.cat(parts)

    def final_activation(self, x: Tensor) -> str | None:
        """The final activation a pass on inputs like ``x`` cuts: ``"softmax"``,
        ``"sigmoid"`` or None (the model's outputs are explained as they are).

        One forward pass of one sample, cached for the model's state and the input's shape.
        """
        sample = self.prepare_input(x)[:1]
        key = (tuple(sample.shape[1:]), sample.dtype)
        with self._lock:
            state = self._state()
            known = cached_for(_FINAL_ACTIVATIONS, self.model, state)
            if key not in known:
                with self._runnable(sample, None, state) as model, ExitStack() as hooks:
                    capture = self._install(model, None, hooks)
                    with torch.inference_mode():
                        self._logits(capture, model, sample)
                known[key] = capture.cut
            return known[key]

    def with_output(self, output: OutputKey) -> TorchAdapter:
        """This adapter explaining the model's output ``output`` (a key, field or index)."""
        duplicate = copy.copy(self)
        duplicate.output = output
        return duplicate

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One forward pass, and one backward pass per target when ``need`` asks for gradients."""
        x = self.prepare_input(x)
        with self._lock, self._runnable(x, need.layer) as model, ExitStack() as stack:
            capture = self._install(model, need.layer, stack, track_grad=need.layer_grad)
            if need.any_grad:
                x = x.requires_grad_(need.input_grad)
                stack.enter_context(torch.enable_grad())
            else:
                stack.enter_context(torch.inference_mode())
            with backward_rule_mode(need.backward_rule) or nullcontext():
                logits = self._logits(capture, model, x)
            scores = score(logits)
            if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
                raise InvalidInputError(
                    f"score function returned shape {tuple(scores.shape)}; expected "
                    f"({x.shape[0]}, K)"
                )
            activation = capture.activation
            if need.layer is not None and activation is None:
                raise LayerError(f"layer {need.layer!r} was not called during the forward pass")
            input_grads: list[Tensor] = []
            layer_grads: list[Tensor] = []
            if need.any_grad:
                inputs = ([x] if need.input_grad else []) + (
                    [activation] if need.layer_grad else []
                )
                count = scores.shape[1]
                for k in range(count):
                    grads = torch.autograd.grad(
                        scores[:, k].sum(),
                        inputs,
                        retain_graph=k < count - 1,
                        allow_unused=True,
                    )
                    grads = [
                        torch.zeros_like(inp) if g is None else g
                        for g, inp in zip(grads, inputs, strict=True)
                    ]
                    if need.input_grad:
                        input_grads.append(grads[0].contiguous())
                    if need.layer_grad:
                        layer_grads.append(grads[-1].contiguous())
            return Outputs(
                outputs=logits.detach(),
                scores=scores.detach(),
                input_grad=torch.stack(input_grads, 1) if input_grads else None,
                activations=None if activation is None else activation.detach(),
                layer_grad=torch.stack(layer_grads, 1) if layer_grads else None,
            )

    def scaled_layer_outputs(
        self, x: Tensor, layer: str, scales: Tensor, *, channel_dim: int = 1
    ) -> Tensor:
        """One sample's outputs with ``layer``'s channels scaled by each row of ``scales``.

        Row ``b`` of the result is the model's output (logits) on ``x`` when channel ``c`` of the
        layer's output is multiplied by ``scales[b, c]`` (0 ablates it). No module is replaced:
        a forward hook scales the output, and is removed before returning.

        The layers before ``layer`` run once per call and only the rest of the network runs for
        each row ("fan-out"), when broadcasting the layer's one-sample output against the ``B``
        rows gives the same outputs as ``B`` full passes. That is checked on the first call for
        each model and layer; models that do not allow it (say, a later layer reshapes with the
        input's batch size) get ``B`` full passes.

        Parameters
        ----------
        x : Tensor
            One sample, ``(1, ...)``.
        layer : str
            The layer's name.
        scales : Tensor
            ``(B, C)`` factors, ``C`` the size of the layer output's dimension ``channel_dim``.
        channel_dim : int
            The channel dimension of the layer's output: 1 for ``(N, C, H, W)``, -1 for tokens
            ``(N, T, D)``.
        """
        x = self.prepare_input(x)
        check_scaling_arguments(x, scales)
        with self._lock:
            state = self._state()
            with self._runnable(x, layer, state) as model, torch.inference_mode():
                verdicts = cached_for(_FAN_OUT, self.model, state)
                verdict = verdicts.get(layer)
                if verdict is not False:
                    try:
                        fanned = self._scaled_pass(model, x, layer, scales, channel_dim)
                    except RuntimeError:
                        fanned = None
                    if verdict is None:
                        checked = scales[:2]
                        full = self._scaled_pass(
                            model, x.expand(len(checked), *x.shape[1:]), layer, checked, channel_dim
                        )
                        verdict = (
                            fanned is not None
                            and fanned.shape[0] == scales.shape[0]
                            and outputs_equal(full, fanned[: len(checked)])
                        )
                        if all_finite(full):  # non-finite outputs cannot prove or disprove it
                            verdicts[layer] = verdict
                    if verdict and fanned is not None:
                        return fanned
                return self._scaled_pass(
                    model, x.expand(scales.shape[0], *x.shape[1:]), layer, scales, channel_dim
                )

    def _scaled_pass(
        self, model: nn.Module, x: Tensor, layer: str, scales: Tensor, channel_dim: int
    ) -> Tensor:
        """One forward pass with ``layer``'s output times ``scales`` broadcast along the batch."""

        def scale(_module: nn.Module, _inputs: tuple, output: object) -> Tensor:
            if not isinstance(output, Tensor):
                raise ModelOutputError(f"layer {layer!r} returned a {type(output).__name__}")
            shape = [1] * output.ndim
            shape[0] = scales.shape[0]
            shape[channel_dim] = scales.shape[1]
            if output.shape[channel_dim] != scales.shape[1]:
                raise InvalidInputError(
                    f"layer {layer!r} has {output.shape[channel_dim]} channels on dimension "
                    f"{channel_dim}, but {scales.shape[1]} scales were given"
                )
            return output * scales.to(output).reshape(shape)

        with ExitStack() as hooks:
            capture = self._install(model, None, hooks)
            module = self._submodule(model, layer)
            hooks.callback(module.register_forward_hook(scale).remove)
            return self._logits(capture, model, x).clone()

    # -- internals ---------------------------------------------------------------------------
    def _fused(self, sample: Tensor) -> torch.jit.ScriptModule | None:
        """The captured program for inputs like ``sample``; None where there is none."""
        verdict = self._capture(sample)
        return None if verdict is None else verdict.program

    def has_program(self, x: Tensor) -> bool:
        """Whether a long run of inputs like ``x`` (one chunk) would start on a captured
        program built already, in memory or in the program store: no capture cost to pay."""
        with self._lock:
            parts = self._capture_parts(self.prepare_input(x[:CAPTURED_BATCH]))
            return not isinstance(parts, Capture) and has_program(self.model, *parts)

    def _capture(self, sample: Tensor) -> Capture | None:
        """The capture verdict for inputs like ``sample`` (None: this batch runs eager without
        a verdict of its own, as the last, smaller chunk of a run does)."""
        with self._lock:
            parts = self._capture_parts(sample)
            return parts if isinstance(parts, Capture) else cached_capture(self.model, *parts)

    def _capture_parts(self, sample: Tensor) -> Capture | tuple:
        """(options, eager copy, laid-out sample, state) a capture for inputs like ``sample``
        is made and cached from; or the verdict of why none can be."""
        refusal = self._refusal(sample)
        if refusal is not None:
            return refusal
        state = self._state()
        copy = self.provider.copy(sample, self.provider.fold_batchnorm, state)
        if copy is None:
            return Capture(None, "eager: the model cannot be copied")
        return (self.fold_batchnorm, self.channels_last), copy, self._layout(sample), state

    def _refusal(self, sample: Tensor) -> Capture | None:
        """Why inputs like ``sample`` cannot run a captured program; None when they can."""
        if not self.fuse:
            return Capture(None, "eager: capture is off (fuse=False)")
        if not isinstance(self.provider, InferenceCopyProvider):
            return Capture(None, "eager: capture runs the inference copy, which is off")
        if sample.device.type != "cpu":
            return Capture(None, f"eager: capture is for CPU, the model is on {sample.device}")
        if _has_forward_hooks(self.model):
            return Capture(None, "eager: the model has forward hooks, which a capture would skip")
        if self.output is not None:
            return Capture(None, "eager: one of several outputs is selected")
        cut = self.final_activation(sample)
        if cut is not None:  # the captured program would keep it
            return Capture(None, f"eager: the model ends in a {cut} whose input is explained")
        return None

    def _layout(self, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _check_output(self, output: object) -> Tensor:
        """The tensor to explain of what the model returned (:func:`select_output`)."""
        return select_output(output, self.output)

    def _install(
        self, model: nn.Module, layer: str | None, stack: ExitStack, *, track_grad: bool = False
    ) -> _Capture:
        """Register this pass's layer hook; ``stack`` removes it whatever happens."""
        capture = _Capture(
            track_grad=track_grad, softmax=self.strip_softmax, sigmoid=self.strip_sigmoid
        )
        if layer is not None:
            module = self._submodule(model, layer)
            stack.callback(module.register_forward_hook(capture.layer_hook).remove)
        return capture

    def _logits(self, capture: _Capture, model: nn.Module, x: Tensor) -> Tensor:
        """``model``'s output to explain for prepared inputs ``x`` (laid out here), with the
        final activation ``capture`` watches for cut; the watch covers the forward pass only."""
        with capture.watching():
            output = model(self._layout(x))
        return capture.logits(self._check_output(output))

    def _submodule(self, model: nn.Module, layer: str) -> nn.Module:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            layer_name(self.model, layer)  # raises LayerError with close matches
            raise LayerError(f"the model has no layer {layer!r}") from None

    def _state(self) -> ModelState:
        """The model's current state: the key of every cache built from it."""
        return self.provider.state()

    def _runnable(
        self, sample: Tensor, layer: str | None = None, state: ModelState | None = None
    ) -> AbstractContextManager[nn.Module]:
        """The module to run: the provider's."""
        return self.provider.runnable(sample, layer, state)


_CHECKED_VERSION = "_salience_checked_version"
"""The attribute :meth:`TorchAdapter.prepare_input` sets on what it returns: the tensor's
version counter then."""


def _mark_checked(prepared: Tensor) -> Tensor:
    """Note on ``prepared`` that it is finite, in its own storage, at its current version."""
    setattr(prepared, _CHECKED_VERSION, prepared._version)
    return prepared


def _checked_before(x: Tensor, device: torch.device) -> bool:
    """Whether ``x`` was prepared for ``device`` and not written to since (its version counter,
    which every in-place operation bumps, is the same): then it needs no second finite check."""
    version = getattr(x, _CHECKED_VERSION, None)
    return version is not None and version == x._version and x.device == device


DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The devices a PyTorch model can be moved to (``--device``)."""


def check_device(name: str) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) when this machine has it.

    Raises
    ------
    InvalidInputError
        For another name, or a device this machine or its PyTorch build lacks (naming the fix,
        ``--device cpu``).
    """
    kind, _, index = str(name).partition(":")
    if kind not in DEVICE_TYPES or (index and (kind == "cpu" or not index.isdigit())):
        raise InvalidInputError(
            f"unknown device {name!r}; choose {', '.join(DEVICE_TYPES)} (cuda:N for the N-th GPU)"
        )
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError(
                "device cuda asked for, but torch.cuda.is_available() is False (no NVIDIA GPU, "
                "or a PyTorch build without CUDA); use --device cpu"
            )
        if index and int(index) >= count:
            raise InvalidInputError(
                f"device {name} asked for, but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}); use one of them or --device cpu"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(
            "device mps asked for, but torch.backends.mps.is_available() is False (mps is Apple "
            "silicon's GPU, on macOS); use --device cpu"
        )
    return torch.device(name)
