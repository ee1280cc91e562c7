"""Run an ONNX model with onnxruntime: a black box that gives outputs, never gradients.

Black-box methods (occlusion, RISE) explain such a model exactly as they explain a
``torch.nn.Module``: they only call :meth:`OnnxAdapter.prepare_input` and
:meth:`OnnxAdapter.forward`. Batches are NCHW torch tensors on the salience side whatever the
model takes; an NHWC model gets its batches transposed. It has no ``run``: it is a
:class:`~salience.adapters.base.BlackBoxAdapter` only, and methods that need gradients or layer
activations refuse it with :class:`~salience.adapters.base.GradientsUnavailableError`.

onnxruntime (and onnx, to read the graph) come with the ``onnx`` extra:
``pip install 'salience[onnx]'``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salience.adapters.base import (
    check_batch,
    check_finite_input,
)
from salience.adapters.structured import OutputKeyError
from salience.errors import (
    InvalidInputError,
    MissingFileError,
    MissingPackageError,
    first_line,
)

LAYOUTS = ("nchw", "nhwc")
INSTALL_HINT = "pip install 'salience[onnx]'"
_FINAL_ACTIVATIONS = {"Softmax": "softmax", "LogSoftmax": "softmax", "Sigmoid": "sigmoid"}
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingPackageError(f"ONNX models need onnxruntime: {INSTALL_HINT}") from error
    return onnxruntime


def _runtime_message(error: BaseException) -> str:
    """The first line of an onnxruntime error, without its ``[ONNXRuntimeError] : n : KIND :``."""
    return _ORT_PREFIX.sub("", first_line(error))


def _check_external_data(path: Path) -> None:
    """Refuse external data that lies outside the model's folder (absolute, ``..``, a link out).

    onnxruntime runs only its own kernels (no custom-operator library is registered), so the
    graph itself cannot reach files; external data could read any file into a weight.
    """
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors
    except ImportError:
        return  # onnxruntime checks the locations itself
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:
        raise InvalidInputError(
            f"{path.name} is not a valid ONNX model: {_runtime_message(error)}"
        ) from error
    folder = path.parent.resolve()
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if (
            Path(location).is_absolute()
            or ".." in Path(location).parts
            or folder not in target.parents
        ):
            raise InvalidInputError(
                f"{path.name} keeps the tensor {tensor.name!r} in {location!r}, outside the "
                "model's folder; keep its external data files beside the model (onnx.save_model "
                "with save_as_external_data=True writes them there)"
            )


def _shape_text(shape: Sequence[object]) -> str:
    """``(N, 3, 32, 32)``: the batch dimension as N, other unknown sizes as ?."""
    dims = ["N" if i == 0 and not isinstance(d, int) else d for i, d in enumerate(shape)]
    return "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in dims) + ")"


def _static(shape: Sequence[object]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def infer_layout(shape: Sequence[object]) -> tuple[str, bool]:
    """The layout of a 4-D input shape, and whether the shape said so unambiguously.

    A channel dimension of size 1 or 3 at position 1 means NCHW, at position 3 NHWC; when both
    or neither are (dynamic sizes, a 3×3 image), the answer is NCHW and ambiguous.
    """
    dims = _static(shape)
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first != last:
        return ("nchw" if first else "nhwc"), True
    return "nchw", False


_THREADS_LOCK = threading.Lock()
_OWNERS = [0, 0]
"""[blocks now inside :func:`onnxruntime_owns_the_cores`, torch's thread count before them]."""


@contextmanager
def onnxruntime_owns_the_cores() -> Iterator[None]:
    """Run the block with torch on one thread; restore its thread count after, also on error.

    Torch's idle OpenMP workers spin for a while after each torch operation and onnxruntime's
    own pool then waits on them: on 2 cores, occlusion on an ONNX model ran 8% slower than the
    same onnxruntime runs alone, 2% with torch on one thread (``bench/onnx_runtime.py``). The
    count is process-wide: nested and concurrent blocks share one change, undone by the last.
    """
    with _THREADS_LOCK:
        if _OWNERS[0] == 0:
            _OWNERS[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _OWNERS[0] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _OWNERS[0] -= 1
            if _OWNERS[0] == 0:
                torch.set_num_threads(_OWNERS[1])


class OnnxAdapter:
    """Adapter for an ``.onnx`` file, run by onnxruntime: outputs only (a black box).

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX model file.
    input_name : str, optional
        The input that receives the images; needed when the model has several inputs.
    layout : {"nchw", "nhwc"}, optional
        The layout of a 4-D image input. By default inferred from the input's static shape
        (a dimension of size 1 or 3 at position 1 is NCHW, at position 3 NHWC), NCHW when the
        shape does not tell. salience always hands NCHW batches; NHWC models get them transposed.
    providers : sequence of str
        onnxruntime execution providers, in order of preference.
    threads : int, optional
        onnxruntime's intra-op threads (default: onnxruntime's choice, every core).
    other_inputs : mapping of str to array, optional
        Constant values of the model's other inputs, fed with every batch. An array whose first
        dimension is 1 is repeated along the batch when that input's batch size is dynamic.
    strip_softmax : bool
        Explain the logits when the model's output is computed by a final ``Softmax``,
        ``LogSoftmax`` or ``Sigmoid`` node (that node is cut off; reading the graph needs the
        onnx package).
    output : str or int, optional
        The output to explain, by name or index, when the model has several (default: its
        first output); ``adapter.with_output(key)`` gives the same adapter explaining another.

    Notes
    -----
    Models whose input has a fixed batch size run in batches of that size; the last one is
    padded and the padding's outputs dropped. onnxruntime computes only what the chosen
    output needs.
    """

    #: onnxruntime gives outputs only: a :class:`~salience.adapters.base.BlackBoxAdapter`,
    #: with no ``run`` (gradients) and no layer access.
    is_adapter = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_name: str | None = None,
        layout: str | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        other_inputs: Mapping[str, Any] | None = None,
        strip_softmax: bool = True,
        output: str | int | None = None,
    ) -> None:
        self._arguments = {
            "input_name": input_name,
            "layout": layout,
            "providers": providers,
            "threads": threads,
            "other_inputs": other_inputs,
            "strip_softmax": strip_softmax,
        }
        if layout is not None and layout.lower() not in LAYOUTS:
            raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        ort = _onnxruntime()
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise MissingFileError(f"no ONNX model at {os.fspath(path)}")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise InvalidInputError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        self._options = options
        self._providers = list(providers)
        _check_external_data(self.path)
        self.session = self._session(os.fspath(self.path))
        #: The position of the explained output among the model's outputs.
        self.output_index = self._output_index(output)
        self.output = self.session.get_outputs()[self.output_index].name
        self.stripped_softmax = False
        #: The final activation cut off the graph ("softmax", "sigmoid"), if any.
        self.stripped_activation: str | None = None
        if strip_softmax:
            self._strip_softmax()

        inputs = {arg.name: arg for arg in self.session.get_inputs()}
        names = ", ".join(inputs)
        if input_name is None:
            if len(inputs) != 1:
                raise InvalidInputError(
                    f"{self.name} has {len(inputs)} inputs ({names}); choose the image input "
                    "with input_name= (--input-name)"
                )
            input_name = next(iter(inputs))
        elif input_name not in inputs:
            raise InvalidInputError(f"{self.name} has no input {input_name!r}; its inputs: {names}")
        self.input_name = input_name
        self.input_shape: list[object] = list(inputs[input_name].shape)
        self._input_type = _NUMPY_TYPES.get(inputs[input_name].type)
        if self._input_type is None:
            raise InvalidInputError(
                f"input {input_name!r} of {self.name} takes {inputs[input_name].type}; salience "
                "feeds float images (float, float16 or double)"
            )
        self.other_inputs = self._constants(inputs, other_inputs or {})

        self.layout_inferred = layout is None
        if len(self.input_shape) == 4:
            if layout is None:
                layout, _ = infer_layout(self.input_shape)
            self.layout: str | None = layout.lower()
        elif layout is not None:
            raise InvalidInputError(
                f"input {input_name!r} of {self.name} has shape {_shape_text(self.input_shape)}; "
                "a layout applies to 4-D image inputs only"
            )
        else:
            self.layout = None
        batch = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    # -- loading -----------------------------------------------------------------------------
    def _session(self, model: str | bytes) -> Any:
        ort = _onnxruntime()
        try:
            return ort.InferenceSession(model, self._options, providers=self._providers)
        except Exception as error:
            raise InvalidInputError(
                f"{self.name} is not a valid ONNX model: {_runtime_message(error)}"
            ) from error

    def _output_index(self, key: str | int | None) -> int:
        """The index of the output named by ``key`` (a name, an index, or digits typed on the
        command line); 0 for None."""
        outputs = self.session.get_outputs()
        if key is None:
            return 0
        names = [output.name for output in outputs]
        if isinstance(key, str) and key in names:
            return names.index(key)
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(outputs):
            return key
        listing = ", ".join(
            f"{index}: {output.name} {_shape_text(output.shape)}"
            for index, output in enumerate(outputs)
        )
        raise OutputKeyError(
            f"{self.name} has no output {key!r}; its outputs are {listing}: choose one by name "
            "or index (output=..., --output-key)"
        )

    def with_output(self, output: str | int | None) -> OnnxAdapter:
        """This model explaining its output ``output`` (a name or an index)."""
        return OnnxAdapter(self.path, **self._arguments, output=output)

    def _strip_softmax(self) -> None:
        """Cut a final Softmax/LogSoftmax/Sigmoid off the explained output, so that it gives
        logits."""
        try:
            import onnx
        except ImportError as error:
            raise MissingPackageError(
                f"reading the graph of an ONNX model needs onnx: {INSTALL_HINT} (or pass "
                "strip_softmax=False)"
            ) from error
        proto = onnx.load(os.fspath(self.path), load_external_data=False)
        graph = proto.graph
        index = self.output_index
        output = graph.output[index].name
        producer = next((node for node in graph.node if output in node.output), None)
        if producer is None or producer.op_type not in _FINAL_ACTIVATIONS:
            return
        logits = producer.input[0]
        elem_type = graph.output[index].type.tensor_type.elem_type
        outputs = list(graph.output)
        outputs[index] = onnx.helper.make_tensor_value_info(logits, elem_type, None)
        del graph.output[:]
        graph.output.extend(outputs)
        if not any(output in node.input for node in graph.node) and output not in {
            o.name for o in graph.output
        }:
            graph.node.remove(producer)
        onnx.load_external_data_for_model(proto, os.fspath(self.path.parent))
        self.session = self._session(proto.SerializeToString())
        self.output = logits
        self.stripped_activation = _FINAL_ACTIVATIONS[producer.op_type]
        self.stripped_softmax = self.stripped_activation == "softmax"

    def final_activation(self, x: Tensor) -> str | None:
        """The final activation cut off the graph (``"softmax"``, ``"sigmoid"``), if any."""
        return self.stripped_activation

    def _constants(self, inputs: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(inputs))
        if unknown or self.input_name in given:
            bad = ", ".join(unknown) or self.input_name
            raise InvalidInputError(
                f"other_inputs names {bad}, which is not another input of {self.name}; "
                f"its inputs: {', '.join(inputs)}"
            )
        missing = [n for n in inputs if n != self.input_name and n not in given]
        if missing:
            needs = ", ".join(f"{n} {_shape_text(inputs[n].shape)}" for n in missing)
            raise InvalidInputError(
                f"{self.name} also needs inputs {needs}; give them with other_inputs= "
                "(salience feeds the images only)"
            )
        constants = {}
        for name, value in given.items():
            dtype = _NUMPY_TYPES.get(inputs[name].type)
            array = np.asarray(value.cpu() if isinstance(value, Tensor) else value)
            constants[name] = array.astype(dtype) if dtype is not None else array
        return constants

    # -- metadata ----------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        """The model's ``custom_metadata_map`` (key → text); what it says of the preprocessing
        and the classes is read by :mod:`salience.models.onnx`."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def num_outputs(self) -> int | None:
        """The number of classes, when the explained output's last dimension is static."""
        shape = self.session.get_outputs()[self.output_index].shape
        size = shape[-1] if len(shape) >= 2 else None
        return size if isinstance(size, int) and size > 0 else None

    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of the input's static shape, when it is an image input with one."""
        if self.layout is None:
            return None
        dims = _static(self.input_shape)
        height, width = (dims[2], dims[3]) if self.layout == "nchw" else (dims[1], dims[2])
        return (height, width) if height and width else None

    # -- the adapter contract ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Inputs live on the CPU (onnxruntime copies them where its provider runs)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """salience hands float32 batches."""
        return torch.float32

    def layer_names(self) -> list[str]:
        """None: an ONNX model's layers cannot be captured."""
        return []

    def expected_shape(self) -> list[int | None]:
        """The input shape salience must hand (NCHW for images), None where any size goes."""
        dims = _static(self.input_shape)
        if self.layout == "nhwc":
            dims = [dims[0], dims[3], dims[1], dims[2]]
        return dims

    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` as a float32 CPU batch, checked against the model's input shape.

        Raises
        ------
        NonFiniteInputError
            When ``x`` holds NaN or infinite values (a ``ValueError``).
        """
        check_batch(x)
        expected = self.expected_shape()
        fits = x.ndim == len(expected) and all(
            e is None or e == s for e, s in zip(expected[1:], x.shape[1:], strict=True)
        )
        if not fits:
            raise InvalidInputError(self._mismatch(tuple(x.shape)))
        return check_finite_input(x.detach().to(device="cpu", dtype=torch.float32).contiguous())

    def _mismatch(self, got: tuple[int, ...]) -> str:
        expected = self.expected_shape()
        shown = [*expected]
        shown[0] = None
        text = (
            f"{self.name} expects inputs of shape {_shape_text(shown)}, got {got} (its input "
            f"{self.input_name!r} is {_shape_text(self.input_shape)}"
        )
        if self.layout is None:
            return text + ")"
        other = "nhwc" if self.layout == "nchw" else "nchw"
        channels = expected[1] if len(got) == 4 == len(expected) else None
        if channels in (1, 3) and channels != got[1]:  # a grey model given RGB, or the reverse
            return (
                f"{text}, read as {self.layout.upper()}); prepare {channels}-channel images "
                f"(channels={channels}, --channels {channels}) or give its layout "
                f"(layout='{other}', --layout {other})"
            )
        size = self.image_size()
        size_hint = f"--size {size[0]}" if size is not None and size[0] == size[1] else "--size"
        return (
            f"{text}, read as {self.layout.upper()}); prepare images at the model's size "
            f"({size_hint}) or give its layout (layout='{other}', --layout {other})"
        )

    def forward(self, x: Tensor, *, chunk_size: int | None = None, bulk: bool = False) -> Tensor:
        """Outputs (logits) for a batch, in chunks of ``chunk_size`` (float32, CPU).

        ``bulk`` (many passes follow) changes nothing: onnxruntime optimizes the graph itself.
        While onnxruntime runs, torch keeps one thread (:func:`onnxruntime_owns_the_cores`).
        """
        x = self.prepare_input(x)
        count = x.shape[0]
        size = self.fixed_batch or chunk_size or count
        parts = []
        with onnxruntime_owns_the_cores():
            for start in range(0, count, size):
                chunk = x[start : start + size]
                rows = chunk.shape[0]
                if rows < size and self.fixed_batch is not None:
                    padding = chunk.new_zeros(size - rows, *chunk.shape[1:])
                    chunk = torch.cat([chunk, padding])
                parts.append(self._run(chunk)[:rows])
        return torch.cat(parts)

    def long_run(self) -> AbstractContextManager[None]:
        """The setting of a long run of passes (masking the input between them): torch on one
        thread throughout, so its idle workers do not spin against onnxruntime's."""
        return onnxruntime_owns_the_cores()

    def _run(self, chunk: Tensor) -> Tensor:
        if self.layout == "nhwc":
            chunk = chunk.permute(0, 2, 3, 1)
        feed = {self.input_name: np.ascontiguousarray(chunk.numpy(), dtype=self._input_type)}
        for name, value in self.other_inputs.items():
            repeat = value.ndim >= 1 and value.shape[0] == 1 and self.fixed_batch is None
            feed[name] = np.repeat(value, chunk.shape[0], axis=0) if repeat else value
        try:
            (output,) = self.session.run([self.output], feed)
        except Exception as error:
            hint = ""
            if self.layout is not None and self.layout_inferred:
                hint = "; if the model takes channels-last images, pass layout='nhwc' (--layout)"
            raise InvalidInputError(
                f"{self.name} failed on a batch of shape {tuple(chunk.shape)}: "
                f"{_runtime_message(error)}{hint}"
            ) from error
        return torch.from_numpy(np.asarray(output, dtype=np.float32).copy())

    def __repr__(self) -> str:
        layout = f", layout={self.layout!r}" if self.layout else ""
        chosen = f", output={self.output_index}" if self.output_index else ""
        return (
            f"OnnxAdapter({os.fspath(self.path)!r}, input_name={self.input_name!r}{layout}{chosen})"
        )


__all__ = ["LAYOUTS", "OnnxAdapter", "infer_layout"]
