"""Re-initialize parts of a PyTorch model, for the model-parameter randomization test.

Adebayo et al. (2018) re-initialize a trained network one layer or block at a time, from the
top (logits) down, and ask whether a saliency method notices. This module finds those blocks
("units") and draws their new weights from an explicit seeded generator, on a copy of the model.

Units are the model's parameterized children in call order, with a container of blocks
(``nn.ModuleList``/``nn.Sequential`` without parameters of its own) split into its blocks, and a
normalization layer joined to the unit that runs just before it (a convolution and its
BatchNorm are one unit).

New weights: He et al.'s truncated normal for weight tensors of 2 or more dimensions
(variance 2/fan_in after the cut at 2σ), so a signal neither vanishes nor explodes through
randomized layers; zero biases; normalization layers reset to the identity (weight 1, bias 0,
running mean 0, variance 1); any other parameter from N(0, 0.02²). Each unit gets its own
generator, seeded from the seed and the unit's name, so a unit's new weights are the same in
cascading and independent tests.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from salience.adapters.layers import LayerError, LayerInfo
from salience.errors import SalienceError

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
"""Layers that belong to the layer that runs before them."""

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
OTHER_STD = 0.02
TRUNCATED_STD = 0.8796256610342398
"""The standard deviation of a unit normal cut at ±2: draws are scaled up by its inverse."""


class RandomizationError(SalienceError, ValueError):
    """A model that cannot be randomized: a black box, or one that cannot be copied."""


@dataclass(frozen=True)
class RandomizationUnit:
    """A block that is re-initialized as one step.

    Attributes
    ----------
    name : str
        The label of the step: the name of its first module.
    modules : tuple of str
        Every module re-initialized with it (its name and, say, the BatchNorm that follows).
    """

    name: str
    modules: tuple[str, ...]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _candidates(model: nn.Module) -> list[str]:
    """Children with parameters; a parameter-free container is split into its children."""
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if not _has_parameters(child):
                continue
            own = any(True for _ in child.parameters(recurse=False))
            if isinstance(child, _CONTAINERS) and not own:
                visit(child, f"{name}.")
            else:
                names.append(name)

    visit(model, "")
    return names


def randomization_units(model: nn.Module, layers: Sequence[LayerInfo]) -> list[RandomizationUnit]:
    """The model's units from the top (last to run) down to the input.

    Parameters
    ----------
    model : nn.Module
        The model.
    layers : sequence of LayerInfo
        Its modules in the order they are first called (:meth:`TorchAdapter.layer_table`);
        modules that never run are left out.
    """
    order = {info.name: position for position, info in enumerate(layers)}
    called = sorted((n for n in _candidates(model) if n in order), key=order.__getitem__)
    units: list[list[str]] = []
    for name in called:
        if units and isinstance(model.get_submodule(name), NORM_TYPES):
            units[-1].append(name)
        else:
            units.append([name])
    if not units:
        raise LayerError("the model has no parameters to randomize")
    return [RandomizationUnit(group[0], tuple(group)) for group in reversed(units)]


def named_units(model: nn.Module, names: Sequence[str]) -> list[RandomizationUnit]:
    """Units given by module names, in the order given (each name re-initialized as one step)."""
    from salience.adapters.layers import layer_name

    units = []
    for name in names:
        resolved = layer_name(model, name)
        if resolved is None or not _has_parameters(model.get_submodule(resolved)):
            raise LayerError(f"layer {name!r} has no parameters to randomize")
        units.append(RandomizationUnit(resolved, (resolved,)))
    return units


def unit_generator(seed: int, unit: RandomizationUnit, device: torch.device) -> torch.Generator:
    """The generator of one unit's new weights: seeded by ``seed`` and the unit's name."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(unit.name.encode("utf-8"))])
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))
    return generator


def he_truncated_normal(
    shape: Sequence[int], fan_in: int, generator: torch.Generator, *, std: float | None = None
) -> Tensor:
    """Normal draws cut at 2 standard deviations, of std √(2/fan_in) (or ``std``) after the cut."""
    std = math.sqrt(2.0 / max(fan_in, 1)) if std is None else std
    values = torch.randn(tuple(shape), generator=generator, device=generator.device)
    while (outside := values.abs() > 2.0).any():  # redraw beyond the cut
        values[outside] = torch.randn(
            int(outside.sum()), generator=generator, device=generator.device
        )
    return values * (std / TRUNCATED_STD)


def _reinitialize_module(module: nn.Module, generator: torch.Generator) -> None:
    if isinstance(module, NORM_TYPES):
        for name, parameter in module.named_parameters(recurse=False):
            parameter.fill_(1.0 if name == "weight" else 0.0)
        for name, buffer in module.named_buffers(recurse=False):
            if name == "running_var":
                buffer.fill_(1.0)
            elif buffer.is_floating_point() or name == "num_batches_tracked":
                buffer.zero_()
        return
    for name, parameter in module.named_parameters(recurse=False):
        if parameter.ndim >= 2:
            parameter.copy_(he_truncated_normal(parameter.shape, parameter[0].numel(), generator))
        elif name == "bias":
            parameter.zero_()
        else:
            parameter.copy_(he_truncated_normal(parameter.shape, 1, generator, std=OTHER_STD))


@torch.no_grad()
def initialize(root: nn.Module, generator: torch.Generator) -> None:
    """Draw new weights for ``root`` and all its submodules, in place (the rules above)."""
    for module in root.modules():
        _reinitialize_module(module, generator)


def reinitialize(model: nn.Module, unit: RandomizationUnit, seed: int) -> None:
    """Draw new weights for every module of ``unit`` in ``model`` (in place: pass a copy)."""
    roots = [model.get_submodule(name) for name in unit.modules]
    generator = unit_generator(seed, unit, next(roots[0].parameters()).device)
    for root in roots:
        initialize(root, generator)


def randomized_copy(model: nn.Module, units: Sequence[RandomizationUnit], seed: int) -> nn.Module:
    """A deep copy of ``model`` with every unit of ``units`` re-initialized."""
    try:
        duplicate = copy.deepcopy(model)
    except Exception as error:
        raise RandomizationError(
            f"randomization works on a copy of the model, and copy.deepcopy failed: {error}"
        ) from error
    for unit in units:
        reinitialize(duplicate, unit, seed)
    return duplicate
