"""1-D signals (N, C, L): a model that reads one time window, found by the gradient, every CAM on
a Conv1d layer, occlusion and RISE; Captum's IntegratedGradients and Occlusion; .npy and CSV in,
the trace-and-band figure out, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from salience.arrays import ArrayFileError
from salience.methods.baselines import baseline_like
from salience.signals import Signal, load_signal, signal_figure, signal_map

LENGTH = 64
WINDOW = slice(20, 32)  # the time steps channel 0 of class 0 reads
OTHER = slice(44, 56)  # those channel 1 of class 1 reads


def time_mask(window: slice, length: int = LENGTH) -> Tensor:
    mask = torch.zeros(length)
    mask[window] = 1
    return mask


class WindowNet(nn.Module):
    """Class 0 is the sum of channel 0 over ``WINDOW``, class 1 of channel 1 over ``OTHER``.

    ``features`` (a Conv1d, the identity, the automatic CAM layer) passes the signal on; the
    window masks are applied after it, pooled by 2 first so that a CAM sees a coarser grid.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv1d(2, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)[:, :, None])
            self.features.bias.zero_()
        masks = torch.stack([time_mask(WINDOW), time_mask(OTHER)])
        self.register_buffer("masks", F.avg_pool1d(masks[:, None], 2)[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool1d(self.features(x), 2)  # (N, 2, L/2)
        return (pooled * self.masks).sum(dim=2) * 2


@pytest.fixture(scope="module")
def signal() -> Tensor:
    return torch.rand(1, 2, LENGTH, generator=torch.Generator().manual_seed(5)) + 0.5


def test_the_gradient_is_the_window(signal: Tensor) -> None:
    gradient = salience.explain(WindowNet(), signal, method="gradient", target=0).attributions
    expected = torch.zeros(2, LENGTH)
    expected[0, WINDOW] = 1  # d/dx of Σ_window x (the pooling's ½ times the 2)
    torch.testing.assert_close(gradient[0, 0], expected)


def test_every_cam_on_a_conv1d_layer_is_a_1d_map_of_the_window() -> None:
    x = torch.rand(1, 2, LENGTH, generator=torch.Generator().manual_seed(1)) + 0.5
    # the automatic layer is the Conv1d; its (N, C, L) output is a 1-D map, never tokens
    for method in ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]:
        explanation = salience.explain(WindowNet(), x, method=method, target=0)
        assert explanation.info["layer"] == "features"
        maps = explanation.attributions[0, 0]
        assert maps.shape == (LENGTH,)
        # the gradient reaches channel 0 inside the window only: every CAM is positive there
        # (the signal is); the position-wise ones (Layer-CAM, HiResCAM) are zero elsewhere,
        # the others weigh all of channel 0 by one number
        assert maps[WINDOW].min() > 0
        if method in ("layercam", "hirescam"):
            outside = torch.ones(LENGTH, dtype=torch.bool)
            outside[WINDOW] = False
            assert maps[outside].abs().max() == 0
    scorecam = salience.explain(WindowNet(), x, method="scorecam", target=0, softmax=False)
    assert scorecam.attributions.shape == (1, 1, LENGTH)


def test_the_automatic_layer_is_the_last_conv1d() -> None:
    model = nn.Sequential(
        nn.Conv1d(3, 4, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    )
    x = torch.rand(2, 3, 40)
    explanation = salience.explain(model, x, method="gradcam")
    assert explanation.info["layer"] == "3"  # the last Conv1d's ReLU: the last 1-D feature map
    assert explanation.attributions.shape == (2, 1, 20)  # 20 time steps, not a 4×4 token grid
    assert explanation.info["feature_shape"] == [6, 20]
    eigen = salience.explain(model, x, method="eigencam", layer="2").attributions
    assert eigen.shape == (2, 1, 20)
    ablation = salience.explain(model, x, method="ablationcam").attributions
    assert ablation.shape == (2, 1, 20)


def test_occlusion_along_time_finds_the_window_exactly(signal: Tensor) -> None:
    maps = salience.explain(
        WindowNet(), signal, method="occlusion", window=4, stride=4, target=0
    ).attributions[0, 0]
    expected = torch.zeros(LENGTH)
    for start in range(0, LENGTH, 4):  # a window's drop: the sum of channel 0 it covers
        part = slice(start, start + 4)
        expected[part] = (signal[0, 0, part] * time_mask(WINDOW)[part]).sum()
    # float32 drops are differences of sums of ~12 values of about 1: ~1e-6 absolute
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


def test_rise_masks_along_time_find_the_window(signal: Tensor) -> None:
    maps = salience.explain(
        WindowNet(), signal, method="rise", n_masks=400, grid=8, seed=0, softmax=False, target=0
    ).attributions[0, 0]
    # the map is a constant plus the masks' covariance with the score: higher on the window
    # than anywhere more than one cell (8 steps) away from it
    far = torch.ones(LENGTH, dtype=torch.bool)
    far[WINDOW.start - 8 : WINDOW.stop + 8] = False
    assert maps[WINDOW].min() > maps[far].max()
    assert WINDOW.start <= int(maps.argmax()) < WINDOW.stop


class SmallSignalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 5, padding=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.conv(x)).mean(dim=2))


def test_integrated_gradients_and_occlusion_equal_captum_on_signals() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = SmallSignalNet().double().eval()
    x = torch.rand(2, 3, 30, dtype=torch.float64)
    # float64 throughout, stored as float32: one rounding of 2^-24 relative (test_volumes)
    ours = salience.explain(model, x, method="integrated_gradients", steps=16, target=2)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, target=2, n_steps=16, method="gausslegendre"
    )
    torch.testing.assert_close(ours.attributions[:, 0].double(), theirs, rtol=2**-23, atol=1e-30)
    occlusion = salience.explain(
        model, x, method="occlusion", window=6, stride=3, baseline=0.5, target=1
    ).attributions[:, 0]
    reference = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 6), strides=(3, 3), baselines=0.5, target=1
    )
    # Captum sums in float32; at most 2 windows cover a step: a few roundings of the largest
    bound = 8 * 2**-24 * float(reference.abs().max())
    for channel in range(3):
        torch.testing.assert_close(occlusion, reference[:, channel], rtol=0, atol=bound)


def test_the_blurred_baseline_blurs_each_channel_along_time_only() -> None:
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.zeros(1, 3, 40, dtype=torch.float64)
    x[0, 1, 20] = 1.0  # one lead's impulse must not leak into the others
    blurred = baseline_like(x, "blur", blur_sigma=2.0)
    assert blurred[0, 0].abs().max() == 0 and blurred[0, 2].abs().max() == 0
    expected = scipy_ndimage.gaussian_filter1d(x[0, 1].numpy(), 2.0, mode="reflect")
    np.testing.assert_allclose(blurred[0, 1].numpy(), expected, rtol=1e-12, atol=1e-15)


# --- files -------------------------------------------------------------------------------------


def test_csv_signals_with_and_without_a_header(tmp_path) -> None:
    data = np.random.default_rng(0).random((LENGTH, 2)).astype(np.float32)
    rows = "\n".join(",".join(f"{v:.9g}" for v in row) for row in data)
    (tmp_path / "leads.csv").write_text("I,II\n" + rows + "\n")
    (tmp_path / "plain.csv").write_text(rows + "\n")
    named = load_signal(tmp_path / "leads.csv")
    assert named.channels == ("I", "II") and named.data.shape == (2, LENGTH)
    np.testing.assert_array_equal(named.data, data.T)
    plain = load_signal(tmp_path / "plain.csv")
    assert plain.channels == ("0", "1")
    np.testing.assert_array_equal(plain.data, data.T)
    assert named.geometry() == {
        "modality": "signal",
        "source": "leads.csv",
        "length": LENGTH,
        "channels": ["I", "II"],
    }


def test_bad_signal_files_are_refused_in_one_line(tmp_path) -> None:
    (tmp_path / "word.csv").write_text("I,II\n1,2\n3,abc\n")
    with pytest.raises(ArrayFileError, match=r"row 3, column II: 'abc' is not a number"):
        load_signal(tmp_path / "word.csv")
    (tmp_path / "short.csv").write_text("I,II\n1,2\n3\n")
    with pytest.raises(ArrayFileError, match="row 3 has 1 cells, the table 2"):
        load_signal(tmp_path / "short.csv")
    (tmp_path / "big.csv").write_text("1,2\n" * 100)
    with pytest.raises(ArrayFileError, match="more than the limit"):
        load_signal(tmp_path / "big.csv", max_samples=50)
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ArrayFileError, match=r"a signal is \(C, L\)"):
        load_signal(tmp_path / "cube.npy")
    np.save(tmp_path / "one.npy", np.arange(5, dtype=np.float64))
    assert load_signal(tmp_path / "one.npy").data.shape == (1, 5)
    from salience.signals import check_fits

    two = Signal(np.zeros((2, LENGTH), np.float32), ("I", "II"), "ecg.csv")
    with pytest.raises(ValueError, match=r"m.pt2 expects signals .*\(N, 3, 64\), ecg.csv gives"):
        check_fits(two, (None, 3, 64), "m.pt2")


def test_the_figure_draws_a_trace_and_a_band_per_channel(signal: Tensor) -> None:
    item = Signal(signal[0].numpy(), ("I", "II"), "ecg")
    coarse = torch.zeros(LENGTH // 2)
    coarse[10:16] = 1
    band = signal_map(coarse, LENGTH)  # a CAM's coarser map, upsampled linearly
    assert band.shape == (LENGTH,) and band[WINDOW].min() > 0 and band[:18].max() == 0
    figure = signal_figure(item, band, label="logit")
    assert len(figure.axes) == 5  # two traces, two bands and the colorbar
    assert [ax.get_ylabel() for ax in figure.axes[:4:2]] == ["I", "II"]
    assert len(figure.axes[1].images) == 1 and len(figure.axes[0].lines) == 1
    # the colorbar reads the bands' one scale back: 0 to the map's largest value
    assert figure.axes[4].get_ylabel() == "logit"
    assert figure.axes[4].get_ylim() == (0.0, float(band.max()))


def test_explain_a_csv_signal_from_the_command_line(tmp_path, signal: Tensor) -> None:
    from salience.cli import main

    program = torch.export.export(WindowNet().eval(), (signal,))
    torch.export.save(program, tmp_path / "window.pt2")
    rows = "\n".join(f"{a:.9g},{b:.9g}" for a, b in signal[0].T.tolist())
    (tmp_path / "ecg.csv").write_text("I,II\n" + rows + "\n")
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(tmp_path / "ecg.csv"),
            "--model",
            str(tmp_path / "window.pt2"),
            "--method",
            "occlusion",
            "--window",
            "4",
            "--stride",
            "4",
            "--target",
            "0",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert (out / "ecg_occlusion.png").read_bytes().startswith(b"\x89PNG")
    meta = json.loads((out / "ecg_occlusion.json").read_text())
    assert meta["geometry"]["modality"] == "signal" and meta["geometry"]["channels"] == ["I", "II"]
    maps = salience.Explanation.load(out / "ecg_occlusion").attributions[0, 0]
    assert maps[WINDOW].min() > 0 and maps[: WINDOW.start].abs().max() < 1e-5


def test_batch_over_a_folder_of_signals(tmp_path, signal: Tensor) -> None:
    from salience.runner import JobSpec, run_job

    program = torch.export.export(WindowNet().eval(), (signal,))
    torch.export.save(program, tmp_path / "window.pt2")
    (tmp_path / "ecgs").mkdir()
    np.save(tmp_path / "ecgs" / "one.npy", signal[0].numpy())
    spec = JobSpec(model=str(tmp_path / "window.pt2"), methods=("gradient",), target="0")
    summary = run_job(spec, tmp_path / "ecgs", tmp_path / "out", workers=1, progress=False)
    assert (summary.explained, summary.failed) == (1, 0)
    item = tmp_path / "out" / "items" / "one.npy"
    gradient = salience.Explanation.load(item / "gradient").attributions[0, 0]
    expected = torch.stack([time_mask(WINDOW), torch.zeros(LENGTH)])  # d(class 0)/d(signal)
    torch.testing.assert_close(gradient.double(), expected.double(), rtol=0, atol=1e-6)
    meta = json.loads((item / "gradient.json").read_text())
    geometry = {"modality": "signal", "length": LENGTH, "channels": ["0", "1"], "source": "one.npy"}
    assert meta["geometry"] == geometry
    assert (item / "gradient.thumb.png").read_bytes().startswith(b"\x89PNG")


def test_a_npy_signal_is_decided_where_it_is_read_not_on_the_worker(tmp_path, signal) -> None:
    # A Ray actor on another machine gets the bytes but not the file: the kind of a .npy (by
    # its header's rank) travels with the task, decided by the driver that read it.
    from salience.runner import JobSpec
    from salience.runner.inputs import collect_inputs
    from salience.runner.work import ItemWorker, Task, read_task

    program = torch.export.export(WindowNet().eval(), (signal,))
    torch.export.save(program, tmp_path / "window.pt2")
    (tmp_path / "ecgs").mkdir()
    np.save(tmp_path / "ecgs" / "one.npy", signal[0].numpy())
    (item,) = collect_inputs(tmp_path / "ecgs")
    task = read_task(item)
    assert task.kind == "signal"
    (tmp_path / "ecgs" / "one.npy").unlink()  # as on a remote worker: no file at the path
    shipped = Task(task.item, task.data, kind=task.kind)
    worker = ItemWorker(JobSpec(model=str(tmp_path / "window.pt2"), methods=("gradient",)))
    result = worker.process(shipped)
    assert result.record["status"] == "done", result.record
    assert "gradient.png" in result.files
    # without the kind the worker would have to read the missing file: an image, which fails
    assert worker.process(Task(task.item, task.data)).record["status"] == "failed"
