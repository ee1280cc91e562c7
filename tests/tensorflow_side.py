"""The TensorFlow side of ``test_tensorflow_reference.py``, run in a process of its own.

Keras chooses its backend once per process, when it is first imported; the test process runs
Keras on torch (as every other Keras test does), so the same ``.keras`` file is explained on
the TensorFlow backend here: by salience (through ``salience.models``, as ``--backend
tensorflow`` opens it) and by tf-keras-vis, with the noise salience's SmoothGrad draws.

Usage: ``python tensorflow_side.py MODEL.keras INPUTS.npz OUT.npz``; ``INPUTS.npz`` holds the
batch ``x`` (NCHW), the layer, the SmoothGrad settings and the methods to run (with their
options as JSON).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(model_path: str, inputs_path: str, out_path: str) -> None:
    from salience.models.tensorflow import use_backend

    use_backend("tensorflow")  # what --backend tensorflow does, before Keras is imported
    import torch

    import salience
    from salience.methods.sampling import make_generator
    from salience.models import open_model

    data = np.load(inputs_path)
    x = torch.from_numpy(data["x"])
    layer = str(data["layer"])
    seed, n_samples, noise = int(data["seed"]), int(data["n_samples"]), float(data["noise"])
    methods = json.loads(str(data["methods"]))
    adapter = open_model(model_path).adapter
    results: dict[str, np.ndarray] = {"adapter": np.array(type(adapter).__name__)}
    for key, (method, options) in methods.items():
        explanation = salience.explain(adapter, x, method=method, **options)
        results[f"salience/{key}"] = explanation.attributions.numpy()
        results["targets"] = explanation.targets.numpy()

    import keras
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = keras.saving.load_model(model_path, compile=False)
    score = CategoricalScore(results["targets"].reshape(-1).tolist())
    images = x.permute(0, 2, 3, 1).numpy()  # tf-keras-vis takes the model's NHWC batches
    linear = ReplaceToLinear()
    saliency = Saliency(model, model_modifier=linear)
    results["tkv/gradient"] = saliency(score, images, normalize_map=False)
    # SmoothGrad on the noise salience draws: its generator, its shape (N, samples, C, H, W),
    # handed to tf-keras-vis in the shape it asks numpy for, (samples, N, H, W, C).
    draws = torch.randn(
        (x.shape[0], n_samples, *x.shape[1:]), generator=make_generator(seed, x.device)
    )
    salience_noise = draws.permute(1, 0, 3, 4, 2).numpy()

    def same_noise(loc: float, scale: object, size: tuple[int, ...]) -> np.ndarray:
        assert loc == 0.0 and tuple(size) == salience_noise.shape
        return np.asarray(scale) * salience_noise

    np.random.normal = same_noise
    results["tkv/smoothgrad"] = saliency(
        score, images, smooth_samples=n_samples, smooth_noise=noise, normalize_map=False
    )
    cam_options = {
        "penultimate_layer": layer,
        "seek_penultimate_conv_layer": False,
        "expand_cam": False,
        "normalize_cam": False,
    }
    results["tkv/gradcam"] = Gradcam(model, model_modifier=linear)(score, images, **cam_options)
    results["tkv/gradcam++"] = GradcamPlusPlus(model, model_modifier=linear)(
        score, images, **cam_options
    )
    results["tkv/scorecam"] = Scorecam(model, model_modifier=linear)(score, images, **cam_options)
    results["unchanged"] = np.array(model.layers[-1].activation.__name__)
    np.savez(out_path, **{k: np.asarray(v) for k, v in results.items()})


if __name__ == "__main__":
    main(*sys.argv[1:4])
