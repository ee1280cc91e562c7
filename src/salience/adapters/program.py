"""Run compiled PyTorch programs: TorchScript modules and ``torch.export`` programs.

Both run and differentiate like any module, so gradient and black-box methods work on them
through :class:`~salience.adapters.torch.TorchAdapter`. Their layers, however, run inside a
compiled graph: forward hooks on a TorchScript submodule are refused and an exported program
never calls its submodules, and the ReLUs a backward rule replaces are not Python calls. CAMs
and guided backprop therefore stop with an error that says so, instead of a wrong map.

Reading a program from a file, without running what it carries, is the job of
:mod:`salience.models.export` and :mod:`salience.models.torchscript`; this module runs programs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from salience.adapters.base import Need, Outputs, ScoreFn
from salience.adapters.layers import LayerError, LayerInfo, LayerLike
from salience.adapters.torch import EvalModeProvider, TorchAdapter
from salience.errors import InvalidInputError

TORCHSCRIPT = "TorchScript module"
EXPORTED = "torch.export program"


class CompiledModule(nn.Module):
    """A compiled program as a module: it runs and differentiates, its layers cannot be hooked.

    Asking for a layer (``get_submodule``) raises a :class:`LayerError` that says so, so CAMs
    stop before any work.

    Parameters
    ----------
    program : nn.Module
        The program's module.
    name : str
        How errors name it (the file name).
    """

    kind = "compiled program"

    def __init__(self, program: nn.Module, name: str = "the model") -> None:
        super().__init__()
        self.name = name
        self.program = program

    def no_layers(self) -> LayerError:
        """The error for a method that needs a layer."""
        return LayerError(
            f"{self.name} is a {self.kind}: its layers run inside a compiled graph that cannot "
            "be hooked, so CAMs do not run on it (gradient and black-box methods do); for CAMs, "
            "open the model from its code: --model package.module:function --weights FILE"
        )

    def get_submodule(self, target: str) -> nn.Module:
        """This module for ``""``; any layer raises :class:`LayerError`."""
        if not target:
            return self
        raise self.no_layers()

    def forward(self, x: Tensor) -> Any:
        """The program's output for the batch ``x``."""
        return self.program(x)


class ScriptedModule(CompiledModule):
    """A TorchScript module (``torch.jit.load``)."""

    kind = TORCHSCRIPT


class ExportedModule(CompiledModule):
    """A ``torch.export`` program: batches of any size, shapes checked up front.

    An exported program is captured in one mode (train or eval), so :meth:`train` changes only
    this wrapper's flag. A program exported with a fixed batch size runs any batch in chunks of
    that size (the last one padded); gradients flow through the chunks.

    Parameters
    ----------
    program : torch.export.ExportedProgram
        A program with one tensor input.
    name : str
        How errors name it (the file name).
    """

    kind = EXPORTED

    def __init__(self, program: torch.export.ExportedProgram, name: str = "the program") -> None:
        inputs = [
            node
            for node in program.graph.nodes
            if node.op == "placeholder" and node.name in program.graph_signature.user_inputs
        ]
        if len(inputs) != 1:
            raise InvalidInputError(
                f"{name} takes {len(inputs)} inputs; salience explains programs with one image "
                "input: export a module that takes the image only"
            )
        super().__init__(program.module(), name)
        value = inputs[0].meta.get("val")
        shape = getattr(value, "shape", None)
        self.input_shape: tuple[int | None, ...] | None = (
            None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
        )

    def train(self, mode: bool = True) -> ExportedModule:
        """Set this wrapper's flag only: the program's mode was fixed when it was exported."""
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Any:
        """The program's output for the batch ``x``."""
        expected = self.input_shape
        if expected is None:
            return self.program(x)
        fits = x.ndim == len(expected) and all(
            e is None or e == s for e, s in zip(expected[1:], x.shape[1:], strict=True)
        )
        if not fits:
            wanted = ", ".join("N" if i == 0 else str(d or "?") for i, d in enumerate(expected))
            raise InvalidInputError(
                f"{self.name} was exported for inputs ({wanted}), got {tuple(x.shape)}; prepare "
                "images at that size (--size, or a preset sidecar) or export with dynamic shapes"
            )
        batch = expected[0]
        if batch is None or x.shape[0] == batch:
            return self.program(x)
        parts = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            rows = chunk.shape[0]
            if rows < batch:
                chunk = torch.cat([chunk, chunk.new_zeros(batch - rows, *chunk.shape[1:])])
            parts.append(self.program(chunk)[:rows])
        return torch.cat(parts)


class ProgramAdapter(TorchAdapter):
    """Adapter for compiled programs: outputs and input gradients, no layer captures.

    Parameters
    ----------
    program : CompiledModule, torch.jit.ScriptModule or torch.export.ExportedProgram
        The program; a TorchScript module or exported program is wrapped. It runs itself (a
        deep copy of a TorchScript module has non-leaf parameters), in eval mode, with every
        module's flag restored after each call.
    name : str
        How errors name the model (its file name).
    """

    def __init__(self, program: Any, *, name: str | None = None) -> None:
        if isinstance(program, torch.export.ExportedProgram):
            program = ExportedModule(program, name or "the program")
        elif not isinstance(program, CompiledModule):
            program = ScriptedModule(program, name or "the model")
        super().__init__(
            program, strip_softmax=False, strip_sigmoid=False, provider=EvalModeProvider(program)
        )
        self.name = program.name
        self.kind = program.kind

    def layer_names(self) -> Sequence[str]:
        """None: a compiled program's layers cannot be captured."""
        return []

    def layer_table(self, x: Tensor) -> list[LayerInfo]:
        """Not available for compiled programs."""
        raise self.model.no_layers()

    def resolve_layer(self, layer: LayerLike, x: Tensor) -> str:
        """Not available for compiled programs."""
        raise self.model.no_layers()

    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of an exported program's static NCHW input shape, if it has one."""
        shape = getattr(self.model, "input_shape", None)
        if shape is None or len(shape) != 4 or not (shape[2] and shape[3]):
            return None
        return shape[2], shape[3]

    def run(self, x: Tensor, score: ScoreFn, need: Need) -> Outputs:
        """One pass with input gradients; layer captures and backward rules are refused."""
        if need.layer is not None:
            raise self.model.no_layers()
        if need.backward_rule is not None:
            raise InvalidInputError(
                f"{self.name} is a {self.kind}: its ReLUs run inside a compiled graph, so the "
                f"{need.backward_rule} backward rule (guided backprop) cannot be applied; open "
                "the model from its code: --model package.module:function --weights FILE"
            )
        return super().run(x, score, need)

    def scaled_layer_outputs(
        self, x: Tensor, layer: str, scales: Tensor, *, channel_dim: int = 1
    ) -> Tensor:
        """Not available for compiled programs."""
        raise self.model.no_layers()


__all__ = [
    "EXPORTED",
    "TORCHSCRIPT",
    "CompiledModule",
    "ExportedModule",
    "ProgramAdapter",
    "ScriptedModule",
]
