"""3-D volumes (N, C, D, H, W): known boxes found by every CAM, occlusion and RISE; Captum's
IntegratedGradients and Occlusion; NIfTI and .npy scans in and out; the command line."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from salience.adapters.layers import LayerError
from salience.arrays import ArrayFileError
from salience.errors import InvalidInputError
from salience.methods.baselines import baseline_like
from salience.outputs import SOFTMAX, explained_text, summarize
from salience.postprocess import gaussian_blur
from salience.volumes import (
    Volume,
    axis_views,
    load_volume,
    map_nifti_bytes,
    montage_figure,
    save_map_nifti,
    volume_map,
)

nibabel = pytest.importorskip("nibabel")

SIDE = 16
#: The box (in the 8³ feature grid) whose voxels class 0 sums, and class 1's, far from it.
BOX = (slice(1, 4), slice(2, 5), slice(4, 7))
OTHER = (slice(5, 8), slice(5, 8), slice(0, 2))


def box_mask(box: tuple[slice, ...], side: int = SIDE // 2) -> Tensor:
    mask = torch.zeros(side, side, side)
    mask[box] = 1
    return mask


def input_box(box: tuple[slice, ...]) -> tuple[slice, ...]:
    """The input voxels under feature cells ``box`` (the pooling halves each side)."""
    return tuple(slice(2 * b.start, 2 * b.stop) for b in box)


class BoxNet(nn.Module):
    """Class 0 sums the 2×2×2-pooled voxels of ``BOX``, class 1 those of ``OTHER``.

    ``features`` (a module, the automatic CAM layer) outputs channel 0 = pooled scan inside
    ``BOX`` (zero elsewhere) and channel 1 = inside ``OTHER``; the scores are their sums.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        self.register_buffer("boxes", torch.stack([box_mask(BOX), box_mask(OTHER)]))
        self.features = Boxes()

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool3d(self.conv(x), 2)
        return self.features(pooled, self.boxes).sum(dim=(2, 3, 4))


class Boxes(nn.Module):
    def forward(self, pooled: Tensor, boxes: Tensor) -> Tensor:
        return pooled * boxes


@pytest.fixture(scope="module")
def scan() -> Tensor:
    return torch.rand(1, 1, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(3)) + 0.5


def pooled_box(scan: Tensor) -> Tensor:
    """Grad-CAM's closed form on BoxNet for class 0: the pooled scan inside BOX, 0 elsewhere."""
    return F.avg_pool3d(scan, 2)[0, 0] * box_mask(BOX)


GRADIENT_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


@pytest.mark.parametrize("method", [*GRADIENT_CAMS, "scorecam", "ablationcam"])
def test_every_cam_finds_the_box_on_a_3d_feature_map(method: str, scan: Tensor) -> None:
    options = {"softmax": False} if method == "scorecam" else {}
    explanation = salience.explain(BoxNet(), scan, method=method, target=0, **options)
    maps = explanation.attributions[0, 0]
    assert maps.shape == (8, 8, 8) and explanation.info["layer"] == "features"
    # Every CAM here is a positive multiple of channel 0: each channel weight is a sum of the
    # class-0 gradient (1 on channel 0, 0 on channel 1) or, for Score-CAM and Ablation-CAM, of
    # class 0's change when channel 1's mask (zero on BOX's cells) is applied: exactly 0.
    expected = pooled_box(scan)
    scale = float((maps * expected).sum() / expected.square().sum())
    assert scale > 0
    torch.testing.assert_close(maps, scale * expected, rtol=1e-5, atol=1e-6 * scale)


def test_eigencam_and_guided_gradcam_on_volumes(scan: Tensor) -> None:
    eigen = salience.explain(BoxNet(), scan, method="eigencam").attributions[0, 0]
    assert eigen.shape == (8, 8, 8) and torch.isfinite(eigen).all()
    guided = salience.explain(BoxNet(), scan, method="guided_gradcam", target=0).attributions
    assert guided.shape == (1, 1, 1, SIDE, SIDE, SIDE)
    outside = torch.ones(SIDE, SIDE, SIDE, dtype=torch.bool)
    outside[input_box(BOX)] = False
    # the trilinear upsampling spreads the CAM one voxel past the box; the gradient is 0 there
    assert guided[0, 0, 0][outside].abs().max() == 0
    assert guided[0, 0, 0][input_box(BOX)].min() > 0


def test_the_automatic_layer_is_the_last_conv3d_and_grad_cam_is_trilinear() -> None:
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.rand(2, 1, 8, 8, 8)
    explanation = salience.explain(model, x, method="gradcam")  # channels-last copy: no error
    assert explanation.info["layer"] == "3"  # the last Conv3d's ReLU: the last 3-D feature map
    assert explanation.attributions.shape == (2, 1, 4, 4, 4)
    guided = salience.explain(model, x, method="guided_gradcam").attributions
    assert guided.shape == (2, 1, 1, 8, 8, 8)
    no_maps = nn.Sequential(nn.Flatten(), nn.Linear(512, 2))
    with pytest.raises(LayerError, match=r"\(N, C, D, H, W\)"):
        salience.explain(no_maps, x, method="gradcam")


def test_occlusion_with_3d_windows_finds_the_box_exactly(scan: Tensor) -> None:
    explanation = salience.explain(BoxNet(), scan, method="occlusion", window=2, stride=2, target=0)
    maps = explanation.attributions[0, 0]
    # a 2³ window aligned with the pooling removes one cell: the drop is that cell's score
    expected = pooled_box(scan).repeat_interleave(2, 0).repeat_interleave(2, 1)
    expected = expected.repeat_interleave(2, 2)
    # float32 drops are differences of sums of ~30 values of about 1: ~1e-6 absolute
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    assert explanation.info["windows"] == 8**3


def test_rise_with_3d_masks_finds_the_box(scan: Tensor) -> None:
    maps = salience.explain(
        BoxNet(), scan, method="rise", n_masks=400, grid=4, seed=0, softmax=False, target=0
    ).attributions[0, 0]
    assert maps.shape == (SIDE, SIDE, SIDE)
    inside = torch.zeros(SIDE, SIDE, SIDE, dtype=torch.bool)
    inside[input_box(BOX)] = True
    other = torch.zeros_like(inside)
    other[input_box(OTHER)] = True
    # RISE's map is E[score · M]: a constant keep · E[score] plus the masks' covariance with
    # the score, which is positive around the box and about zero far from it
    centre = maps.mean()
    assert maps[inside].mean() - centre > 3 * (maps[other].mean() - centre).abs()
    peak = np.unravel_index(int(maps.argmax()), maps.shape)
    assert inside[peak]


class SmallVolumeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.conv(x)).mean(dim=(2, 3, 4)))


def test_integrated_gradients_and_occlusion_equal_captum_on_volumes() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = SmallVolumeNet().double().eval()
    x = torch.rand(2, 2, 6, 6, 6, dtype=torch.float64)
    # float64 throughout: both sum the same 16 Gauss–Legendre terms (float64 rounding, ~1e-15);
    # an Explanation stores float32, one rounding of at most 2^-24 relative: rtol = 2^-23.
    ours = salience.explain(model, x, method="integrated_gradients", steps=16, target=1)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, target=1, n_steps=16, method="gausslegendre"
    )
    exact = {"rtol": 2**-23, "atol": 1e-30}
    torch.testing.assert_close(ours.attributions[:, 0].double(), theirs, **exact)
    occlusion = salience.explain(
        model, x, method="occlusion", window=(2, 4, 2), stride=(2, 2, 2), target=3
    ).attributions[:, 0]
    reference = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(2, 2, 4, 2), strides=(2, 2, 2, 2), target=3
    )
    # Captum accumulates in float32: at most 2 windows cover a voxel, so its sum, the mean and
    # our float32 result are a few roundings of 2^-24 of the largest drop: atol 8·2^-24·max.
    bound = 8 * 2**-24 * float(reference.abs().max())
    for channel in range(2):  # the window spans all channels: every channel gets the map
        torch.testing.assert_close(occlusion, reference[:, channel], rtol=0, atol=bound)


def test_the_blurred_baseline_blurs_a_volume_in_3d_only() -> None:
    x = torch.rand(1, 2, 6, 7, 8, dtype=torch.float64)
    blurred = baseline_like(x, "blur", blur_sigma=1.0)
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    for c in range(2):  # channels never mix
        expected = scipy_ndimage.gaussian_filter(x[0, c].numpy(), 1.0, mode="reflect")
        np.testing.assert_allclose(blurred[0, c].numpy(), expected, rtol=1e-12, atol=1e-14)
    assert gaussian_blur(x, 1.0, dims=3).equal(blurred)


# --- files -------------------------------------------------------------------------------------


def oblique_affine() -> np.ndarray:
    """A LPS-ish affine with anisotropic voxels (1.5 × 0.8 × 3 mm) and an offset."""
    return np.array([[-1.5, 0, 0, 90.0], [0, -0.8, 0, 120.0], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])


def write_scan(path, data: np.ndarray, affine: np.ndarray) -> None:
    nibabel.save(nibabel.Nifti1Image(data, affine), str(path))


def test_a_nifti_scan_round_trips_with_its_affine(tmp_path) -> None:
    data = np.random.default_rng(0).random((SIDE, SIDE, SIDE)).astype(np.float32)
    write_scan(tmp_path / "scan.nii.gz", data, oblique_affine())
    volume = load_volume(tmp_path / "scan.nii.gz")
    assert volume.data.shape == (1, SIDE, SIDE, SIDE)
    np.testing.assert_array_equal(volume.data[0], data)
    np.testing.assert_allclose(volume.spacing, (1.5, 0.8, 3.0))
    assert axis_views(volume.affine) == ("sagittal", "coronal", "axial")
    explanation = salience.explain(BoxNet(), volume.tensor(), method="gradcam", target=0)
    saliency = volume_map(explanation.map(), volume.shape)
    assert saliency.shape == volume.shape
    written = save_map_nifti(tmp_path / "map.nii.gz", saliency, volume)
    back = nibabel.load(str(written))
    np.testing.assert_array_equal(back.affine, volume.affine)
    scan_header = nibabel.load(str(tmp_path / "scan.nii.gz")).header
    assert back.header["sform_code"] == scan_header["sform_code"]
    np.testing.assert_array_equal(back.header.get_zooms(), scan_header.get_zooms())
    np.testing.assert_array_equal(np.asarray(back.dataobj), saliency)
    assert map_nifti_bytes(saliency, volume) == map_nifti_bytes(saliency, volume)  # no mtime


def test_npy_scans_and_bad_files(tmp_path) -> None:
    data = np.random.default_rng(1).random((2, 4, 5, 6)).astype(np.float32)
    np.save(tmp_path / "scan.npy", data)
    volume = load_volume(tmp_path / "scan.npy")
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_array_equal(volume.affine, np.eye(4))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArrayFileError, match="not numbers"):
        load_volume(tmp_path / "objects.npy")
    with pytest.raises(ArrayFileError, match="more than the limit"):
        load_volume(tmp_path / "scan.npy", max_voxels=100)
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1), np.float32))
    with open(tmp_path / "claims.npy", "wb") as stream:  # a tiny file claiming 4096³ voxels
        np.lib.format.write_array_header_1_0(stream, {**header, "shape": (4096, 4096, 4096)})
    with pytest.raises(ArrayFileError, match="more than the limit"):
        load_volume(tmp_path / "claims.npy")
    with pytest.raises(ArrayFileError, match="shorter than its header"):
        load_volume(tmp_path / "claims.npy", max_voxels=2**40)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a scan")
    with pytest.raises(ArrayFileError, match="not a readable NIfTI"):
        load_volume(tmp_path / "broken.nii.gz")


def test_the_montage_cuts_through_the_peak(scan: Tensor) -> None:
    volume = Volume(scan[0].numpy(), oblique_affine(), "scan")
    saliency = np.zeros(volume.shape, np.float32)
    saliency[3, 9, 12] = 1.0
    saliency[0, 0, 0] = -0.25
    figure = montage_figure(volume, saliency, label="logit")
    slices, colorbar = figure.axes[:3], figure.axes[3:]
    assert [ax.get_title() for ax in slices] == ["axial 12", "coronal 9", "sagittal 3"]
    # one colorbar, from the map's least value to its largest, in the map's units
    assert len(colorbar) == 1
    assert colorbar[0].get_ylabel() == "logit"
    assert colorbar[0].get_ylim() == (-0.25, 1.0)


def test_explain_a_nifti_scan_from_the_command_line(tmp_path, capsys) -> None:
    from salience.cli import main

    model = BoxNet().eval()
    program = torch.export.export(model, (torch.rand(1, 1, SIDE, SIDE, SIDE),))
    torch.export.save(program, tmp_path / "box.pt2")
    data = np.random.default_rng(2).random((SIDE, SIDE, SIDE)).astype(np.float32)
    write_scan(tmp_path / "scan.nii.gz", data, oblique_affine())
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(tmp_path / "scan.nii.gz"),
            "--model",
            str(tmp_path / "box.pt2"),
            "--method",
            "gradient,occlusion",
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
    assert (out / "scan_occlusion.png").read_bytes().startswith(b"\x89PNG")
    written = nibabel.load(str(out / "scan_occlusion.nii.gz"))
    # the scan's affine as its file holds it (NIfTI stores float32)
    np.testing.assert_array_equal(written.affine, nibabel.load(tmp_path / "scan.nii.gz").affine)
    inside = np.asarray(written.dataobj)[input_box(BOX)]
    assert inside.min() > 0
    meta = json.loads((out / "scan_gradient.json").read_text())
    assert meta["geometry"]["modality"] == "volume"
    np.testing.assert_allclose(meta["geometry"]["affine"], oblique_affine())
    # a scan of another shape: one line naming what the model expects
    write_scan(tmp_path / "small.nii.gz", data[:8, :8, :8], oblique_affine())
    capsys.readouterr()
    code = main(
        [
            "explain",
            str(tmp_path / "small.nii.gz"),
            "--model",
            str(tmp_path / "box.pt2"),
            "--output",
            str(out),
            "--quiet",
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code != 0 and len(error.splitlines()) == 1
    assert "expects volumes (N, 1, 16, 16, 16)" in error and "(1, 1, 8, 8, 8)" in error


def test_a_shape_mismatch_is_refused_before_any_work() -> None:
    from salience.volumes import check_fits

    volume = Volume(np.zeros((1, 8, 8, 8), np.float32), np.eye(4), "small.nii.gz")
    with pytest.raises(InvalidInputError, match=r"m.pt2 expects volumes \(N, 1, 16, 16, 16\)"):
        check_fits(volume, (None, 1, 16, 16, 16), "m.pt2")
    check_fits(volume, (None, 1, 8, 8, 8), "m.pt2")
    check_fits(volume, None, "m.pt2")


def test_deletion_and_insertion_by_voxels(scan: Tensor) -> None:
    from salience.evaluation.faithfulness import deletion, insertion, random_saliency

    model = BoxNet()
    cam = salience.explain(model, scan, method="gradcam", target=0)  # 8³, upsampled trilinearly
    noise = random_saliency(scan, seed=0)
    assert noise.shape == (1, SIDE, SIDE, SIDE)
    options = {"target": 0, "score": "logit"}
    deleted = deletion(model, scan, cam, **options)
    assert deleted.pixels_per_step == SIDE * SIDE  # a slice's worth of voxels per step
    assert deleted.scores.shape == (1, SIDE + 1)
    # the score is the box's sum: the CAM ranks the box's voxels first, so it is gone after
    # the box's 216 voxels (the first step's 256) and its curve is 0 from then on
    assert deleted.scores[0, 0] > 0 and deleted.scores[0, 1:].abs().max() < 1e-5
    assert float(deleted.auc[0]) < 0.5 * float(deletion(model, scan, noise, **options).auc[0])
    # insertion starts from a 3-D Gaussian blur (σ 5) of the scan, channels apart
    blurred = insertion(model, scan, cam, **options)
    start = model(gaussian_blur(scan, 5.0, dims=3))[0, 0]
    torch.testing.assert_close(blurred.scores[0, 0].float(), start, rtol=1e-5, atol=1e-5)
    inserted = insertion(model, scan, cam, substrate="zeros", **options)
    noisy = insertion(model, scan, noise, substrate="zeros", **options)
    assert float(inserted.auc[0]) > 2 * float(noisy.auc[0])


def test_sanity_checks_compare_volume_maps_voxel_by_voxel(scan: Tensor) -> None:
    from salience.evaluation.randomization import sanity_check
    from salience.evaluation.similarity import comparison_size, slice_mosaic

    volume = torch.arange(2 * 4 * 3 * 5, dtype=torch.float64).reshape(2, 4, 3, 5)
    mosaic = slice_mosaic(volume, (4, 3, 5))
    assert mosaic.shape == (2, 2 * 3, 2 * 5)  # 4 slices on 2 × 2 tiles, channels kept
    assert mosaic[1, 3:, 5:].equal(volume[1, 3])  # slice 3: second row, second column
    assert sorted(mosaic.flatten().tolist()) == sorted(volume.flatten().tolist())
    model = SmallVolumeNet().eval()
    x = torch.rand(1, 2, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    result = sanity_check(
        model, x, ["gradient", "gradcam"], layers=["head", "conv"], progress=False
    )
    assert result.similarity.shape == (2, 2, 1, 4) and np.isfinite(result.similarity).all()
    # the 6 slices on 3 × 2 tiles, scaled up as small images are for SSIM
    assert result.maps.shape[-2:] == comparison_size((6 * 3, 6 * 2))
    with pytest.raises(ValueError, match=r"images .* or volumes"):
        sanity_check(model, torch.rand(1, 2, 6), ["gradient"], progress=False)


def test_batch_over_a_folder_of_scans_writes_each_map_back_and_resumes(tmp_path) -> None:
    from salience.runner import JobSpec, run_job
    from salience.runner.manifest import RECORD

    program = torch.export.export(BoxNet().eval(), (torch.rand(1, 1, SIDE, SIDE, SIDE),))
    torch.export.save(program, tmp_path / "box.pt2")
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(4)
    data = rng.random((SIDE, SIDE, SIDE)).astype(np.float32) + 0.5
    write_scan(scans / "a.nii.gz", data, oblique_affine())
    np.save(scans / "b.npy", data[None])
    write_scan(scans / "small.nii.gz", data[:8, :8, :8], oblique_affine())
    spec = JobSpec(
        model=str(tmp_path / "box.pt2"),
        methods=("occlusion",),
        options={"window": 4, "stride": 4},
        target="0",
    )
    out = tmp_path / "out"
    first = run_job(spec, scans, out, workers=1, progress=False)
    assert (first.explained, first.failed) == (3, 1)
    written = nibabel.load(str(out / "items" / "a.nii.gz" / "occlusion.nii.gz"))
    np.testing.assert_array_equal(written.affine, nibabel.load(scans / "a.nii.gz").affine)
    # occlusion of BoxNet's class 0: a 4³ window (stride 4) counts exactly when it overlaps the
    # box's voxels, and gives all its voxels the same score drop
    saliency = np.asarray(written.dataobj)
    windows = tuple(slice(b.start // 4 * 4, -(-b.stop // 4) * 4) for b in input_box(BOX))
    counted = np.zeros(saliency.shape, bool)
    counted[windows] = True
    assert saliency[counted].min() > 0 and np.abs(saliency[~counted]).max() == 0
    npy_map = np.load(out / "items" / "b.npy" / "occlusion.npz")
    meta = json.loads((out / "items" / "a.nii.gz" / "occlusion.json").read_text())
    assert meta["geometry"]["modality"] == "volume"
    np.testing.assert_allclose(meta["geometry"]["affine"], oblique_affine())
    assert npy_map["attributions"].shape[-3:] == (SIDE, SIDE, SIDE)
    for name in ("image.thumb.png", "occlusion.thumb.png", "occlusion.png"):
        assert (out / "items" / "b.npy" / name).read_bytes().startswith(b"\x89PNG")
    failed = json.loads((out / "items" / "small.nii.gz" / RECORD).read_text())
    assert "expects volumes (N, 1, 16, 16, 16)" in failed["error"]
    index = (out / "index.html").read_text()
    assert "items/a.nii.gz/occlusion.thumb.png" in index
    # each scan's thumbnail is captioned with the method and the prediction it explains
    with torch.no_grad():
        logits = BoxNet()(torch.from_numpy(data)[None, None])[0]
    explained = explained_text(summarize(logits, SOFTMAX, None, 5), 0)
    record = json.loads((out / "items" / "b.npy" / RECORD).read_text())
    assert record["captions"] == {"occlusion": f"occlusion: {explained}"}
    assert f"<figcaption>{html.escape(record['captions']['occlusion'])}</figcaption>" in index
    again = run_job(spec, scans, out, workers=1, progress=False)
    assert (again.explained, again.skipped) == (1, 2)  # only the failed scan is tried again


def test_layers_of_a_volume_model_are_probed_with_a_volume(tmp_path, capsys) -> None:
    from salience.cli import main
    from salience.models.loader import FREE_SIZE

    def table(arguments: list[str]) -> tuple[str, dict[str, tuple[str, str]]]:
        assert main(["layers", "model_factories:volume_net", *arguments]) == 0
        lines = capsys.readouterr().out.splitlines()
        return lines[0], {line[2:].split()[0]: (line[0], line.split()[-1]) for line in lines[1:]}

    side = FREE_SIZE  # no file given: the first Conv3d's channels, free axes of FREE_SIZE
    title, shapes = table([])
    assert f"on a 1×2×{side}×{side}×{side} input" in title
    assert shapes["0"] == (" ", f"4×{side}×{side}×{side}")
    assert shapes["3"] == ("*", f"3×{side // 2}×{side // 2}×{side // 2}")  # stride 2, last 5-D
    np.save(tmp_path / "scan.npy", np.zeros((2, 6, 10, 12), np.float32))
    title, shapes = table(["--input", str(tmp_path / "scan.npy")])
    assert "on a 1×2×6×10×12 input" in title and shapes["3"] == ("*", "3×3×5×6")
