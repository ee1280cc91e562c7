"""Time salience's TensorFlow adapter against tf-keras-vis on the same TensorFlow model.

A ``tf_keras`` MobileNetV2 (``weights=None``, seeded, a final softmax) on one photo
(``skimage.data.chelsea``, resized to ``--size``), its predicted class, on CPU. Three methods,
each tool's object built once before timing (both clone the model then), measured interleaved
(A B … B A) with medians of same-round ratios, salience / tf-keras-vis (goal: <= 1):

* gradient: salience ``gradient`` against tf-keras-vis ``Saliency`` (its default |g| and max
  over channels, ``normalize_map=False``), both on the logits (``ReplaceToLinear``).
* SmoothGrad-50 (σ = 0.2 of the range): salience ``smoothgrad`` (``n_samples=50``, in chunks)
  against ``Saliency(smooth_samples=50)``, which runs one gradient pass per sample.
* Grad-CAM on ``out_relu``: salience ``gradcam`` against ``Gradcam`` (``expand_cam=False``: both
  at the layer's 5×5 grid).

The maps are compared too (as tf-keras-vis shows them, min-max normalized): max |Δ| is printed.
``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is imported, so that ``tf.keras`` (what
tf-keras-vis uses) is ``tf_keras``.

(Not ``bench/tensorflow.py``: run as a script, its folder comes first on ``sys.path`` and the
name would hide the ``tensorflow`` package.)

Run by hand: ``PYTHONPATH=src python bench/tensorflow_models.py [--repeats N] [--size S]``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf_keras, for tf-keras-vis (read at import)

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import common
import salience

LAYER = "out_relu"
SAMPLES, NOISE = 50, 0.2


def normalized(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(maps.shape[0], -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - low.reshape(shape)) / np.where(high > low, high - low, 1).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()

    import tf_keras
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    tf_keras.utils.set_random_seed(0)
    size = args.size
    model = tf_keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    photo = F.interpolate(common.chelsea(), size=(size, size), mode="bilinear", antialias=True)
    images = photo.permute(0, 2, 3, 1).numpy()
    target = int(salience.explain(model, photo, method="gradient").targets[0, 0])
    score = CategoricalScore([target])

    ours = {
        "gradient": salience.make_explainer(model, "gradient"),
        "smoothgrad": salience.make_explainer(
            model, "smoothgrad", n_samples=SAMPLES, noise=NOISE, seed=0, absolute=True
        ),
        "gradcam": salience.make_explainer(model, "gradcam", layer=LAYER),
    }
    saliency = Saliency(model, model_modifier=ReplaceToLinear())
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear())
    cam_options = {"penultimate_layer": LAYER, "seek_penultimate_conv_layer": False}
    peers = {
        "gradient": lambda: saliency(score, images, normalize_map=False),
        "smoothgrad": lambda: saliency(
            score, images, smooth_samples=SAMPLES, smooth_noise=NOISE, normalize_map=False
        ),
        "gradcam": lambda: gradcam(
            score, images, expand_cam=False, normalize_cam=False, **cam_options
        ),
    }
    start = common.cpu_snapshot()
    print(common.machine_line())
    print(f"tf_keras MobileNetV2 {size}×{size}, class {target}, {args.repeats} rounds")
    for name, explainer in ours.items():
        candidates = {
            "salience": lambda explainer=explainer: explainer(photo, target),
            "tf-keras-vis": peers[name],
        }
        times = common.interleaved(candidates, args.repeats, progress=False)
        ratio = common.paired_ratio(times, "salience", "tf-keras-vis")
        ours_map = explainer(photo, target).attributions[:, 0]
        if name != "gradcam":
            ours_map = ours_map.abs().amax(dim=1)
        peer_map = np.asarray(peers[name]())
        difference = np.abs(normalized(ours_map.numpy()) - normalized(peer_map)).max()
        print(
            f"{name:>11}: salience {common.median(times['salience']):.3f} s, tf-keras-vis "
            f"{common.median(times['tf-keras-vis']):.3f} s, ratio {ratio:.2f} (goal <= 1); "
            f"maps max |Δ| {difference:.1e}"
            + (" (SmoothGrad: different noise)" if name == "smoothgrad" else "")
        )
    print(common.footer(start))


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
