"""Models that return more than one tensor, and a detector explained through its boxes.

Known answers: the gradient of a linear head's logit is its weight row, whichever structure
carries the logits; the detection target equals pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``
(written out below from its definition, on the unpacked dict), and Grad-CAM of it peaks at the
object.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import salience
from salience.adapters.structured import OutputKeyError, pack_detections, select_output
from salience.adapters.torch import TorchAdapter
from salience.cli import main
from salience.targets import TargetError, box_iou, detection_target

HERE = Path(__file__).parent


@dataclass
class Result:
    features: Tensor
    logits: Tensor


class ModelOutput(OrderedDict):
    """Hugging Face's ``ModelOutput`` in brief: a dict whose entries are also attributes."""

    def __getattr__(self, name: str) -> Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class WithLogits:
    """An object (not a dict) that carries ``.logits``."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits


class Structured(nn.Module):
    """A linear head whose logits come back inside ``kind`` of structure."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 5).double()
        self.kind = kind

    def forward(self, x: Tensor) -> object:
        logits = self.fc(x.flatten(1))
        hidden = x.flatten(1).sum(1)
        return {
            "tuple": lambda: (logits, hidden),
            "dict": lambda: {"logits": logits, "hidden": hidden},
            "dataclass": lambda: Result(hidden, logits),
            "model_output": lambda: ModelOutput(loss=None, logits=logits, hidden=hidden),
            "object": lambda: WithLogits(logits),
            "two": lambda: {"first": logits, "second": hidden},
        }[self.kind]()


def structured_net() -> nn.Module:
    """A factory for the command line: logits and features in a dict without ``logits``."""
    return Structured("two").float()


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(2)).double()


@pytest.mark.parametrize(
    ("kind", "output"),
    [
        ("tuple", 0),
        ("tuple", "0"),
        ("dict", None),
        ("dataclass", None),
        ("model_output", None),
        ("model_output", "logits"),
        ("object", None),
        ("two", "first"),
    ],
)
def test_the_named_or_only_logits_are_explained(kind: str, output: object, x: Tensor) -> None:
    model = Structured(kind)
    explanation = salience.explain(model, x, method="gradient", target=3, output=output)
    row = model.fc.weight.detach()[3].reshape(3, 2, 2)
    torch.testing.assert_close(explanation.attributions[:, 0].double(), row.expand(2, -1, -1, -1))
    logits = model.fc(x.flatten(1)).detach()
    torch.testing.assert_close(explanation.scores[:, 0].double(), logits[:, 3])
    assert not any(p.grad is not None for p in model.parameters())


def test_another_output_is_explained_by_its_key(x: Tensor) -> None:
    explanation = salience.explain(Structured("dict"), x, method="gradient", output="hidden")
    torch.testing.assert_close(explanation.attributions[:, 0].double(), torch.ones_like(x))


@pytest.mark.parametrize(
    ("kind", "output", "listing"),
    [
        ("tuple", None, "returns a tuple of 0 (2, 5), 1 (2,)"),
        ("two", None, "returns a dict of 'first' (2, 5), 'second' (2,)"),
        ("dict", "probs", "returns a dict of 'logits' (2, 5), 'hidden' (2,)"),
        ("tuple", 2, "returns a tuple of 0 (2, 5), 1 (2,)"),
    ],
)
def test_ambiguous_or_wrong_keys_are_refused_in_one_line_listing_the_outputs(
    kind: str, output: object, listing: str, x: Tensor
) -> None:
    with pytest.raises(OutputKeyError) as error:
        salience.explain(Structured(kind), x, method="gradient", output=output)
    message = str(error.value)
    assert listing in message and "--output-key" in message and "\n" not in message


def test_a_key_for_a_model_with_one_tensor_is_refused() -> None:
    with pytest.raises(OutputKeyError, match=r"returns one tensor .* leave the output key unset"):
        select_output(torch.zeros(2, 3), "logits")
    with pytest.raises(OutputKeyError, match="returned a str"):
        select_output("text")


def test_the_command_line_takes_an_output_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(image)
    common = ["explain", str(image), "--model", "test_structured_outputs:structured_net"]
    common += ["--size", "2", "--method", "gradient", "-o", str(tmp_path / "o"), "--quiet"]
    assert main(common) == 2
    assert "returns a dict of 'first'" in capsys.readouterr().err
    assert main([*common, "--output-key", "first"]) == 0
    assert "top-5 predictions" in capsys.readouterr().out


# -- detection ---------------------------------------------------------------------------------
CELL = 4  # pixels per grid cell of the detector


class TinyDetector(nn.Module):
    """A one-stage detector head on a 4×4 grid of 4×4-pixel cells, torchvision-style output.

    ``features`` (conv + ReLU) responds to brightness; per cell, the objectness is σ of its mean
    feature (``scores``), the label is 1 where the cell is bright and 0 where it is dark, and the
    box is the cell itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
        self.objectness = nn.Conv2d(2, 1, 1)
        self.classes = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0] = 1.0 / 27
            self.features[0].weight[1] = -1.0 / 27
            self.features[0].bias.zero_()
            self.objectness.weight.copy_(torch.tensor([4.0, 0.0]).reshape(1, 2, 1, 1))
            self.objectness.bias.fill_(-2.0)
            self.classes.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0]]).reshape(2, 2, 1, 1))
            self.classes.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        cells = nn.functional.avg_pool2d(self.features(x), CELL)
        n, _, rows, cols = cells.shape
        scores = torch.sigmoid(self.objectness(cells)).flatten(1)
        labels = self.classes(cells).argmax(1).flatten(1)
        i, j = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        anchors = torch.stack([j, i, j + 1, i + 1], -1).reshape(-1, 4).to(x) * CELL
        return {"boxes": anchors.expand(n, -1, -1), "labels": labels, "scores": scores}


def reference_box_score(
    outputs: dict[str, Tensor], boxes: Tensor, labels: list[int], threshold: float
) -> Tensor:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget.__call__`` on one image's outputs."""
    output = torch.zeros(())
    if len(outputs["boxes"]) == 0:
        return output
    for box, label in zip(boxes, labels, strict=True):
        ious = box_iou(box[None, :], outputs["boxes"])
        index = ious.argmax()
        if ious[0, index] > threshold and outputs["labels"][index] == label:
            output = output + ious[0, index] + outputs["scores"][index]
    return output


@pytest.fixture(scope="module")
def scene() -> Tensor:
    """A dark 16×16 image with a bright 4×4 object in the cell at row 1, column 2."""
    image = torch.full((1, 3, 16, 16), 0.05)
    image[:, :, 4:8, 8:12] = 1.0
    return image


OBJECT = torch.tensor([[8.0, 4.0, 12.0, 8.0]])


def test_the_detection_target_is_pytorch_grad_cams_box_score(scene: Tensor) -> None:
    detector = TinyDetector()
    raw = detector(scene)
    single = {key: value[0] for key, value in raw.items()}
    references = torch.tensor([[8.0, 4.0, 12.0, 8.0], [8.5, 4.0, 12.0, 8.0], [0.0, 0.0, 4.0, 4.0]])
    labels = [1, 0, 1]  # the object; the object with the wrong label; a dark cell
    target = detection_target(references, labels, iou_threshold=0.5)
    packed = select_output(raw)
    assert packed.shape == (1, 16, 6)
    score = target.fn(packed)
    expected = reference_box_score(single, references, labels, 0.5)
    torch.testing.assert_close(score[0], expected)
    # Only the object counts: IoU 1 with its cell (row 1, column 2: detection 6), plus its score.
    torch.testing.assert_close(expected, 1.0 + raw["scores"][0, 6])


def test_grad_cam_of_a_detection_peaks_at_the_object(scene: Tensor) -> None:
    detector = TinyDetector()
    target = detection_target(OBJECT, [1])
    explanation = salience.explain(
        detector, scene, method="gradcam", target=target, layer="features"
    )
    cam = explanation.attributions[0, 0]
    assert cam.shape == (16, 16)
    row, col = divmod(int(cam.argmax()), 16)
    assert 4 <= row < 8 and 8 <= col < 12
    inside = cam[4:8, 8:12].mean()
    assert float(inside) > 4 * float(cam.mean())
    assert float(explanation.scores[0, 0]) == pytest.approx(
        1.0 + detector(scene)["scores"][0, 6].item()
    )


def test_a_list_of_per_image_detections_is_padded() -> None:
    first = {"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 2]), "scores": torch.ones(2)}
    second = {"boxes": torch.ones(1, 4), "labels": torch.tensor([3]), "scores": torch.ones(1) / 2}
    packed = pack_detections([first, second])
    assert packed.shape == (2, 2, 6)
    assert packed[1, 1].tolist() == [0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    assert packed[1, 0, 4:].tolist() == [3.0, 0.5]


def test_bad_detection_targets_are_refused() -> None:
    with pytest.raises(TargetError, match="2 reference boxes but 1 labels"):
        detection_target(torch.zeros(2, 4), [1])
    target = detection_target(OBJECT, [1])
    with pytest.raises(TargetError, match="needs a detector's boxes, labels and scores"):
        target.fn(torch.zeros(2, 10))
    with pytest.raises(OutputKeyError, match="needs tensors boxes, labels, scores"):
        pack_detections({"boxes": torch.zeros(1, 2, 4)})


def test_the_detector_is_left_as_it_was(scene: Tensor) -> None:
    detector = TinyDetector()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    salience.explain(
        TorchAdapter(detector), scene, method="gradient", target=detection_target(OBJECT, [1])
    )
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert not detector._forward_hooks and all(p.grad is None for p in detector.parameters())


def test_a_keras_model_with_two_outputs_is_explained_through_the_one_named() -> None:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2, 2, 3))
    flat = keras.layers.Flatten()(inputs)
    first = keras.layers.Dense(4, name="first")(flat)
    second = keras.layers.Dense(2, name="second")(flat)
    model = keras.Model(inputs, [first, second])
    x = torch.rand(1, 3, 2, 2)
    kernels = {
        name: torch.as_tensor(np.asarray(model.get_layer(name).kernel))
        for name in ("first", "second")
    }

    def weight_row(name: str, k: int) -> Tensor:
        # Keras flattens NHWC: the kernel's rows are (h, w, c); the map is (c, h, w).
        return kernels[name][:, k].reshape(2, 2, 3).permute(2, 0, 1)

    default = salience.explain(model, x, method="gradient", target=1)
    torch.testing.assert_close(default.attributions[0, 0], weight_row("first", 1))
    chosen = salience.explain(model, x, method="gradient", target=1, output=1)
    torch.testing.assert_close(chosen.attributions[0, 0], weight_row("second", 1))
    with pytest.raises(OutputKeyError, match=r"returns a list of 0 \(1, 4\), 1 \(1, 2\)"):
        salience.explain(model, x, method="gradient", output=2)
