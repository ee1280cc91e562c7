"""Shared helpers of the timing scripts: the embedded model, a real photo, interleaved timing.

Import this module only after ``THP_MEM_ALLOC_ENABLE`` has been decided (:func:`set_thp`), since
it imports torch and torch reads that variable when it starts allocating.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

try:
    from salience.zoo import efficientnet_lite as zoo
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from salience.zoo import efficientnet_lite as zoo

SIZE = 224


def thp_state() -> str:
    """What this process runs with: the env variable, the kernel mode, huge pages in use."""
    env = os.environ.get("THP_MEM_ALLOC_ENABLE", "<unset>")
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        mode = "unknown"
    return f"THP_MEM_ALLOC_ENABLE={env}; kernel THP mode: {mode}; {anon_huge_pages()}"


def anon_huge_pages() -> str:
    """Anonymous huge pages mapped by this process right now (from /proc/self/smaps_rollup)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return "AnonHugePages now: " + " ".join(line.split()[1:])
    except OSError:
        pass
    return "AnonHugePages: unknown"


def load_model() -> nn.Module:
    """The embedded EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    return zoo.efficientnet_lite0(pretrained=True).eval()


def chelsea() -> torch.Tensor:
    """``skimage.data.chelsea()`` resized to 224×224, in [0, 1], normalised: ``(1, 3, 224, 224)``.

    The normalisation is the one the embedded weights were trained with (the zoo module's
    ``PREPROCESS_MEAN``/``PREPROCESS_STD``); it does not matter for timing.
    """
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(zoo.PREPROCESS_MEAN).reshape(3, 1, 1)
    std = torch.tensor(zoo.PREPROCESS_STD).reshape(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0).contiguous()


def interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: dict[str, Callable[[], object]] | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Wall times of each candidate, ``repeats`` rounds, interleaved A B C … then … C B A.

    Every round runs every candidate once; odd rounds run them in reverse order so slow drifts
    of the machine's load hit all candidates alike. ``warmup`` (default: the candidates) runs
    once first, untimed. The garbage collector is off while timing.
    """
    for fn in (warmup or candidates).values():
        fn()
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    enabled = gc.isenabled()
    try:
        for r in range(repeats):
            gc.collect()
            gc.disable()
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                candidates[name]()
                times[name].append(time.perf_counter() - start)
            if enabled:
                gc.enable()
            if progress:
                print(f"  round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        if enabled:
            gc.enable()
    return times


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num / den`` timed in the same round (robust to load drift)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def spread(values: Sequence[float]) -> float:
    """Relative spread of the timings: (max − min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, busy CPU-s of the machine, CPU-s of this process and its waited-for children).

    For :func:`others_busy`; the busy time is 0 where /proc is missing.
    """
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / ticks
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy, mine
    except (OSError, ValueError):
        return time.monotonic(), 0.0, 0.0


def others_busy(start: tuple[float, float, float]) -> str:
    """How many cores other processes kept busy on average since ``start``."""
    end = cpu_snapshot()
    wall = end[0] - start[0]
    if wall <= 0 or end[1] == 0.0:
        return "CPU use of other processes: unknown"
    others = max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / wall
    verdict = "idle enough" if others < 0.25 else "BUSY: timings are unreliable, run again"
    return (
        f"other processes kept {others:.2f} of {os.cpu_count()} cores busy on average while "
        f"timing ({verdict})"
    )


def machine_line() -> str:
    """Threads, torch version, load average: what the reader needs to judge the numbers."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )


def setup(threads: int | None) -> tuple[nn.Module, torch.Tensor, int]:
    """Thread count, the bundled model, the cat photo and its predicted class."""
    if threads:
        torch.set_num_threads(threads)
    model = load_model()
    x = chelsea()
    with torch.no_grad():
        target = int(model(x).argmax())
    return model, x, target


def header(title: str, target: int) -> str:
    """The opening lines of every benchmark: title, input and class, machine, huge-page state."""
    return "\n".join(
        [
            title,
            f"input: skimage chelsea 1x3x{SIZE}x{SIZE}, "
            f"target class {target} ({class_name(target)})",
            machine_line(),
            thp_state() + " (THP_MEM_ALLOC_ENABLE is set before torch is imported)",
        ]
    )


def footer(start: tuple[float, float, float]) -> str:
    """The closing lines of every benchmark: machine, competing load, huge-page state."""
    return "\n".join(["", machine_line(), others_busy(start), thp_state()])


def class_name(index: int) -> str:
    """The ImageNet class name shipped with the zoo."""
    names = (Path(zoo.__file__).parent / "imagenet_classes.txt").read_text().splitlines()
    return names[index] if 0 <= index < len(names) else str(index)


def memory_mib() -> dict[str, float]:
    """Resident set size now (VmRSS) and its high-water mark (VmHWM), MiB, from /proc."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
