"""Deletion and insertion (RISE): known rankings, closed-form curves, the blur, the command."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import Tensor, nn

import salience
from conftest import SmallCNN, assert_same_state, model_state
from salience.adapters.onnx import OnnxAdapter
from salience.cli import main
from salience.evaluation.faithfulness import (
    CausalMetric,
    area_under_curve,
    deletion,
    evaluate_methods,
    insertion,
    random_saliency,
    rise_blur,
    rise_blur_kernel,
)
from salience.targets import TargetError

CAT_CLASSES = range(281, 286)


class PixelSum(nn.Module):
    """Logits ``(s − b, b − s)`` with ``s = Σ w[h, w] · x[c, h, w]``.

    The probability of class 0 is ``sigmoid(2 (s − b))``, increasing in ``s``; changing a pixel
    changes ``s`` by ``w · Σ_c Δx``, so the best order of any deletion or insertion is known.
    """

    def __init__(self, weights: Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weights", weights)
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        s = (x * self.weights).sum(dim=(1, 2, 3)) - self.bias
        return torch.stack([s, -s], dim=1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pixel_sum() -> PixelSum:
    return PixelSum(torch.rand(10, 10, generator=generator(0)) * 0.04, bias=1.5)


@pytest.fixture
def photos() -> Tensor:
    """Positive images, so that deleting a pixel lowers ``s``."""
    return torch.rand(2, 3, 10, 10, generator=generator(1))


def probability(model: nn.Module, x: Tensor, index: int | Tensor) -> Tensor:
    with torch.no_grad():
        p = torch.softmax(model.eval()(x), dim=1)
    return p[torch.arange(len(x)), index] if isinstance(index, Tensor) else p[:, index]


@pytest.mark.parametrize("step", [1, 7])
def test_the_models_own_ranking_beats_a_random_map_and_its_inverse_loses(
    pixel_sum: PixelSum, photos: Tensor, step: int
) -> None:
    gains = {  # what each pixel adds to s when it changes: the model's own ranking
        "deletion": pixel_sum.weights * photos.sum(dim=1),
        "insertion": pixel_sum.weights * (photos - rise_blur(photos)).sum(dim=1),
    }
    noise = random_saliency(photos, seed=0)
    for mode, gain in gains.items():
        metric = CausalMetric(pixel_sum, mode, pixels_per_step=step)
        best, chance, worst = metric(photos, gain), metric(photos, noise), metric(photos, -gain)
        assert (best.targets == 0).all()  # the predicted class
        # Every order's curve lies between the greedy best and the greedy worst, point by point.
        if mode == "deletion":
            assert (best.scores <= chance.scores + 1e-12).all()
            assert (chance.scores <= worst.scores + 1e-12).all()
            assert (best.auc < chance.auc).all() and (chance.auc < worst.auc).all()
        else:
            assert (best.scores >= chance.scores - 1e-12).all()
            assert (chance.scores >= worst.scores - 1e-12).all()
            assert (best.auc > chance.auc).all() and (chance.auc > worst.auc).all()


@pytest.mark.parametrize("step", [6, 7])
def test_the_area_is_the_trapezoid_of_a_closed_form_curve(step: int) -> None:
    ones = torch.ones(1, 1, 6, 6)
    model = PixelSum(torch.ones(6, 6))  # logit s = the number of pixels still set to 1
    saliency = torch.arange(36.0).reshape(1, 6, 6)
    result = deletion(model, ones, saliency, pixels_per_step=step, score="logit")
    changed = [min(i * step, 36) for i in range(-(-36 // step) + 1)]
    assert result.fractions.tolist() == pytest.approx([c / 36 for c in changed])
    assert result.scores[0].tolist() == pytest.approx([36.0 - c for c in changed])
    x, y = [c / 36 for c in changed], [36.0 - c for c in changed]
    by_hand = sum((y[i] + y[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(len(x) - 1))
    assert float(result.auc[0]) == pytest.approx(by_hand, rel=1e-12)
    if 36 % step == 0:  # equal steps: RISE's formula (Σ s − s₀/2 − s_last/2) / (P − 1)
        rise = (sum(y) - y[0] / 2 - y[-1] / 2) / (len(y) - 1)
        assert float(result.auc[0]) == pytest.approx(rise, rel=1e-12)
    assert float(area_under_curve(torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0]))) == 2.0


def test_the_blur_is_rises_kernel_with_zero_padding() -> None:
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    kernel = ndimage.gaussian_filter(impulse, 5)  # RISE's gkern(11, 5)
    np.testing.assert_allclose(rise_blur_kernel().numpy(), kernel, rtol=1e-12, atol=1e-15)
    x = torch.randn(2, 3, 20, 17, generator=generator(2), dtype=torch.float64)
    reference = np.stack(
        [
            [ndimage.correlate(channel, kernel, mode="constant", cval=0.0) for channel in image]
            for image in x.numpy()
        ]
    )
    np.testing.assert_allclose(rise_blur(x).numpy(), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_the_curves_start_and_end_at_the_models_scores(
    small_cnn: SmallCNN, images: Tensor, score: str
) -> None:
    saliency = torch.rand(2, 3, 12, 12, generator=generator(3))
    with torch.no_grad():
        outputs = small_cnn.eval()(images)
    predicted = outputs.argmax(dim=1)

    def scored(x: Tensor) -> Tensor:
        with torch.no_grad():
            values = small_cnn(x)
        values = torch.softmax(values, dim=1) if score == "probability" else values
        return values[torch.arange(len(x)), predicted].double()

    removed = deletion(small_cnn, images, saliency, pixels_per_step=40, score=score)
    added = insertion(small_cnn, images, saliency, pixels_per_step=40, score=score)
    assert removed.scores.shape == (2, 5) and removed.fractions.tolist()[-2:] == [120 / 144, 1]
    torch.testing.assert_close(removed.scores[:, 0], scored(images), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        removed.scores[:, -1], scored(torch.zeros_like(images)), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(added.scores[:, 0], scored(rise_blur(images)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(added.scores[:, -1], scored(images), rtol=1e-5, atol=1e-6)
    assert removed.targets.tolist() == predicted.tolist() == added.targets.tolist()


def test_chunk_size_does_not_change_the_curves(small_cnn: SmallCNN, images: Tensor) -> None:
    saliency = torch.rand(2, 12, 12, generator=generator(4))
    curves = [
        insertion(small_cnn, images, saliency, pixels_per_step=10, chunk_size=size).scores
        for size in (1, 4, 64)
    ]
    for other in curves[1:]:
        torch.testing.assert_close(other, curves[0], rtol=1e-6, atol=1e-7)


def test_the_models_state_is_read_once_per_curve_run_not_per_chunk(
    small_cnn: SmallCNN, images: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of 2 × 15 step images in chunks of 2 reads the model's state once; a change of
    the weights between two runs is still seen by the next one."""
    from salience.adapters import inference_copy

    reads = []
    describe = inference_copy.describe
    monkeypatch.setattr(
        inference_copy, "describe", lambda *a, **k: reads.append(1) or describe(*a, **k)
    )
    adapter = salience.TorchAdapter(small_cnn)
    metric = CausalMetric(adapter, "deletion", pixels_per_step=10, chunk_size=2)
    saliency = torch.rand(2, 12, 12, generator=generator(5))
    before = metric(images, saliency, 1)
    assert len(reads) == 1
    with torch.no_grad():
        for parameter in small_cnn.parameters():
            parameter.mul_(0.5)
    after = metric(images, saliency, 1)
    assert len(reads) == 2
    assert not torch.equal(before.scores, after.scores)
    reference = CausalMetric(small_cnn, "deletion", pixels_per_step=10, chunk_size=64)
    torch.testing.assert_close(after.scores, reference(images, saliency, 1).scores)


def test_explanations_are_followed_on_their_class_and_coarse_maps_upsampled(
    small_cnn: SmallCNN, images: Tensor
) -> None:
    explanation = salience.explain(small_cnn, images, method="gradcam", target=3)
    assert explanation.attributions.shape == (2, 1, 12, 12)
    coarse = explanation.attributions[:, 0, ::3, ::3].contiguous()  # a 4×4 grid
    result = deletion(small_cnn, images, coarse, target=3, pixels_per_step=12)
    upsampled = salience.postprocess.upsample(coarse, (12, 12))
    reference = deletion(small_cnn, images, upsampled, target=3, pixels_per_step=12)
    assert torch.equal(result.scores, reference.scores)
    followed = deletion(small_cnn, images, explanation, pixels_per_step=12)
    assert followed.targets.tolist() == [3, 3]
    torch.testing.assert_close(
        followed.scores[:, 0], probability(small_cnn, images, 3).double(), rtol=1e-5, atol=1e-6
    )


def test_equal_seeds_give_identical_results(small_cnn: SmallCNN, images: Tensor) -> None:
    assert torch.equal(random_saliency(images, seed=5), random_saliency(images, seed=5))
    assert not torch.equal(random_saliency(images, seed=5), random_saliency(images, seed=6))
    state = torch.random.get_rng_state()
    reports = [
        evaluate_methods(
            small_cnn, images, ["rise"], n_masks=16, grid=3, seed=seed, pixels_per_step=24
        ).to_dict()
        for seed in (7, 7, 8)
    ]
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched
    for report in reports:
        for entry in report["methods"]:
            entry.pop("seconds"), entry["per_image"].pop("seconds")
    assert reports[0] == reports[1]
    assert reports[0]["methods"][1] != reports[2]["methods"][1]  # the random baseline


def test_evaluating_methods_agrees_with_each_map_alone(small_cnn: SmallCNN, images: Tensor) -> None:
    before = model_state(small_cnn)
    report = evaluate_methods(
        small_cnn, images, ["gradient", "gradcam"], labels=["a", "b"], pixels_per_step=24
    )
    assert_same_state(before, model_state(small_cnn))
    assert report.names == ["gradient", "gradcam", "random"]
    for name in ("gradient", "gradcam"):
        alone = salience.explain(small_cnn, images, method=name, score="probability")
        entry = report[name]
        assert len(entry.seconds) == 2 and all(s > 0 for s in entry.seconds)
        for mode in ("deletion", "insertion"):
            reference = CausalMetric(small_cnn, mode, pixels_per_step=24)(images, alone)
            evaluated = getattr(entry, mode).auc
            torch.testing.assert_close(evaluated, reference.auc, rtol=1e-5, atol=1e-6)
    rows = report.rows()
    first = [(row["method"], row["image"]) for row in rows[:3]]
    assert first == [("gradient", "a"), ("gradient", "b"), ("gradient", "mean")]
    mean = float(rows[2]["deletion_auc"])
    assert mean == pytest.approx(float(report["gradient"].deletion.auc.mean()), abs=1e-6)
    data = json.loads(json.dumps(report.to_dict()))
    per_image = data["methods"][0]["per_image"]["insertion_auc"]
    assert per_image == report["gradient"].insertion.auc.tolist()
    table = report.format_table().splitlines()
    assert "deletion AUC ↓" in table[0] and "insertion AUC ↑" in table[0]
    assert [line.split()[0] for line in table[1:]] == report.names


def test_the_users_model_is_unchanged_also_when_a_call_raises(images: Tensor) -> None:
    model = SmallCNN().train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = model_state(model)
    deletion(model, images, torch.rand(2, 12, 12), pixels_per_step=48)
    with pytest.raises(ValueError):
        insertion(model, images, torch.rand(3, 12, 12))
    with pytest.raises(RuntimeError):
        deletion(model, torch.rand(2, 4, 12, 12), torch.rand(2, 12, 12))  # 4 channels: conv fails
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: deletion(m, x, torch.rand(3, 12, 12)), "3 saliency maps given for 2 images"),
        (lambda m, x: deletion(m, x, torch.rand(2, 2, 12, 12)), "C = 1 or 3"),
        (lambda m, x: deletion(m, x, torch.rand(2, 24, 24)), "do not fit images of 12×12"),
        (lambda m, x: deletion(m, x, torch.rand(2, 4, 2)), "do not fit images of 12×12"),
        (lambda m, x: deletion(m, x, torch.full((2, 12, 12), float("nan"))), "NaN"),
        (lambda m, x: deletion(m, x[0, 0], torch.rand(2, 12, 12)), "images (N, C, H, W)"),
        (lambda m, x: insertion(m, x, torch.rand(2, 12, 12), pixels_per_step=0), "int >= 1"),
        (lambda m, x: CausalMetric(m, "delete"), "unknown mode 'delete'"),
        (lambda m, x: CausalMetric(m, score="softmax"), "unknown score 'softmax'"),
        (lambda m, x: deletion(m, x, torch.rand(2, 12, 12), target="top-2"), "one class per input"),
        (lambda m, x: evaluate_methods(m, x, ["gradient", "gradient"]), "asked for once"),
        (lambda m, x: evaluate_methods(m, x, ["gradiant"]), "Did you mean gradient"),
    ],
)
def test_bad_input_gives_a_clear_error(
    small_cnn: SmallCNN, images: Tensor, call: object, message: str
) -> None:
    with pytest.raises((ValueError, TargetError, LookupError)) as info:
        call(small_cnn, images)
    assert message in str(info.value)


def test_black_boxes_give_the_torch_models_curves(
    small_cnn: SmallCNN, images: Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            small_cnn.eval(),
            (images,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
            dynamo=False,
        )
    saliency = torch.rand(2, 12, 12, generator=generator(5))
    for play in (deletion, insertion):
        black_box = play(OnnxAdapter(path), images, saliency, pixels_per_step=30)
        white_box = play(small_cnn, images, saliency, pixels_per_step=30)
        torch.testing.assert_close(black_box.scores, white_box.scores, rtol=1e-4, atol=1e-5)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_command_prints_the_table_and_writes_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys,
        "evaluate",
        "chelsea",
        "--method",
        "gradient,rise",
        "--masks",
        "8",
        "--step",
        str(224 * 56),
        "-o",
        str(tmp_path),
        "--quiet",
    )
    assert status == 0, err
    lines = out.splitlines()
    assert "deletion AUC ↓" in lines[1] and "insertion AUC ↑" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["gradient", "rise", "random"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "faithfulness.csv",
        "faithfulness.json",
        "faithfulness.png",
    ]
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    assert data["model"] == "efficientnet_lite0" and data["images"] == ["chelsea"]
    gradient = data["methods"][0]
    assert gradient["deletion"]["targets"][0] in CAT_CLASSES
    assert gradient["deletion"]["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert gradient["deletion"]["score"] == "probability"
    printed = float(lines[2].split()[1])
    assert printed == pytest.approx(gradient["deletion_auc"], abs=5e-5)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "faithfulness.csv").read_text())))
    assert float(rows[0]["insertion_auc"]) == pytest.approx(gradient["insertion_auc"], abs=1e-6)
    status, _, err = run(capsys, "evaluate", "--step", "0", "-o", str(tmp_path / "bad"))
    assert status == 2 and "--step: must be an integer >= 1" in err and err.count("\n") == 1
    status, _, err = run(capsys, "evaluate", "--method", "gradcamm", "-o", str(tmp_path / "bad"))
    assert status == 2 and "unknown method 'gradcamm'" in err
    assert not (tmp_path / "bad").exists()
