"""Measure which conventions the EfficientNet-Lite0 weights were trained with.

Runs the embedded model over real photos from ``skimage.data`` (and matplotlib's portrait of
Grace Hopper) under every combination of padding (TensorFlow "same" vs symmetric ``k // 2``),
BatchNorm epsilon (1e-3 vs 1e-5), input normalisation (ImageNet mean/std, TF-Lite
``(255 x - 127) / 128``, raw ``[0, 1]``) and resize preset (shorter side 256 + centre crop 224 or
shorter side 224 + centre crop 224, each bicubic or bilinear). For each it prints the top-1 class
and probability per photo, how many photos got an acceptable top-1, the (log) probability given
to the acceptable classes, and how far the statistics of every BatchNorm layer's input on these
photos are from the stored running statistics (the weights' own record of what their training
inputs looked like). A paired summary then counts, for each factor, in how many settings of the
other factors each level wins, and the script ends with the predictions of
``efficientnet_lite0()`` under the conventions fixed in ``salience.zoo.efficientnet_lite``.

Usage: ``python bench/zoo_conventions.py`` (a few minutes on two CPU cores).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

try:
    import salience.zoo.efficientnet_lite as lite
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import salience.zoo.efficientnet_lite as lite

EfficientNetLite0 = lite.EfficientNetLite0
efficientnet_lite0 = lite.efficientnet_lite0
_weights_path = lite._weights_path
PREPROCESS_MEAN, PREPROCESS_STD = lite.PREPROCESS_MEAN, lite.PREPROCESS_STD
RESIZE_SIZE, CROP_SIZE, INTERPOLATION = lite.RESIZE_SIZE, lite.CROP_SIZE, lite.INTERPOLATION

CLASSES = (
    (Path(__file__).resolve().parents[1] / "src/salience/zoo/imagenet_classes.txt")
    .read_text()
    .splitlines()
)


def grace_hopper() -> np.ndarray:
    """The portrait of Grace Hopper shipped with matplotlib (a classic ImageNet example)."""
    from matplotlib import cbook

    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


# photo name -> (loader, acceptable ImageNet classes)
PHOTOS: dict[str, tuple[object, set[int]]] = {
    "chelsea": (data.chelsea, {281, 282, 283, 284, 285}),  # tabby .. Egyptian cat
    "coffee": (data.coffee, {967, 968, 504}),  # espresso, cup, coffee mug
    "rocket": (data.rocket, {812, 657, 744}),  # space shuttle, missile, projectile
    "motorcycle": (lambda: data.stereo_motorcycle()[0], {665, 670}),  # moped, motor scooter
    "camera": (data.camera, {759, 732, 872}),  # reflex camera, Polaroid camera, tripod
    "hopper": (grace_hopper, {652}),  # military uniform
    # shown for reference, not scored: a portrait has no ImageNet class; the grey clock is
    # misclassified under every convention
    "astronaut": (data.astronaut, set()),
    "clock": (data.clock, set()),
}
# colour photos whose crops are used for the BatchNorm-statistics check
STATS_PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle", "hopper", "astronaut")

NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tflite": ((127 / 255,) * 3, (128 / 255,) * 3),
    "raw01": ((0.0,) * 3, (1.0,) * 3),
}

RESIZES: dict[str, tuple[int, int, Image.Resampling]] = {
    "256/224 bicubic": (256, 224, Image.Resampling.BICUBIC),
    "256/224 bilinear": (256, 224, Image.Resampling.BILINEAR),
    "224/224 bicubic": (224, 224, Image.Resampling.BICUBIC),
    "224/224 bilinear": (224, 224, Image.Resampling.BILINEAR),
}


def load_rgb(loader: object) -> np.ndarray:
    img = np.asarray(loader())  # type: ignore[operator]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def resize_shorter(img: np.ndarray, resize: int, interp: Image.Resampling) -> Image.Image:
    """Resize so the shorter side is ``resize`` pixels (aspect ratio kept)."""
    pil = Image.fromarray(img)
    w, h = pil.size
    scale = resize / min(w, h)
    return pil.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), interp)


def crop_normalise(
    pil: Image.Image,
    crop: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    where: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """Crop ``crop`` x ``crop`` at ``where`` ((0.5, 0.5) = centre), scale to [0, 1], normalise."""
    w, h = pil.size
    left, top = round((w - crop) * where[0]), round((h - crop) * where[1])
    pil = pil.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def forward_with_bn_mismatch(
    model: torch.nn.Module, batch: torch.Tensor, stats_rows: list[int]
) -> tuple[torch.Tensor, float, float]:
    """Run ``model`` and measure how far BatchNorm input statistics are from the running stats.

    Statistics are taken over the ``stats_rows`` of the batch. Per channel the mismatch is
    ``|mean_b - running_mean| / sqrt(running_var + 1e-3)`` plus
    ``|log((var_b + 1e-3) / (running_var + 1e-3))|``, averaged over channels. Returns the logits,
    the mismatch of the stem BatchNorm ``_bn0`` (sensitive to input normalisation and resizing)
    and the mean over all 49 BatchNorm layers (also sensitive to BN eps and padding, which change
    what later layers receive).
    """
    scores: dict[str, float] = {}
    rows = torch.tensor(stats_rows)

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
            x = inputs[0][rows]
            mu = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            rm, rv = mod.running_mean, mod.running_var
            assert rm is not None and rv is not None
            z = (mu - rm).abs() / (rv + 1e-3).sqrt()
            lv = ((var + 1e-3) / (rv + 1e-3)).log().abs()
            scores[name] = float((z + lv).mean())

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    try:
        logits = model(batch)
    finally:
        for h in handles:
            h.remove()
    return logits, scores["_bn0"], sum(scores.values()) / len(scores)


def describe(probs: torch.Tensor) -> str:
    top = probs.topk(3)
    return ", ".join(
        f"{int(c)} {CLASSES[int(c)]} {float(p):.3f}"
        for p, c in zip(top.values, top.indices, strict=True)
    )


def main() -> None:
    torch.set_grad_enabled(False)
    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    images = {name: load_rgb(loader) for name, (loader, _) in PHOTOS.items()}
    names = list(PHOTOS)
    scored = [name for name in names if PHOTOS[name][1]]
    # centre crop first, then the four corners
    crops = [(0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    stats_rows = [
        i for i, (n, _) in enumerate(itertools.product(names, crops)) if n in STATS_PHOTOS
    ]
    resized = {
        (n, rname): resize_shorter(images[n], rs, interp)
        for n in names
        for rname, (rs, _, interp) in RESIZES.items()
    }

    header = f"{'padding':8} {'eps':6} {'norm':9} {'resize/crop interp':17} |"
    header += "".join(f" {name[:10]:>10}" for name in names)
    header += (
        f" | {'top1 ok':>7} {'p(ok)':>5} {'logp':>6} {'5crop':>6} | {'bn0dev':>6} {'BNdev':>5}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for tf_pad, eps in itertools.product((True, False), (1e-3, 1e-5)):
        model = EfficientNetLite0(bn_eps=eps, tf_padding=tf_pad)
        model.load_state_dict(state, strict=True)
        model.eval()
        for (norm, (mean, std)), (rname, (_, crop, _)) in itertools.product(
            NORMS.items(), RESIZES.items()
        ):
            batch = torch.stack(
                [
                    crop_normalise(resized[n, rname], crop, mean, std, where)
                    for n, where in itertools.product(names, crops)
                ]
            )
            logits, dev0, dev = forward_with_bn_mismatch(model, batch, stats_rows)
            probs = logits.softmax(-1).view(len(names), len(crops), -1)
            cells, n_ok, logp_centre, logp_all = [], 0, [], []
            for i, name in enumerate(names):
                ok = PHOTOS[name][1]
                p, c = probs[i, 0].max(0)
                hit = int(c) in ok
                n_ok += hit
                cells.append(f"{int(c):4d} {float(p):.2f}{'*' if hit else ' '}")
                if ok:
                    p_ok = probs[i][:, sorted(ok)].sum(-1).clamp_min(1e-12)
                    logp_centre.append(float(p_ok[0].log()))
                    logp_all += p_ok.log().tolist()
            mean_p = sum(math.exp(v) for v in logp_centre) / len(logp_centre)
            mean_log = sum(logp_centre) / len(logp_centre)
            mean_log5 = sum(logp_all) / len(logp_all)
            row = f"{'tf-same' if tf_pad else 'sym k/2':8} {eps:<6.0e} {norm:9} {rname:17} |"
            row += "".join(f" {cell:>10}" for cell in cells)
            row += f" | {n_ok:>4d}/{len(scored)} {mean_p:>5.3f} {mean_log:>6.3f} {mean_log5:>6.3f}"
            row += f" | {dev0:>6.3f} {dev:>5.3f}"
            print(row, flush=True)
            results.append(
                {
                    "pad": tf_pad,
                    "eps": eps,
                    "norm": norm,
                    "resize": rname,
                    "logp": mean_log,
                    "logp5": mean_log5,
                    "dev": dev,
                    "probs": probs[:, 0],
                }
            )
    print("cells: centre crop's top-1 class index and softmax probability; '*' = acceptable class")
    print(f"acceptable: { {n: sorted(ok) for n, (_, ok) in PHOTOS.items() if ok} }")
    print("p(ok), logp: mean probability / mean log probability of the acceptable classes on the")
    print("  centre crops of the scored photos; 5crop: mean log probability over centre + 4 corner")
    print("  crops of each scored photo (less noisy); higher is better")
    print("bn0dev, BNdev: BatchNorm input statistics vs running stats on the 5 crops of")
    print(f"  {', '.join(STATS_PHOTOS)}: stem BN / mean of all 49 BN layers; lower is better")

    # paired comparison per factor: for every setting of the other three factors, which level
    # gives the best 5-crop log p(ok) and the lowest BN mismatch
    factors = {
        "padding": ("pad", {True: "tf-same", False: "sym k/2"}),
        "BN eps": ("eps", {1e-3: "1e-3", 1e-5: "1e-5"}),
        "norm": ("norm", {n: n for n in NORMS}),
        "resize": ("resize", {r: r for r in RESIZES}),
    }
    print(
        f"\n{'factor':8} {'level':17} | {'mean 5crop':>10} {'5crop wins':>10} |"
        f" {'mean BNdev':>10} {'BNdev wins':>10}"
    )
    for factor, (key, levels) in factors.items():
        others = [k for k, _ in factors.values() if k != key]
        groups: dict[tuple, list[dict]] = {}
        for r in results:
            groups.setdefault(tuple(r[k] for k in others), []).append(r)
        for level, label in levels.items():
            sel = [r for r in results if r[key] == level]
            wins5 = sum(max(g, key=lambda r: r["logp5"])[key] == level for g in groups.values())
            winsd = sum(min(g, key=lambda r: r["dev"])[key] == level for g in groups.values())
            print(
                f"{factor:8} {label:17} | {sum(r['logp5'] for r in sel) / len(sel):>10.3f}"
                f" {wins5:>4d}/{len(groups):<5d} | {sum(r['dev'] for r in sel) / len(sel):>10.3f}"
                f" {winsd:>4d}/{len(groups):<5d}"
            )

    def name(r: dict) -> str:
        pad = "tf-same" if r["pad"] else "sym k/2"
        return f"padding={pad}, eps={r['eps']:g}, norm={r['norm']}, resize={r['resize']}"

    print()
    for title, key, sign in (
        ("centre-crop log p(ok)", "logp", 1),
        ("5-crop log p(ok)", "logp5", 1),
        ("BN statistics mismatch", "dev", -1),
    ):
        ranked = sorted(results, key=lambda r, k=key, s=sign: -s * r[k])
        print(f"top 3 by {title}:")
        for r in ranked[:3]:
            print(f"  {r[key]:7.3f}  {name(r)}")

    # the conventions fixed in salience.zoo.efficientnet_lite, run through efficientnet_lite0()
    model = efficientnet_lite0()
    rs, crop = RESIZE_SIZE, CROP_SIZE
    interp = Image.Resampling[INTERPOLATION.upper()]
    batch = torch.stack(
        [
            crop_normalise(
                resize_shorter(images[n], rs, interp), crop, PREPROCESS_MEAN, PREPROCESS_STD
            )
            for n in names
        ]
    )
    probs = model(batch).softmax(-1)
    print(
        f"\nchosen (efficientnet_lite0(), tf_padding={model._conv_stem.tf_padding}, "
        f"eps={model._bn0.eps:g}, mean={PREPROCESS_MEAN[0]:.4f}, std={PREPROCESS_STD[0]:.4f}, "
        f"shorter side {rs} -> centre crop {crop}, {INTERPOLATION}):"
    )
    for i, n in enumerate(names):
        print(f"  {n:11} {describe(probs[i])}")


if __name__ == "__main__":
    main()
