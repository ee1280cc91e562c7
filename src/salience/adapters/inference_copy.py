"""A private, faster copy of a user's model for inference: BatchNorm folded into convolutions.

The copy never changes the user's model, is verified against it on the first batch (outputs equal
to 1e-4, else the unfolded copy is used), and is rebuilt whenever a parameter or buffer of the
user's model changes (tracked through tensor versions and storage pointers).
"""

from __future__ import annotations

import copy
import warnings
import weakref

import torch
from torch import Tensor, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
EQUALITY_TOLERANCE = 1e-4
_FOLDED_ATTRIBUTE = "_salience_folded_convolutions"


class CopyError(RuntimeError):
    """The model cannot be deep-copied (it holds locks, open files, ...)."""


def weights_fingerprint(model: nn.Module) -> tuple:
    """A cheap key that changes whenever any parameter or buffer of ``model`` is changed."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def _foldable_pairs(model: nn.Module, sample: Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs where the norm consumes exactly the conv's output."""
    produced_by: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def remember_conv(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            produced_by[id(output)] = name

        return hook

    def match_norm(name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            conv = produced_by.get(id(inputs[0]))
            if conv is not None:
                pairs.append((conv, name))

        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, _CONVS):
                handles.append(module.register_forward_hook(remember_conv(name)))
            elif isinstance(module, _NORMS) and module.track_running_stats:
                handles.append(module.register_forward_pre_hook(match_norm(name)))
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for conv, norm in pairs:
        counts[conv] = counts.get(conv, 0) + 1
        counts[norm] = counts.get(norm, 0) + 1
    return [(c, n) for c, n in dict.fromkeys(pairs) if counts[c] == 1 and counts[n] == 1]


def _fold(conv: nn.Module, norm: nn.Module) -> None:
    scale = norm.weight.detach() if norm.affine else torch.ones_like(norm.running_var)
    shift = norm.bias.detach() if norm.affine else torch.zeros_like(norm.running_mean)
    factor = scale / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shape = (-1,) + (1,) * (conv.weight.ndim - 1)
    conv.weight = nn.Parameter(conv.weight.detach() * factor.reshape(shape), requires_grad=False)
    conv.bias = nn.Parameter((bias - norm.running_mean) * factor + shift, requires_grad=False)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def build_inference_copy(model: nn.Module, sample: Tensor, *, fold: bool = True) -> nn.Module:
    """A frozen eval-mode deep copy of ``model``, with BatchNorm folded where that is exact.

    Parameters
    ----------
    model : nn.Module
        The user's model; it is not modified.
    sample : Tensor
        A batch of real inputs, used to find conv→BatchNorm pairs and to verify the copy.
    fold : bool
        Fold BatchNorm into the preceding convolution.
    """
    try:
        plain = copy.deepcopy(model)
    except Exception as error:
        raise CopyError(str(error)) from error
    plain.eval()
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    if not fold:
        return plain
    probe = sample[:2].detach()
    folded = copy.deepcopy(plain)
    pairs = _foldable_pairs(folded, probe)
    if not pairs:
        return plain
    for conv_name, norm_name in pairs:
        _fold(folded.get_submodule(conv_name), folded.get_submodule(norm_name))
        _replace(folded, norm_name, nn.Identity())
    with torch.inference_mode():
        reference = plain(probe)
        candidate = folded(probe)
    if outputs_equal(reference, candidate):
        # A folded convolution outputs what its norm did: remember which, for layer captures.
        setattr(folded, _FOLDED_ATTRIBUTE, frozenset(conv for conv, _ in pairs))
        return folded
    warnings.warn(
        "folding BatchNorm changed this model's outputs; using an unfolded copy",
        RuntimeWarning,
        stacklevel=3,
    )
    return plain


def outputs_equal(a: object, b: object) -> bool:
    """Same structure and shapes; values equal to ``EQUALITY_TOLERANCE`` × the largest one."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return False
        scale = float(a.abs().max()) if a.numel() else 0.0
        return bool(((a - b).abs().max() <= EQUALITY_TOLERANCE * max(1.0, scale)).item())
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        return all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return all(outputs_equal(a[k], b[k]) for k in a)
    return False


def folded_convolutions(copy: nn.Module) -> frozenset[str]:
    """Names of the convolutions of an inference copy that have a BatchNorm folded into them."""
    return getattr(copy, _FOLDED_ATTRIBUTE, frozenset())


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, nn.Module | None]]] = (
    weakref.WeakKeyDictionary()
)


def cached_inference_copy(
    model: nn.Module, sample: Tensor, *, fold: bool = True, channels_last: bool = False
) -> nn.Module | None:
    """The inference copy of ``model`` for these options, built once per version of its weights.

    The cache is keyed weakly by the user's model (the copy holds no reference to it), so a model
    that is dropped takes its copy with it; a changed parameter or buffer triggers a rebuild.
    Callers serialize access per model.

    Returns
    -------
    nn.Module or None
        The copy; None when an earlier attempt found that this model cannot be copied.

    Raises
    ------
    CopyError
        The first time a model turns out not to be copyable (later calls return None).
    """
    fingerprint = weights_fingerprint(model)
    entries = _CACHE.setdefault(model, {})
    options = (fold, channels_last)
    cached = entries.get(options)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    try:
        built = build_inference_copy(model, sample, fold=fold)
    except CopyError:
        entries[options] = (fingerprint, None)
        raise
    if channels_last:
        built = built.to(memory_format=torch.channels_last)
    entries[options] = (fingerprint, built)
    return built
