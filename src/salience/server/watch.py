"""Watch a request's model passes: count them for the progress display, stop at the time limit.

Every method asks its adapter for each pass (one chunk of SmoothGrad samples, of RISE masks, of
Score-CAM channels, ...), so an adapter wrapped in :class:`WatchedAdapter` sees each pass go by:
it counts the samples for the page's progress display and, before each pass, raises
:class:`TimeLimitExceededError` or :class:`RequestCancelledError` when the request ran out of
time or was cancelled. A request therefore stops within one pass of its limit, and the worker
thread is free again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from salience.adapters.base import BlackBoxAdapter, DifferentiableAdapter, LayerAccessAdapter
from salience.errors import SalienceError


class TimeLimitExceededError(SalienceError, RuntimeError):
    """The request computed for longer than the server's time limit."""


class RequestCancelledError(SalienceError, RuntimeError):
    """The request was cancelled by its client."""


class Watch:
    """The clock, cancel flag and pass counters of one request (thread-safe).

    Parameters
    ----------
    time_limit : float
        Seconds the request may compute, counted from :meth:`start`.
    """

    def __init__(self, time_limit: float) -> None:
        self.time_limit = float(time_limit)
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._started: float | None = None
        self._passes = 0
        self._samples = 0

    def start(self) -> None:
        """Start the clock (when a worker picks the request up)."""
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()

    def cancel(self) -> None:
        """Ask the request to stop at its next model pass."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def elapsed(self) -> float:
        """Seconds since :meth:`start` (0 before)."""
        with self._lock:
            return 0.0 if self._started is None else time.monotonic() - self._started

    def check(self) -> None:
        """Raise if the request was cancelled or ran past its time limit."""
        if self._cancelled.is_set():
            raise RequestCancelledError("the request was cancelled")
        if self.elapsed() > self.time_limit:
            raise TimeLimitExceededError(
                f"the request took longer than the server's time limit of {self.time_limit:g} s; "
                "ask for fewer samples, steps or masks, or start the server with a larger "
                "--time-limit"
            )

    def count(self, samples: int) -> None:
        """Record one model pass over ``samples`` inputs."""
        with self._lock:
            self._passes += 1
            self._samples += int(samples)

    def counters(self) -> tuple[int, int]:
        """``(passes, samples)`` so far."""
        with self._lock:
            return self._passes, self._samples


class WatchedAdapter:
    """An adapter that checks a :class:`Watch` before, and counts after, each model pass.

    It has the capabilities of the adapter it wraps, no more: ``WatchedAdapter(adapter, watch)``
    is a black box (:class:`~salience.adapters.base.BlackBoxAdapter`) around a black box, and
    also differentiable and with layer access where the wrapped adapter is, so a method refuses
    a watched model exactly as it refuses the model itself. It is never randomizable: a
    randomized copy would run unwatched. The model, layers, device and preprocessing are the
    wrapped adapter's.

    Parameters
    ----------
    adapter : BlackBoxAdapter
        The shared adapter of a loaded model (it is not changed).
    watch : Watch
        The request's watch.
    """

    is_adapter = True

    def __new__(cls, adapter: BlackBoxAdapter, watch: Watch) -> WatchedAdapter:
        if cls is WatchedAdapter:
            passes = isinstance(adapter, DifferentiableAdapter)
            layers = isinstance(adapter, LayerAccessAdapter)
            cls = _WATCHED_CLASSES[passes, layers]
        return super().__new__(cls)

    def __init__(self, adapter: BlackBoxAdapter, watch: Watch) -> None:
        self._adapter = adapter
        self._watch = watch

    def _pass(self, samples: int, run: Any, *args: Any, **kwargs: Any) -> Any:
        self._watch.check()
        result = run(*args, **kwargs)
        self._watch.count(samples)
        return result

    @property
    def device(self) -> object:
        """The wrapped adapter's device."""
        return self._adapter.device

    def prepare_input(self, x: Tensor) -> Tensor:
        """The wrapped adapter's ``prepare_input`` (no model pass)."""
        return self._adapter.prepare_input(x)

    def forward(self, x: Tensor, **options: Any) -> Tensor:
        """The wrapped adapter's ``forward``, watched."""
        return self._pass(int(x.shape[0]), self._adapter.forward, x, **options)


class _WatchedPasses(WatchedAdapter):
    """A watched :class:`~salience.adapters.base.DifferentiableAdapter`."""

    _adapter: DifferentiableAdapter

    @property
    def model(self) -> object:
        """The wrapped adapter's model."""
        return self._adapter.model

    def run(self, x: Tensor, score: Any, need: Any) -> Any:
        """The wrapped adapter's ``run``, watched."""
        return self._pass(int(x.shape[0]), self._adapter.run, x, score, need)


class _WatchedLayers(WatchedAdapter):
    """A watched :class:`~salience.adapters.base.LayerAccessAdapter`."""

    _adapter: LayerAccessAdapter

    def layer_names(self) -> Sequence[str]:
        """The wrapped adapter's layer names."""
        return self._adapter.layer_names()

    def layer_table(self, x: Tensor) -> list[Any]:
        """The wrapped adapter's layer table (no pass is counted: it is traced once)."""
        return self._adapter.layer_table(x)

    def resolve_layer(self, layer: Any, x: Tensor) -> str:
        """The wrapped adapter's ``resolve_layer``."""
        return self._adapter.resolve_layer(layer, x)

    def scaled_layer_outputs(self, x: Tensor, layer: str, scales: Tensor, **options: Any) -> Tensor:
        """The wrapped adapter's ``scaled_layer_outputs``, watched."""
        return self._pass(
            int(scales.shape[0]), self._adapter.scaled_layer_outputs, x, layer, scales, **options
        )


class _WatchedPassesAndLayers(_WatchedPasses, _WatchedLayers):
    """A watched adapter with gradients and layer access (any PyTorch or Keras model)."""


_WATCHED_CLASSES: dict[tuple[bool, bool], type[WatchedAdapter]] = {
    (False, False): WatchedAdapter,
    (True, False): _WatchedPasses,
    (False, True): _WatchedLayers,
    (True, True): _WatchedPassesAndLayers,
}
"""The watched class for (differentiable, layer access)."""
