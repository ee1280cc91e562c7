"""Integrated Gradients' completeness error against the number of path steps, on the bundled model.

On ReLU-family networks the integrand is piecewise constant along the path, so the error neither
falls fast nor monotonically with the step count; this prints the table behind IG's ``tolerance``.

    python bench/ig_convergence.py [--image chelsea] [--baseline zeros]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import salience
from salience.zoo import SAMPLE_IMAGES, load_model, model_spec


def main() -> None:
    """Print the error table for each quadrature rule, then one refinement run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="chelsea", choices=sorted(SAMPLE_IMAGES))
    parser.add_argument("--baseline", default="zeros")
    parser.add_argument("--steps", default="16,32,64,128,256")
    parser.add_argument("--rules", default="riemann_middle,gausslegendre,riemann_trapezoid")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args()

    spec = model_spec()
    adapter = salience.TorchAdapter(load_model())
    x = spec.preset.prepare(SAMPLE_IMAGES[args.image]()).tensor
    steps = [int(s) for s in args.steps.split(",")]
    rules = args.rules.split(",")
    print(
        f"relative completeness error |sum(attr) - (f(x) - f(x'))| / |f(x) - f(x')|, "
        f"{args.image}, {args.baseline} baseline, predicted class logit"
    )
    print(f"{'steps':>6} " + " ".join(f"{rule:>18}" for rule in rules))
    for n in steps:
        errors = []
        for rule in rules:
            explainer = salience.IntegratedGradients(
                adapter, steps=n, rule=rule, baseline=args.baseline
            )
            errors.append(explainer(x).info["max_completeness_error"])
        print(f"{n:>6} " + " ".join(f"{e:>17.2%} " for e in errors))
    for rule in ("riemann_middle", "riemann_trapezoid"):
        refined = salience.IntegratedGradients(
            adapter,
            steps=32 if rule == "riemann_middle" else 33,
            rule=rule,
            baseline=args.baseline,
            tolerance=args.tolerance,
            max_steps=1024,
        )(x)
        info = refined.info
        history = ", ".join(f"{s}: {e:.2%}" for s, e in info["error_history"])
        state = "converged" if info["converged"] else "stopped at the step cap"
        print(
            f"tolerance {args.tolerance:.0%} with {rule}: {history} -> {state} at {info['steps']}"
        )


if __name__ == "__main__":
    main()
