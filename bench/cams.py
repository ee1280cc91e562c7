"""Time the class activation maps against plain-torch lower bounds, and check their maps.

For EfficientNet-Lite0 on one 1×3×224×224 photo (``skimage.data.chelsea``), the predicted class,
on CPU, measured interleaved (A B C … C B A) with medians of same-round ratios:

* Gradient CAMs on ``_blocks.15`` (320 × 7 × 7). The lower bound, in the same process, is one
  forward of the plain model (eval mode, contiguous NCHW, no BatchNorm folding, parameters frozen
  on a deep copy) with a forward hook that makes the layer's output a leaf, and one
  ``torch.autograd.grad(score, leaf)``: the backward stops at the layer. The same lower bound on a
  channels-last copy is reported for information. Each of gradcam, gradcam++, xgradcam, layercam,
  hirescam and eigencam (explainers built once) is given as a ratio to it (target <= 1.1), the
  five gradient CAMs together (``salience.explain_all``) as a ratio to ``salience.explain`` of
  gradcam alone (target <= 1.3), and every map of ``explain_all`` is compared with the map the
  method computes alone.
* Score-CAM and Ablation-CAM on ``_blocks.15`` and on the automatic layer (``_head_activation``,
  1280 × 7 × 7). The lower bound is what a straightforward implementation cannot avoid (and what
  pytorch-grad-cam runs): C forward passes of the plain model (eval mode, NCHW,
  ``torch.no_grad()``) in chunks of 16 inputs, C the number of channels (target: salience >= 2×
  faster). The 320 passes are timed; the 1280 passes are 4× as many identical chunks and are
  taken as 4× the 320 of the same round (``--full-lower-bound`` times them too, +30 s a round).
  Skipped channels and seconds per evaluated channel are reported. Peak RSS is measured in fresh
  child processes (the high-water mark is reset to the current RSS once the model is loaded and
  has run once, then read after one explanation), for two chunk sizes and both layers: memory
  grows with the chunk size, not with the number of channels.
* Map checks: Score-CAM against a reference written here from the paper's definition (each
  channel upsampled bilinearly to 224×224, ``align_corners=False``, min-max normalized, constant
  channels skipped; weight = softmax probability of the target on the masked input minus that on
  an all-zero input; ReLU of the weighted sum of activations), run on the plain model;
  Ablation-CAM against a reference that zeroes the channel with a forward hook on the plain model
  and runs full forward passes (all-zero channels are left out: zeroing them changes nothing, and
  their weight multiplies zeros). Reported as max |Δ| / max |map|.
* Peer, when ``pytorch_grad_cam`` (package ``grad-cam``) can be imported: its GradCAM is timed
  with the gradient CAMs and its map compared with salience's (raw, and as displayed: min-max
  normalized and resized to the input); ``--peers-slow`` also times its ScoreCAM (16 per batch)
  and AblationCAM (its default 32 per batch) on both layers. Their Score-CAM weighs channels by a
  softmax over the channels' logits and their Ablation-CAM ablates a layer with negative values
  to ``min − 1e7``, so those maps differ from the papers' (and salience's) by design: only their
  time is compared. pytorch-grad-cam imports torchvision; when torchvision is not installed a
  stub module with placeholders of the names it imports is put in ``sys.modules`` first (none of
  them is called on this path).

``THP_MEM_ALLOC_ENABLE=1`` is set before torch is imported (``--no-thp``: 0), as in
``bench/methods.py``.

Run by hand: ``PYTHONPATH=src python bench/cams.py [--repeats N] [--slow-repeats N]
[--peers-slow] [--full-lower-bound] [--skip-checks] [--parts ...]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import copy
import json
import resource
import subprocess
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import common
import salience
from grad_cam_peer import load_peer
from salience.methods.score_cam import ABLATION_CHUNK_SIZE, SCORE_CAM_CHUNK_SIZE

LAYER = "_blocks.15"
AUTO = "auto"
GRADIENT_CAMS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
PLAIN_CHUNK = 16
PEER = "pytorch-grad-cam"
PARTS = ("gradient", "perturbation", "rss")
#: Chunk sizes of the peak-memory children, per method.
RSS_CHUNKS = {"scorecam": (8, 32), "ablationcam": (64, 256)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed rounds of the gradient CAMs (default 20)"
    )
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=3,
        help="timed rounds of Score-CAM / Ablation-CAM and their lower bounds (default 3)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    parser.add_argument("--skip-checks", action="store_true", help="skip the map checks")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to run (default: all): gradient CAMs, Score/Ablation-CAM timings, peak RSS",
    )
    parser.add_argument(
        "--full-lower-bound",
        action="store_true",
        help="time the 1280 plain forward passes too, instead of 4x those of the 320 channels",
    )
    parser.add_argument("--no-peers", action="store_true", help="leave pytorch-grad-cam out")
    parser.add_argument(
        "--peers-slow",
        action="store_true",
        help="also time pytorch-grad-cam's ScoreCAM and AblationCAM (~1.5 min a round, + warm-up)",
    )
    parser.add_argument(
        "--rss-child", nargs=3, metavar=("METHOD", "LAYER", "CHUNK"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


# -- plain-torch lower bounds and references -------------------------------------------------------


def frozen_copy(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """A deep copy in eval mode with frozen parameters (optionally channels-last)."""
    clone = copy.deepcopy(model).eval()
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    if channels_last:
        clone = clone.to(memory_format=torch.channels_last)
    return clone


def layer_gradient(model: nn.Module, layer: str, channels_last: bool = False) -> Callable:
    """``f(x, target)``: the gradient of the target logit w.r.t. ``layer``'s output, plain torch.

    A forward hook makes the layer's output a leaf, so the forward pass records the layers after
    it only and the backward pass stops at it.
    """
    clone = frozen_copy(model, channels_last)
    leaves: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        leaf = output.detach().requires_grad_()
        leaves.append(leaf)
        return leaf

    clone.get_submodule(layer).register_forward_hook(hook)

    def run(x: Tensor, target: int) -> Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        leaves.clear()
        with torch.enable_grad():
            logits = clone(x)
            (grad,) = torch.autograd.grad(logits[0, target], leaves[-1])
        return grad

    return run


def plain_forwards(model: nn.Module, x: Tensor, channels: int, chunk: int = PLAIN_CHUNK) -> None:
    """``channels`` forward passes of the plain model in chunks of ``chunk`` inputs, no grad."""
    batch = x.expand(chunk, *x.shape[1:]).contiguous()
    with torch.no_grad():
        for start in range(0, channels, chunk):
            model(batch[: min(chunk, channels - start)])


def captured(model: nn.Module, layer: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """The plain model's logits and ``layer``'s output on ``x``, no grad."""
    store: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: store.append(out.detach())
    )
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, store[0]


def reference_scorecam(model: nn.Module, layer: str, x: Tensor, target: int) -> Tensor:
    """Score-CAM as the paper defines it, on the plain model: ``(h, w)``."""
    _, activations = captured(model, layer, x)
    features = activations[0]
    with torch.no_grad():
        base = torch.softmax(model(torch.zeros_like(x)), dim=1)[0, target].double()
    weights = torch.zeros(features.shape[0], dtype=torch.float64)
    kept = [c for c in range(features.shape[0]) if features[c].max() > features[c].min()]
    for start in range(0, len(kept), PLAIN_CHUNK):
        rows = kept[start : start + PLAIN_CHUNK]
        up = F.interpolate(
            features[rows].unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        low = up.amin(dim=(1, 2, 3), keepdim=True)
        high = up.amax(dim=(1, 2, 3), keepdim=True)
        masks = (up - low) / (high - low)
        with torch.no_grad():
            probs = torch.softmax(model(x * masks), dim=1)[:, target].double()
        weights[rows] = probs - base
    return torch.relu((weights.float().reshape(-1, 1, 1) * features).sum(0))


def reference_ablationcam(model: nn.Module, layer: str, x: Tensor, target: int) -> Tensor:
    """Ablation-CAM on the plain model: each channel zeroed by a forward hook, full passes."""
    logits, activations = captured(model, layer, x)
    features = activations[0]
    score = logits[0, target].double()
    weights = torch.zeros(features.shape[0], dtype=torch.float64)
    # an all-zero channel is unchanged when zeroed, and its weight multiplies zeros
    kept = [c for c in range(features.shape[0]) if features[c].abs().max() > 0]
    module = model.get_submodule(layer)
    for start in range(0, len(kept), PLAIN_CHUNK):
        rows = kept[start : start + PLAIN_CHUNK]

        def zero(_m: nn.Module, _i: tuple, out: Tensor, rows: list[int] = rows) -> Tensor:
            out = out.clone()
            out[torch.arange(len(rows)), rows] = 0
            return out

        handle = module.register_forward_hook(zero)
        try:
            with torch.no_grad():
                ablated = model(x.expand(len(rows), *x.shape[1:]))[:, target].double()
        finally:
            handle.remove()
        weights[rows] = (score - ablated) / score
    return torch.relu((weights.float().reshape(-1, 1, 1) * features).sum(0))


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``max |a − b| / max |b|``."""
    return float((a - b).abs().max() / b.abs().max())


# -- pytorch-grad-cam ------------------------------------------------------------------------------


def peer_gradcam_checks(peer: types.ModuleType, model: nn.Module, x: Tensor, target: int) -> list:
    """Compare pytorch-grad-cam's GradCAM with salience's on ``_blocks.15``."""
    clone = copy.deepcopy(model)
    cam = peer.GradCAM(clone, [clone.get_submodule(LAYER)])
    targets = [peer.ClassifierOutputTarget(target)]
    shown = torch.from_numpy(cam(input_tensor=x, targets=targets))  # (1, 224, 224)
    activations = cam.activations_and_grads.activations[0].numpy()
    gradients = cam.activations_and_grads.gradients[0].numpy()
    raw = cam.get_cam_image(x, clone.get_submodule(LAYER), targets, activations, gradients)
    raw = torch.from_numpy(np.maximum(raw, 0))  # (1, 7, 7), as their compute_cam_per_layer
    ours = salience.explain(model, x, method="gradcam", layer=LAYER, target=target).attributions
    ours = ours[:, 0]

    def normalize(cam: Tensor) -> Tensor:  # their scale_cam_image, per image
        cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
        return cam / (1e-7 + cam.amax(dim=(-2, -1), keepdim=True))

    # theirs: ReLU, normalize, resize (cv2 bilinear, pixel centres), normalize again
    resized = F.interpolate(
        normalize(ours).unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False
    )
    ours_shown = normalize(resized[:, 0])
    return [
        f"Grad-CAM salience vs {PEER}, raw 7x7 CAM after ReLU: max|Δ|/max|map| = "
        f"{relative_difference(ours, raw):.2e}",
        f"Grad-CAM salience normalized+resized like {PEER} vs its output (in [0, 1]): "
        f"max|Δ| = {float((ours_shown - shown).abs().max()):.2e}",
    ]


# -- gradient CAMs ---------------------------------------------------------------------------------


def gradient_part(
    args: argparse.Namespace, model: nn.Module, x: Tensor, target: int, peer: object
) -> None:
    """Time the gradient CAMs; check explain_all's maps against each method alone."""
    lower = layer_gradient(model, LAYER)
    lower_cl = layer_gradient(model, LAYER, channels_last=True)
    explainers = {m: salience.make_explainer(model, m, layer=LAYER) for m in GRADIENT_CAMS}
    explainers["eigencam"] = salience.make_explainer(model, "eigencam", layer=LAYER)

    if not args.skip_checks:
        print("explain_all maps vs each method alone (same process, same input):")
        together = salience.explain_all(model, x, GRADIENT_CAMS, layer=LAYER)
        for method in GRADIENT_CAMS:
            alone = salience.explain(model, x, method=method, layer=LAYER).attributions
            diff = float((together[method].attributions - alone).abs().max())
            same = torch.equal(together[method].attributions, alone)
            print(f"  {method:<10} max|Δ| = {diff:.1e}  identical: {same}")
        if peer is not None:
            for line in peer_gradcam_checks(peer, model, x, target):
                print("  " + line)
        print()

    runs: dict[str, Callable[[], object]] = {
        "lower bound (NCHW)": lambda: lower(x, target),
        "lower bound (channels_last)": lambda: lower_cl(x, target),
    }
    for method, explainer in explainers.items():
        runs[method] = lambda e=explainer: e(x)
    runs["explain(gradcam)"] = lambda: salience.explain(model, x, method="gradcam", layer=LAYER)
    runs["explain_all(5 gradient CAMs)"] = lambda: salience.explain_all(
        model, x, GRADIENT_CAMS, layer=LAYER
    )
    if peer is not None:
        clone = copy.deepcopy(model)
        cam = peer.GradCAM(clone, [clone.get_submodule(LAYER)])
        targets = [peer.ClassifierOutputTarget(target)]
        runs[f"{PEER} GradCAM"] = lambda: cam(input_tensor=x, targets=targets)

    print(f"gradient CAMs on {LAYER}: {args.repeats} interleaved rounds after 1 warm-up")
    times = common.interleaved(runs, args.repeats, progress=False)
    base = "lower bound (NCHW)"
    rows: list[tuple[str, str | None, str]] = [
        (base, None, ""),
        ("lower bound (channels_last)", base, "(information)"),
    ]
    rows += [(method, base, "<= 1.1" if method in GRADIENT_CAMS else "") for method in explainers]
    rows.append(("explain(gradcam)", base, ""))
    rows.append(("explain_all(5 gradient CAMs)", "explain(gradcam)", "<= 1.3"))
    if peer is not None:
        rows.append((f"{PEER} GradCAM", base, ""))
        rows.append((f"{PEER} GradCAM", "gradcam", ""))
    print_table(times, rows)


# -- Score-CAM and Ablation-CAM -------------------------------------------------------------------


def perturbation_part(
    args: argparse.Namespace, model: nn.Module, x: Tensor, target: int, peer: object
) -> None:
    """Time Score-CAM and Ablation-CAM on both layers against C plain forward passes."""
    layers = {LAYER: LAYER, AUTO: None}
    explainers, channels, skipped, resolved = {}, {}, {}, {}
    for label, layer in layers.items():
        for method in ("scorecam", "ablationcam"):
            explainer = salience.make_explainer(model, method, layer=layer)
            explanation = explainer(x)  # also the warm-up: inference copy, fan-out check
            explainers[(method, label)] = explainer
            resolved[label] = explanation.info["layer"]
            channels[label] = explanation.info["feature_shape"][0]
            skipped[(method, label)] = explanation.info["skipped_channels"]

    if not args.skip_checks:
        print("maps vs references on the plain model (max|Δ| / max|map|):")
        for label in layers:
            name = resolved[label]
            for method, reference in (
                ("scorecam", reference_scorecam),
                ("ablationcam", reference_ablationcam),
            ):
                ours = explainers[(method, label)](x, target).attributions[0, 0]
                expected = reference(model, name, x, target)
                print(
                    f"  {method:<11} {name:<16} {relative_difference(ours, expected):.2e}  "
                    f"(max of the map {float(expected.max()):.3g})"
                )
        print()

    bounds = {label: f"lower bound: {channels[label]} plain fwd" for label in layers}
    timed_bounds = {channels[label]: bounds[label] for label in layers}
    if not args.full_lower_bound:  # the same chunks of 16, more of them: scale the smallest
        smallest = min(timed_bounds)
        timed_bounds = {smallest: timed_bounds[smallest]}
    runs: dict[str, Callable[[], object]] = {}
    warmups: dict[str, Callable[[], object]] = {}
    for c, key in timed_bounds.items():
        runs[key] = lambda c=c: plain_forwards(model, x, c)
        warmups[key] = lambda: plain_forwards(model, x, PLAIN_CHUNK + 1)
    for label in layers:
        for method in ("scorecam", "ablationcam"):
            key = f"{method} {resolved[label]}"
            runs[key] = lambda e=explainers[(method, label)]: e(x)
            warmups[key] = lambda: None  # warmed up above
    if peer is not None and args.peers_slow:
        targets = [peer.ClassifierOutputTarget(target)]
        for label in layers:
            clone = copy.deepcopy(model)
            score_cam = peer.ScoreCAM(clone, [clone.get_submodule(resolved[label])])
            score_cam.batch_size = PLAIN_CHUNK
            clone = copy.deepcopy(model)
            ablation_cam = peer.AblationCAM(clone, [clone.get_submodule(resolved[label])])
            for method, cam in (("ScoreCAM", score_cam), ("AblationCAM", ablation_cam)):
                key = f"{PEER} {method} {resolved[label]}"
                runs[key] = lambda cam=cam: cam(input_tensor=x, targets=targets)
                warmups[key] = runs[key]

    print(
        f"Score-CAM / Ablation-CAM (library chunk sizes {SCORE_CAM_CHUNK_SIZE} / "
        f"{ABLATION_CHUNK_SIZE}): {args.slow_repeats} interleaved rounds; lower bound = C forward "
        f"passes of the plain model (eval, NCHW, no_grad) in chunks of {PLAIN_CHUNK}"
    )
    times = common.interleaved(runs, args.slow_repeats, warmup=warmups, progress=False)
    for label in layers:
        if bounds[label] not in times:
            c = channels[label]
            timed = min(timed_bounds)
            factor = -(-c // PLAIN_CHUNK) / -(-timed // PLAIN_CHUNK)
            times[bounds[label]] = [t * factor for t in times[timed_bounds[timed]]]
            print(
                f"({bounds[label]}: the {timed} passes timed in the same round x {factor:g}, "
                f"as many more chunks of {PLAIN_CHUNK}; --full-lower-bound times them)"
            )
    rows = []
    for label in layers:
        bound = bounds[label]
        rows.append((bound, None, ""))
        for method in ("scorecam", "ablationcam"):
            rows.append((f"{method} {resolved[label]}", bound, ">= 2"))
        for method in ("ScoreCAM", "AblationCAM"):
            key = f"{PEER} {method} {resolved[label]}"
            if key in times:
                rows.append((key, bound, ""))
    print_table(times, rows, speedup=True)
    print()
    print("| method | layer | channels | skipped | evaluated | s per evaluated channel |")
    print("|---|---|---:|---:|---:|---:|")
    for label in layers:
        c = channels[label]
        bound = common.median(times[bounds[label]]) / c
        print(f"| plain forward | {resolved[label]} | {c} | 0 | {c} | {bound:.4f} |")
        for method in ("scorecam", "ablationcam"):
            done = c - skipped[(method, label)]
            per = common.median(times[f"{method} {resolved[label]}"]) / max(done, 1)
            print(
                f"| {method} | {resolved[label]} | {c} | {skipped[(method, label)]} | {done} | "
                f"{per:.4f} |"
            )


# -- peak memory -----------------------------------------------------------------------------------


def rss_child(args: argparse.Namespace) -> None:
    """Child mode: RSS with the model loaded and run once, then the peak of one run; print JSON.

    The high-water mark is reset to the current RSS first (``/proc/self/clear_refs``), so the
    increase is what the run needed on top of what the process held; where that cannot be done,
    the baseline is ``ru_maxrss`` so far, which hides whatever fits under earlier peaks.
    """
    method, layer, chunk = args.rss_child
    model, x, _ = common.setup(args.threads)  # loads the model and runs it once
    if common.reset_peak():
        baseline, how = common.memory_mib()["VmRSS"], "VmRSS after resetting VmHWM"
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        how = "ru_maxrss so far"
    if method == "plain":
        plain_forwards(model, x, int(layer), int(chunk))
        info = {}
    else:
        explainer = salience.make_explainer(
            model, method, layer=None if layer == AUTO else layer, chunk_size=int(chunk)
        )
        info = explainer(x).info
    peak = common.memory_mib().get(
        "VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    result = {
        "baseline": baseline,
        "peak": peak,
        "how": how,
        "layer": info.get("layer", "-"),
        "skipped": info.get("skipped_channels", 0),
    }
    print(json.dumps(result))


def rss_part(args: argparse.Namespace) -> None:
    """Peak RSS increase of one explanation, each in a fresh process."""
    jobs = [("plain", "320", str(PLAIN_CHUNK))]
    for method, sizes in RSS_CHUNKS.items():
        for layer in (LAYER, AUTO):
            jobs += [(method, layer, str(size)) for size in sizes]
    print("peak RSS of one run, each in a fresh process, over the RSS with the model loaded and")
    print("run once (the increase includes salience's inference copy: about 19 MiB of weights)")
    print("| run | layer | chunk | baseline MiB | peak MiB | increase MiB |")
    print("|---|---|---:|---:|---:|---:|")
    how = set()
    for method, layer, chunk in jobs:
        command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", method, layer]
        command.append(chunk)
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.no_thp:
            command.append("--no-thp")
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        data = json.loads(result.stdout.strip().splitlines()[-1])
        how.add(data["how"])
        label = f"{layer} plain forwards" if method == "plain" else data["layer"]
        print(
            f"| {method} | {label} | {chunk} | {data['baseline']:.0f} | {data['peak']:.0f} | "
            f"{data['peak'] - data['baseline']:.0f} |"
        )
    print(f"baseline: {', '.join(sorted(how))}; peak: VmHWM")


# -- report ----------------------------------------------------------------------------------------


def print_table(
    times: dict[str, list[float]],
    rows: list[tuple[str, str | None, str]],
    *,
    speedup: bool = False,
) -> None:
    """Markdown table: medians, spread, ratio of medians and median same-round ratio.

    The ratio is candidate / reference, or reference / candidate with ``speedup``.
    """
    ratio_name = "speed-up (ref / it)" if speedup else "ratio (it / ref)"
    print(f"| candidate | median s | min s | spread | reference | {ratio_name} | paired | target |")
    print("|---|---:|---:|---:|---|---:|---:|---|")
    for name, den, goal in rows:
        values = times[name]
        cells = [
            name,
            f"{common.median(values):.4f}",
            f"{min(values):.4f}",
            f"{common.spread(values):.0%}",
        ]
        if den is None:
            cells += ["", "", "", goal]
        else:
            num, den_ = (den, name) if speedup else (name, den)
            ratio = common.median(times[num]) / common.median(times[den_])
            paired = common.paired_ratio(times, num, den_)
            cells += [den, f"{ratio:.3f}", f"{paired:.3f}", goal]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    """Run the checks, the timings and the memory children; print the report."""
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return
    model, x, target = common.setup(args.threads)
    print(common.header("salience CAM benchmark: EfficientNet-Lite0", target))
    peer, how = (None, "left out (--no-peers)") if args.no_peers else load_peer()
    print(f"peer {PEER}: {how}\n")
    start = common.cpu_snapshot()
    if "gradient" in args.parts:
        gradient_part(args, model, x, target, peer)
        print()
    if "perturbation" in args.parts:
        perturbation_part(args, model, x, target, peer)
    print(common.footer(start))
    if "rss" in args.parts:
        print()
        rss_part(args)


if __name__ == "__main__":
    main()
