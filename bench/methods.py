"""Time salience's methods against plain-torch lower bounds and Captum on the embedded model.

For EfficientNet-Lite0 on one 1×3×224×224 photo (``skimage.data.chelsea``) on CPU, measures
interleaved (A B C … C B A, so load drifts hit all alike), then takes medians of:

* ``forward``: the user's model, no grad;
* ``fwd+input-grad``: the lower bound of a gradient map in plain torch
  (``x.requires_grad_(); autograd.grad(model(x)[0, c], x)``);
* ``salience Gradient`` (explainer built once) and ``salience.explain(gradient)`` (one call,
  which builds the model's inference copy every time);
* ``lower bound x50``: 50 such forward+backward passes on noisy copies, in chunks of the chunk
  size (the cost floor of any 50-sample method);
* ``salience SmoothGrad-50`` and Captum ``NoiseTunnel(Saliency)`` smoothgrad, 50 samples
  (all samples in one batch, Captum's default, and 16 per batch);
* ``salience IG-50`` (Gauss–Legendre) and Captum ``IntegratedGradients`` with 50 steps
  (``internal_batch_size`` unset, Captum's default, and 16);
* salience Gradient, SmoothGrad-50 and IG-50 again on ``TorchAdapter(model, channels_last=False)``
  (NCHW memory, the default before channels-last was measured faster).

It prints the medians and the ratios the project tracks (gradient / lower bound <= 1.1; Captum's
best / salience >= 1.5 for SmoothGrad and IG), and checks that the maps agree with Captum's:
IG on the same Gauss–Legendre nodes and zero baseline, and SmoothGrad fed IDENTICAL noise (Captum's
noise draw is replaced by salience's own draws, so both average gradients at the same points).

torch reads ``THP_MEM_ALLOC_ENABLE`` once, when it starts: it is set to 1 here before torch is
imported (``--no-thp`` sets it to 0) so large tensors go to 2 MiB-aligned, ``MADV_HUGEPAGE``
memory. ``--thp-compare`` times forward, the gradient lower bound, Gradient and SmoothGrad-50 in
``--repeats`` pairs of child processes started alternately with it set to 1 and 0.

Run by hand: ``PYTHONPATH=src python bench/methods.py [--repeats N] [--no-thp | --thp-compare]``.
"""

from __future__ import annotations

import os
import sys

# torch reads this once when it starts: decide before importing it (below, and in bench/common.py).
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse
import contextlib
import json
import statistics
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel, Saliency
from torch import Tensor, nn

import common
import salience
from salience.adapters.torch import TorchAdapter
from salience.methods.base import DEFAULT_CHUNK_SIZE
from salience.methods.noise import noise_scale

SAMPLES = 50
NOISE = 0.15
SEED = 0
CAPTUM_BATCH = 16
CL = "[NCHW]"
#: The subset timed by ``--thp-compare`` in each child process.
THP_SUBSET = ("forward", "fwd+input-grad", "salience Gradient", "salience SmoothGrad-50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"salience chunk size and lower-bound chunk (default {DEFAULT_CHUNK_SIZE}, "
        "the library default)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-thp", action="store_true", help="run with THP_MEM_ALLOC_ENABLE=0")
    group.add_argument(
        "--thp-compare",
        action="store_true",
        help="time a subset in child processes alternately with THP_MEM_ALLOC_ENABLE=1 and 0",
    )
    parser.add_argument("--skip-checks", action="store_true", help="skip the map-equality checks")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # child mode of --thp-compare
    parser.add_argument("--only", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- candidates ------------------------------------------------------------------------------------


def noisy_copies(x: Tensor, n: int = SAMPLES) -> Tensor:
    """``(n, C, H, W)``: salience's SmoothGrad noisy copies of the single input ``x``."""
    return salience.SmoothGrad(nn.Identity(), n_samples=n, noise=NOISE, seed=SEED).noisy_inputs(x)


def input_grad(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """Plain torch: the gradient of ``model(x)[:, target].sum()`` with respect to ``x``."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad


def candidates(
    model: nn.Module, x: Tensor, target: int, chunk: int
) -> dict[str, Callable[[], object]]:
    """Everything timed, by name, as zero-argument calls."""
    sigma = float(noise_scale(x, NOISE)[0])
    noisy = noisy_copies(x)
    gradient = salience.Gradient(model)
    smoothgrad = salience.SmoothGrad(
        model, n_samples=SAMPLES, noise=NOISE, seed=SEED, chunk_size=chunk
    )
    integrated = salience.IntegratedGradients(
        model, steps=SAMPLES, rule="gausslegendre", chunk_size=chunk
    )
    # the same explainers on an NCHW adapter (channels-last is the default: bench/chunk_size.py)
    fast = TorchAdapter(model, channels_last=False)
    gradient_cl = salience.Gradient(fast)
    smoothgrad_cl = salience.SmoothGrad(
        fast, n_samples=SAMPLES, noise=NOISE, seed=SEED, chunk_size=chunk
    )
    integrated_cl = salience.IntegratedGradients(
        fast, steps=SAMPLES, rule="gausslegendre", chunk_size=chunk
    )
    tunnel = NoiseTunnel(Saliency(model))
    captum_ig = CaptumIG(model)

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def lower_bound_x50() -> None:
        for start in range(0, SAMPLES, chunk):
            input_grad(model, noisy[start : start + chunk], target)

    def tunnel_run(batch: int | None) -> Callable[[], object]:
        return lambda: captum_smoothgrad(tunnel, x, sigma, target, batch)

    def captum_ig_run(batch: int | None) -> Callable[[], object]:
        return lambda: captum_ig.attribute(
            x, target=target, n_steps=SAMPLES, method="gausslegendre", internal_batch_size=batch
        )

    return {
        "forward": forward,
        "fwd+input-grad": lambda: input_grad(model, x, target),
        "salience Gradient": lambda: gradient(x, target),
        "salience.explain(gradient)": lambda: salience.explain(
            model, x, method="gradient", target=target
        ),
        f"lower bound x50 (chunks of {chunk})": lower_bound_x50,
        "salience SmoothGrad-50": lambda: smoothgrad(x, target),
        "Captum NoiseTunnel-50 (batch all)": tunnel_run(None),
        f"Captum NoiseTunnel-50 (batch {CAPTUM_BATCH})": tunnel_run(CAPTUM_BATCH),
        "salience IG-50": lambda: integrated(x, target),
        "Captum IG-50 (batch all)": captum_ig_run(None),
        f"Captum IG-50 (batch {CAPTUM_BATCH})": captum_ig_run(CAPTUM_BATCH),
        f"salience Gradient {CL}": lambda: gradient_cl(x, target),
        f"salience SmoothGrad-50 {CL}": lambda: smoothgrad_cl(x, target),
        f"salience IG-50 {CL}": lambda: integrated_cl(x, target),
    }


# -- equality checks -------------------------------------------------------------------------------


def relative_difference(a: Tensor, b: Tensor) -> float:
    """``max |a − b| / max |b|``."""
    return float((a - b).abs().max() / b.abs().max())


def captum_smoothgrad(
    tunnel: NoiseTunnel, x: Tensor, sigma: float, target: int, batch: int | None
) -> Tensor:
    """Captum's SmoothGrad of the signed gradient, ``SAMPLES`` samples, ``batch`` per pass."""
    return tunnel.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=SAMPLES,
        nt_samples_batch_size=batch,
        stdevs=sigma,
        target=target,
        abs=False,
    )


@contextlib.contextmanager
def captum_noise(noise: Tensor, sigma: float) -> Iterator[list[int]]:
    """Make Captum's NoiseTunnel add the rows of ``noise`` (in order) instead of drawing its own.

    Captum 0.9 draws ``torch.normal(0, stdev)`` per partition of ``nt_samples_batch_size`` rows
    in ``NoiseTunnel._add_noise_to_input(input, stdev, n)`` and returns
    ``input.repeat_interleave(n, 0) + noise``; the replacement does the same with the next ``n``
    given rows. Yields the list of rows consumed per call.
    """
    used: list[int] = []

    def add_noise(inp: Tensor, stdev: float, n: int) -> Tensor:
        if inp.shape[0] != 1 or stdev != sigma:
            raise AssertionError(f"unexpected call: batch {inp.shape[0]}, stdev {stdev}")
        start = sum(used)
        used.append(n)
        return inp.repeat_interleave(n, dim=0) + noise[start : start + n]

    with mock.patch.object(NoiseTunnel, "_add_noise_to_input", staticmethod(add_noise)):
        yield used


def equality_checks(model: nn.Module, x: Tensor, target: int, chunk: int) -> list[str]:
    """Compare salience's IG and SmoothGrad maps with Captum's on the same points."""
    lines = []
    # the same operations as Captum runs: no folding, NCHW memory
    unfolded = TorchAdapter(model, fold_batchnorm=False, channels_last=False)

    # Integrated Gradients: zero baseline, the same 50 Gauss–Legendre nodes.
    reference = CaptumIG(model).attribute(x, target=target, n_steps=SAMPLES, method="gausslegendre")
    for label, subject in (("default (BN folded)", model), ("same ops as Captum", unfolded)):
        ours = salience.IntegratedGradients(subject, steps=SAMPLES, chunk_size=chunk)(x, target)
        diff = relative_difference(ours.attributions[:, 0], reference)
        lines.append(f"IG-50 salience {label:<21} vs Captum IG: max|Δ|/max|map| = {diff:.2e}")

    # SmoothGrad: Captum fed exactly salience's noise (σ absolute = 0.15 × (max − min)).
    sigma = float(noise_scale(x, NOISE)[0])
    noisy = noisy_copies(x)
    # salience: noisy = x + σ·draws with draws = randn((N, n, *S), Generator().manual_seed(seed))
    draws = torch.randn((1, SAMPLES, *x.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    noise = (noise_scale(x, NOISE).reshape(-1, 1, 1, 1, 1) * draws)[0]
    tunnel_maps = {}
    for batch in (None, CAPTUM_BATCH):
        with captum_noise(noise, sigma) as used:
            tunnel_maps[batch] = captum_smoothgrad(
                NoiseTunnel(Saliency(model)), x, sigma, target, batch
            )
        if sum(used) != SAMPLES:
            raise AssertionError(f"Captum drew {sum(used)} noisy rows, expected {SAMPLES}")
    same_points = torch.equal(x.repeat_interleave(SAMPLES, 0) + noise, noisy)
    lines.append(
        f"SmoothGrad noise: Captum's noisy inputs == salience's noisy_inputs(x) exactly: "
        f"{same_points} (σ = {sigma:.4f} absolute = {NOISE} × (max − min))"
    )
    reference = tunnel_maps[None]
    for label, subject in (("default (BN folded)", model), ("same ops as Captum", unfolded)):
        ours = salience.SmoothGrad(
            subject, n_samples=SAMPLES, noise=NOISE, seed=SEED, chunk_size=chunk
        )(x, target)
        diff = relative_difference(ours.attributions[:, 0], reference)
        lines.append(f"SG-50 salience {label:<21} vs Captum NT: max|Δ|/max|map| = {diff:.2e}")
    diff = relative_difference(tunnel_maps[CAPTUM_BATCH], reference)
    lines.append(f"SG-50 Captum NT batch {CAPTUM_BATCH} vs batch all (same noise): {diff:.2e}")
    return lines


# -- report ----------------------------------------------------------------------------------------


def table(times: dict[str, list[float]]) -> list[str]:
    """Medians, minima and spreads, one line per candidate."""
    width = max(len(name) for name in times)
    lines = [f"{'candidate':<{width}}  {'median s':>9}  {'min s':>8}  {'spread':>6}"]
    for name, values in times.items():
        lines.append(
            f"{name:<{width}}  {common.median(values):9.3f}  {min(values):8.3f}  "
            f"{common.spread(values):6.0%}"
        )
    return lines


def ratios(times: dict[str, list[float]], chunk: int) -> list[str]:
    """The project's ratios: of medians, and the median of same-round ratios in brackets."""
    med = {name: common.median(values) for name, values in times.items()}

    def best(prefix: str) -> str:
        return min((n for n in med if n.startswith(prefix)), key=med.__getitem__)

    def line(label: str, num: str, den: str, goal: str) -> str:
        value = med[num] / med[den]
        paired = common.paired_ratio(times, num, den)
        return f"{label:<64} {value:6.2f}  (paired {paired:5.2f})  {goal}"

    tunnel, ig = best("Captum NoiseTunnel"), best("Captum IG")
    floor = f"lower bound x50 (chunks of {chunk})"
    return [
        line(
            "salience Gradient / (forward + input-gradient)",
            "salience Gradient",
            "fwd+input-grad",
            "target <= 1.1",
        ),
        line(
            "salience.explain(gradient) / (forward + input-gradient)",
            "salience.explain(gradient)",
            "fwd+input-grad",
            "(one-shot call)",
        ),
        line("(forward + input-gradient) / forward", "fwd+input-grad", "forward", ""),
        line("salience SmoothGrad-50 / lower bound x50", "salience SmoothGrad-50", floor, ""),
        line("salience IG-50 / lower bound x50", "salience IG-50", floor, ""),
        line(
            f"Captum best NoiseTunnel [{setting(tunnel)}] / salience SG-50",
            tunnel,
            "salience SmoothGrad-50",
            "target >= 1.5",
        ),
        line(
            f"Captum best IG [{setting(ig)}] / salience IG-50",
            ig,
            "salience IG-50",
            "target >= 1.5",
        ),
        line(
            f"salience Gradient {CL} / (forward + input-gradient)",
            f"salience Gradient {CL}",
            "fwd+input-grad",
            "",
        ),
        line(
            f"Captum best NoiseTunnel / salience SG-50 {CL}",
            tunnel,
            f"salience SmoothGrad-50 {CL}",
            "",
        ),
        line(f"Captum best IG / salience IG-50 {CL}", ig, f"salience IG-50 {CL}", ""),
    ]


def setting(name: str) -> str:
    """The part of a candidate's name in parentheses."""
    return name[name.index("(") + 1 : name.rindex(")")]


# -- THP comparison ------------------------------------------------------------------------------


def thp_compare(args: argparse.Namespace) -> None:
    """Alternate child processes with THP_MEM_ALLOC_ENABLE=1 and 0; compare their medians."""
    script = Path(__file__).resolve()
    pairs = max(2, args.repeats)
    results: dict[str, list[dict[str, list[float]]]] = {"1": [], "0": []}
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"salience-thp-{os.getpid()}.json"
    start = common.cpu_snapshot()
    for i in range(pairs):
        for flag in ("1", "0") if i % 2 == 0 else ("0", "1"):
            command = [
                sys.executable,
                str(script),
                "--repeats",
                "3",
                "--skip-checks",
                "--chunk-size",
                str(args.chunk_size),
                "--json",
                str(out),
                "--only",
                *THP_SUBSET,
            ]
            if flag == "0":
                command.append("--no-thp")
            if args.threads:
                command += ["--threads", str(args.threads)]
            print(f"  child {flag=} ({i + 1}/{pairs})", file=sys.stderr, flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            results[flag].append(json.loads(out.read_text()))
    out.unlink(missing_ok=True)
    print(f"THP comparison: {pairs} child processes per setting, alternating, 3 rounds each;")
    print("median over all rounds of all children, and the median of per-child ratios")
    print(f"{'candidate':<24} {'THP=1 s':>8} {'THP=0 s':>8} {'0/1':>6} {'per-child 0/1':>14}")
    for name in THP_SUBSET:
        on = [t for run in results["1"] for t in run["times"][name]]
        off = [t for run in results["0"] for t in run["times"][name]]
        per_child = statistics.median(
            common.median(b["times"][name]) / common.median(a["times"][name])
            for a, b in zip(results["1"], results["0"], strict=True)
        )
        print(
            f"{name:<24} {common.median(on):8.3f} {common.median(off):8.3f} "
            f"{common.median(off) / common.median(on):6.3f} {per_child:14.3f}"
        )
    print(common.others_busy(start))
    print("huge pages at exit: THP=1: " + "; ".join(r["thp"] for r in results["1"][:1]))
    print("                    THP=0: " + "; ".join(r["thp"] for r in results["0"][:1]))


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the checks and the timings; print the report."""
    args = parse_args(argv)
    if args.thp_compare:
        thp_compare(args)
        return
    model, x, target = common.setup(args.threads)
    if args.json is None:
        print(common.header("salience methods benchmark: EfficientNet-Lite0", target))
        print(f"chunk size {args.chunk_size}, {args.repeats} interleaved rounds after 1 warm-up\n")
        if not args.skip_checks:
            print("map equality (same points, same target):")
            for line in equality_checks(model, x, target, args.chunk_size):
                print("  " + line)
            print()
    runs = candidates(model, x, target, args.chunk_size)
    if args.only:
        runs = {name: fn for name, fn in runs.items() if name in args.only}
    start = common.cpu_snapshot()
    times = common.interleaved(runs, args.repeats)
    if args.json is not None:
        Path(args.json).write_text(json.dumps({"times": times, "thp": common.anon_huge_pages()}))
        return
    print("\n".join(table(times)))
    print()
    print("\n".join(ratios(times, args.chunk_size)))
    print(common.footer(start))


if __name__ == "__main__":
    main()
