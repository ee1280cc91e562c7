"""pytorch-grad-cam, the CAM peer of the benchmarks, imported without torchvision.

pytorch-grad-cam imports torchvision at import time but calls none of it for the CAMs timed
here; where torchvision is missing, placeholders stand in for the names it imports.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types


def stub_torchvision() -> None:
    """Placeholders of the torchvision names pytorch-grad-cam imports (none is called here)."""

    def placeholder(*_args: object, **_kwargs: object) -> None:
        raise NotImplementedError("torchvision is not installed; this is a benchmark's stub")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    transforms.Compose = transforms.Normalize = transforms.ToTensor = placeholder
    functional.resize = placeholder
    ops.box_iou = placeholder
    transforms.functional = functional
    root.transforms, root.ops = transforms, ops
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
        }
    )


def load_peer() -> tuple[types.ModuleType | None, str]:
    """``pytorch_grad_cam`` (progress bars off) and how it was imported, or None and why not."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None, "not installed (pip install --no-deps grad-cam ttach opencv-python-headless)"
    stubbed = importlib.util.find_spec("torchvision") is None
    if stubbed:
        stub_torchvision()
    try:
        import pytorch_grad_cam
        import pytorch_grad_cam.ablation_cam
        import pytorch_grad_cam.score_cam
        import tqdm
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except Exception as error:  # any import failure leaves the peer out
        return None, f"import failed: {type(error).__name__}: {error}"
    quiet = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    pytorch_grad_cam.score_cam.tqdm = quiet
    pytorch_grad_cam.ablation_cam.tqdm = quiet
    pytorch_grad_cam.ClassifierOutputTarget = ClassifierOutputTarget
    from importlib.metadata import version

    how = "torchvision stubbed" if stubbed else "with torchvision"
    return pytorch_grad_cam, f"grad-cam {version('grad-cam')} ({how})"
