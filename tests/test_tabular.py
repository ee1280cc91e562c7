"""Tabular models ``(N, F)``: known answers on a linear model, equality with Captum, tables read
from CSV/Parquet with one-line errors, and an MLP on the digits explained through the CLI."""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import salience
from conftest import SoftplusNet
from salience.cli import main
from salience.errors import InvalidInputError
from salience.explanation import Explanation
from salience.runner.inputs import is_feature_table
from salience.tabular import read_rows
from salience.tabular_plots import beeswarm_offsets, rows_figure, summary_figure, top_features

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FLOAT32_STORAGE = 2.0**-24
"""An Explanation stores float32: each value is the float64 result rounded once (relative)."""


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def relative_gap(ours: Tensor, reference: Tensor) -> float:
    reference = reference.double()
    return float((ours.double() - reference).abs().max() / reference.abs().max())


class Linear(nn.Module):
    """f(x) = w·x + c, one output: gradient × input is w ⊙ x, Integrated Gradients w ⊙ (x − b)."""

    def __init__(self, weights: Sequence[float], dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.layer = nn.Linear(len(weights), 1).to(dtype)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([weights], dtype=dtype))
            self.layer.bias.fill_(0.25)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


WEIGHTS = (1.5, -2.0, 0.5, 3.0)


@pytest.fixture(scope="module")
def rows() -> Tensor:
    return torch.rand(6, len(WEIGHTS), generator=torch.Generator().manual_seed(1)).double() * 4 - 1


# --- known answers on a linear model ------------------------------------------------------------


def test_gradient_x_input_of_a_linear_model_is_w_times_x(rows: Tensor) -> None:
    model = Linear(WEIGHTS)
    found = salience.explain(model, rows, method="gradient_x_input")
    expected = torch.tensor(WEIGHTS, dtype=torch.float64) * rows
    assert relative_gap(found.attributions[:, 0], expected) <= FLOAT32_STORAGE


@pytest.mark.parametrize("baseline", ["zeros", "means", "given"])
def test_integrated_gradients_of_a_linear_model_is_w_times_x_minus_b(
    baseline: str, rows: Tensor
) -> None:
    """Exact for any number of steps (the gradient is w everywhere); completeness < 0.5%."""
    model = Linear(WEIGHTS)
    b = {
        "zeros": torch.zeros(1, len(WEIGHTS), dtype=torch.float64),
        "means": rows.mean(dim=0, keepdim=True),
        "given": torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=torch.float64),
    }[baseline]
    option = "zeros" if baseline == "zeros" else b
    found = salience.explain(model, rows, method="integrated_gradients", steps=8, baseline=option)
    expected = torch.tensor(WEIGHTS, dtype=torch.float64) * (rows - b)
    # the quadrature weights sum to 1 up to a few float64 roundings; then one float32 rounding
    assert relative_gap(found.attributions[:, 0], expected) <= 2 * FLOAT32_STORAGE
    assert max(e for (e,) in found.info["completeness_error"]) < 0.005


def test_smoothgrad_of_a_linear_model_is_w(rows: Tensor) -> None:
    """The gradient is w at every noisy copy, so their mean is w."""
    found = salience.explain(Linear(WEIGHTS), rows, method="smoothgrad", n_samples=4)
    expected = torch.tensor(WEIGHTS, dtype=torch.float64).expand_as(rows)
    assert relative_gap(found.attributions[:, 0], expected) <= 2 * FLOAT32_STORAGE


def test_feature_ablation_of_a_linear_model_is_w_times_x_minus_b(rows: Tensor) -> None:
    model = Linear(WEIGHTS)
    found = salience.explain(model, rows, method="feature_ablation", baseline=0.5)
    expected = torch.tensor(WEIGHTS, dtype=torch.float64) * (rows - 0.5)
    # a difference of two float64 scores of size |f| ≲ 10: a few float64 roundings of 10
    assert relative_gap(found.attributions[:, 0], expected) <= 2 * FLOAT32_STORAGE


# --- equality with Captum ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def softplus() -> SoftplusNet:
    return SoftplusNet(features=10).double().eval()


@pytest.fixture(scope="module")
def features() -> Tensor:
    return torch.randn(5, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


# Both compute in float64 with the same inputs; ours is stored as float32 (one rounding).
CAPTUM_BOUND = 2 * FLOAT32_STORAGE


@pytest.mark.parametrize("baseline", [None, 0.3, "reference"])
def test_feature_ablation_equals_captum(
    baseline: object, softplus: SoftplusNet, features: Tensor
) -> None:
    given = features.mean(dim=0, keepdim=True) if baseline == "reference" else baseline
    options = {} if given is None else {"baseline": given}
    ours = salience.explain(softplus, features, method="feature_ablation", target=1, **options)
    reference = captum_attr.FeatureAblation(softplus).attribute(
        features, target=1, **({} if given is None else {"baselines": given})
    )
    assert relative_gap(ours.attributions[:, 0], reference) <= CAPTUM_BOUND
    assert ours.info["groups"] == [10] * 5


@pytest.mark.parametrize("per_sample", [False, True])
def test_feature_ablation_with_groups_equals_captum(
    per_sample: bool, softplus: SoftplusNet, features: Tensor
) -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 2, 3, 3, 4, 4]])
    if per_sample:  # each row its own grouping, as Captum allows
        mask = torch.stack([mask[0].roll(n) for n in range(len(features))])
    ours = salience.explain(
        softplus, features, method="feature_ablation", target="top-2", feature_mask=mask
    )
    for k in range(2):
        target = ours.targets[:, k].tolist()
        reference = captum_attr.FeatureAblation(softplus).attribute(
            features, target=target, feature_mask=mask
        )
        assert relative_gap(ours.attributions[:, k], reference) <= CAPTUM_BOUND
    grouped = ours.attributions[:, 0]
    for row, ids in zip(grouped, mask.expand(len(features), -1), strict=True):
        for group in ids.unique():  # the same value for every feature of a group
            assert row[ids == group].unique().numel() == 1
    assert ours.info["groups"] == [5] * 5


def test_integrated_gradients_equals_captum_on_rows(
    softplus: SoftplusNet, features: Tensor
) -> None:
    baseline = features.mean(dim=0, keepdim=True)
    ours = salience.explain(
        softplus, features, method="integrated_gradients", steps=32, target=0, baseline=baseline
    )
    reference = captum_attr.IntegratedGradients(softplus).attribute(
        features, baselines=baseline, target=0, n_steps=32, method="gausslegendre"
    )
    # the same nodes and weights in float64: a few roundings of each partial sum, then float32
    assert relative_gap(ours.attributions[:, 0], reference) <= 4 * FLOAT32_STORAGE


def test_a_feature_mask_that_does_not_fit_is_refused(
    softplus: SoftplusNet, features: Tensor
) -> None:
    with pytest.raises(InvalidInputError, match=r"does not fit inputs of shape \(5, 10\)"):
        salience.explain(softplus, features, method="feature_ablation", feature_mask=[0, 1, 2])
    with pytest.raises(InvalidInputError, match="integer group ids"):
        salience.explain(
            softplus, features, method="feature_ablation", feature_mask=torch.zeros(10)
        )


def test_too_many_groups_are_refused_before_any_pass() -> None:
    with pytest.raises(InvalidInputError, match=r"at most 4096.*occlusion"):
        salience.explain(
            Linear([1.0] * 5000, torch.float32), torch.rand(1, 5000), method="feature_ablation"
        )


@pytest.mark.parametrize(
    ("method", "options"), [("occlusion", {}), ("occlusion", {"window": 2}), ("rise", {})]
)
def test_windows_and_masks_on_rows_point_to_feature_ablation(
    rows: Tensor, method: str, options: dict
) -> None:
    model = Linear([1.0] * rows.shape[1])
    with pytest.raises(InvalidInputError) as refused:
        salience.explain(model, rows, method=method, **options)
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert f"rows of features {tuple(rows.shape)} have none" in message
    assert "feature_ablation" in message and "--groups" in message


# --- tables ----------------------------------------------------------------------------------


def test_rows_are_read_by_name_in_the_given_order(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "t.csv", ["id", "b", "a"], [["x", 1, 2], ["y", 3, 4.5]])
    read = read_rows(table, ["a", "b"])
    assert read.features == ("a", "b")
    np.testing.assert_array_equal(read.values, [[2, 1], [4.5, 3]])
    assert read_rows(table).features == ("b", "a")  # default: the numeric columns, file order


def test_a_parquet_table_reads_like_the_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    frame = {"id": ["x", "y"], "b": [1.0, 3.0], "a": [2, 4]}
    pq.write_table(pa.table(frame), tmp_path / "t.parquet")
    read = read_rows(tmp_path / "t.parquet", width=2)
    assert read.features == ("b", "a")
    np.testing.assert_array_equal(read.values, [[1, 2], [3, 4]])
    assert is_feature_table(tmp_path / "t.parquet")
    write_csv(tmp_path / "manifest.csv", ["path", "label"], [["a.png", "0"]])
    assert not is_feature_table(tmp_path / "manifest.csv")


def test_a_long_parquet_table_is_refused_from_its_metadata(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"a": np.zeros(50), "b": np.ones(50)}), tmp_path / "long.parquet")
    with pytest.raises(InvalidInputError, match=r"long\.parquet has more than 49 rows"):
        read_rows(tmp_path / "long.parquet", max_rows=49)
    assert len(read_rows(tmp_path / "long.parquet", max_rows=50)) == 50


def test_explanations_keep_their_feature_names(tmp_path: Path, rows: Tensor) -> None:
    found = salience.explain(Linear(WEIGHTS), rows).with_features(["a", "b", "c", "d"])
    loaded = Explanation.load(found.save(tmp_path / "e")[0])
    assert loaded.feature_names == ("a", "b", "c", "d")
    with pytest.raises(InvalidInputError, match="one name per feature"):
        found.with_features(["a"])


def test_charts_show_the_largest_features_first() -> None:
    attributions = np.array([[0.1, -3.0, 2.0], [0.2, -1.0, 0.5]])
    assert top_features(attributions[0], 2).tolist() == [1, 2]
    assert top_features(attributions, 3).tolist() == [1, 2, 0]  # by mean |attribution|
    offsets = beeswarm_offsets(np.array([1.0, 1.0, 1.0, 5.0]))
    assert len(set(offsets[:3].tolist())) == 3 and offsets[3] == 0.0  # equal values spread out
    names = ["a", "b", "c"]
    assert len(rows_figure(attributions, names, ["r1", "r2"]).axes) == 2
    assert len(summary_figure(attributions, attributions, names).axes) == 2


# --- the command on tables ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("linear") / "linear.pt"
    torch.jit.save(torch.jit.script(Linear(WEIGHTS[:3], torch.float32)), path)
    return path


def cli(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    status = main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_cli_gives_exact_linear_attributions_with_a_reference_baseline(
    linear_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = [[0.5, 2.0, -1.0], [1.0, -0.5, 3.0], [2.0, 1.0, 0.0]]
    table = write_csv(tmp_path / "rows.csv", ["c", "b", "a", "note"], [[*v, "n"] for v in values])
    reference = write_csv(tmp_path / "ref.csv", ["a", "b", "c"], [[1, 2, 3], [3, 0, -1]])
    out = tmp_path / "out"
    status, _, err = cli(
        capsys,
        "explain",
        str(table),
        "--model",
        str(linear_file),
        "--features",
        "a,b,c",
        "--reference",
        str(reference),
        "--method",
        "integrated_gradients",
        "--steps",
        "16",
        "-o",
        str(out),
        "--quiet",
    )
    assert status == 0, err
    x = np.array(values)[:, [2, 1, 0]]  # the columns a, b, c
    w, b = np.array(WEIGHTS[:3]), np.array([[2.0, 1.0, 1.0]])  # the reference's means
    expected = w * (x - b)
    written = read_csv(out / "rows_integrated_gradients.csv")
    assert list(written[0]) == ["row", "target", "score", "a", "b", "c"]
    got = np.array([[float(r[f]) for f in "abc"] for r in written])
    # float32 arithmetic: x − b and the sum of 16 weights, each a few roundings of 2^-24
    assert np.abs(got - expected).max() <= 32 * FLOAT32_STORAGE * np.abs(expected).max()
    meta = json.loads((out / "rows_integrated_gradients.json").read_text())
    assert meta["feature_names"] == ["a", "b", "c"]
    assert max(e for (e,) in meta["info"]["completeness_error"]) < 0.005
    assert (out / "rows_integrated_gradients_rows.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "rows_integrated_gradients_summary.png").read_bytes()[:4] == b"\x89PNG"


def test_an_onnx_model_of_rows_is_explained_by_ablation_with_its_width_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A black box gets the default methods it can run; its input shape gives its width."""
    pytest.importorskip("onnxruntime")
    model = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Linear(WEIGHTS[:3], torch.float32),
            (torch.zeros(1, 3),),
            str(model),
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            dynamo=False,
        )
    values = [[0.5, 2.0, -1.0], [1.0, -0.5, 3.0]]
    table = write_csv(tmp_path / "rows.csv", ["a", "b", "c"], values)
    out = tmp_path / "out"
    status, _, err = cli(capsys, "explain", str(table), "--model", str(model), "-o", str(out))
    assert status == 0, err
    assert sorted(path.name for path in out.glob("*.csv")) == ["rows_feature_ablation.csv"]
    written = read_csv(out / "rows_feature_ablation.csv")
    got = np.array([[float(r[f]) for f in "abc"] for r in written])
    expected = np.array(WEIGHTS[:3]) * np.array(values)
    # differences of float32 scores of size |f| ≲ 10: a few roundings of 2^-24 · 10
    assert np.abs(got - expected).max() <= 8 * FLOAT32_STORAGE * 10
    status, _, err = cli(
        capsys, "explain", str(table), "--model", str(model), "--features", "a,b", "-o", str(out)
    )
    assert status == 2 and "names 2 columns but the model takes 3 features" in err


BAD_TABLES = {
    "a missing column": (["a", "b"], [[1, 2]], ["--features", "a,b,zz"], "has no column 'zz'"),
    "an extra column": (
        ["a", "b", "c", "d"],
        [[1, 2, 3, 4]],
        [],
        r"has 4 numeric columns \(a, b, c, d\) but the model takes 3 features",
    ),
    "a missing feature": (
        ["a", "b", "c"],
        [[1, 2, 3]],
        ["--features", "a,b"],
        "names 2 columns but the model takes 3 features",
    ),
    "a non-numeric cell": (
        ["a", "b", "c"],
        [[1, 2, 3], [4, "abc", 6]],
        [],
        "row 2 of bad.csv, column 'b' holds 'abc', not a number",
    ),
    "an empty cell": (
        ["a", "b", "c"],
        [[1, 2, 3], [1, "", 3]],
        [],
        "row 2 of bad.csv, column 'b' is empty",
    ),
    "a short row": (["a", "b", "c"], [[1, 2]], [], "row 1 of bad.csv has 2 cells but the header 3"),
    "too many rows": (
        ["a", "b", "c"],
        [[1, 2, 3]] * 3,
        ["--max-rows", "2"],
        "has more than 2 rows",
    ),
}


@pytest.mark.parametrize("problem", list(BAD_TABLES))
def test_a_bad_table_gets_one_line_naming_what_the_model_expects(
    problem: str, linear_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header, cells, flags, message = BAD_TABLES[problem]
    table = write_csv(tmp_path / "bad.csv", header, cells)
    status, _, err = cli(
        capsys, "explain", str(table), "--model", str(linear_file), *flags, "-o", str(tmp_path)
    )
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("salience: error: "), err
    assert re.search(message, err), err


# --- an MLP on the digits' 64 features ---------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data / 16.0, data.target


@pytest.fixture(scope="module")
def mlp(digits: tuple[np.ndarray, np.ndarray]) -> nn.Module:
    """64 → 32 → 10, trained in a second on the digits flattened to 64 features."""
    torch.manual_seed(0)
    x, y = torch.tensor(digits[0], dtype=torch.float32), torch.tensor(digits[1])
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    assert (model(x).argmax(dim=1) == y).float().mean() > 0.9
    return model


def test_an_mlp_on_the_digits_is_explained_through_the_cli(
    mlp: nn.Module,
    digits: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    torch.jit.save(torch.jit.script(mlp), tmp_path / "mlp.pt")
    names = [f"px{i}" for i in range(64)]
    values = digits[0][:6]
    table = write_csv(
        tmp_path / "digits.csv", ["id", *names], [[f"d{n}", *v] for n, v in enumerate(values)]
    )
    out = tmp_path / "out"
    status, stdout, err = cli(
        capsys,
        "explain",
        str(table),
        "--model",
        str(tmp_path / "mlp.pt"),
        "--method",
        "gradient_x_input,feature_ablation",
        "-o",
        str(out),
        "--quiet",
    )
    assert status == 0, err
    x = torch.tensor(values, dtype=torch.float32).requires_grad_(True)
    logits = mlp(x)
    predicted = logits.argmax(dim=1)
    for n in range(5):  # the printed predictions are the model's
        probability = torch.softmax(logits[n].double(), dim=0)[predicted[n]]
        assert f"row {n + 1}: class {int(predicted[n])} {float(probability):.1%}" in stdout
    (gradient,) = torch.autograd.grad(logits.gather(1, predicted[:, None]).sum(), x)
    expected = (gradient * x).detach().double().numpy()
    written = read_csv(out / "digits_gradient_x_input.csv")
    got = np.array([[float(r[name]) for name in names] for r in written])
    assert [r["target"] for r in written] == [f"class {int(p)}" for p in predicted]
    # the same float32 backward, batched the same way: a few float32 roundings of the largest
    assert np.abs(got - expected).max() <= 16 * FLOAT32_STORAGE * np.abs(expected).max()
    ablation = read_csv(out / "digits_feature_ablation.csv")
    assert len(ablation) == 6 and list(ablation[0])[3:] == names
    assert (out / "digits_feature_ablation_summary.png").is_file()


def test_batch_writes_a_parquet_table_of_attributions(
    mlp: nn.Module,
    digits: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    torch.jit.save(torch.jit.script(mlp), tmp_path / "mlp.pt")
    names = [f"px{i}" for i in range(64)]
    values = digits[0][10:14]
    pq.write_table(pa.table({n: values[:, i] for i, n in enumerate(names)}), tmp_path / "r.parquet")
    out = tmp_path / "out"
    status, _, err = cli(
        capsys,
        "batch",
        str(tmp_path / "r.parquet"),
        "--model",
        str(tmp_path / "mlp.pt"),
        "--method",
        "feature_ablation",
        "-o",
        str(out),
        "--quiet",
    )
    assert status == 0, err
    table = pq.read_table(out / "attributions.parquet").to_pylist()
    assert [r["method"] for r in table] == ["feature_ablation"] * 4
    x = torch.tensor(values, dtype=torch.float32)
    expected = salience.explain(mlp, x, method="feature_ablation").attributions[:, 0]
    got = torch.tensor([[r[n] for n in names] for r in table])
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=0)  # the same computation
    assert (out / "feature_ablation_summary.png").is_file()


def test_feature_names_go_from_the_header_to_the_sidecar_and_the_chart_labels(
    linear_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from salience.tabular_plots import chart_titles

    header = ["id", "amount (€)", "âge", "fee, net"]  # a text column, and names to keep as given
    values = [[2.0, -1.0, 0.5], [-0.25, 3.0, 1.0]]
    table = write_csv(tmp_path / "rows.csv", header, [[f"r{n}", *v] for n, v in enumerate(values)])
    out = tmp_path / "out"
    status, _, err = cli(
        capsys,
        "explain",
        str(table),
        "--model",
        str(linear_file),
        "--method",
        "gradient_x_input",
        "-o",
        str(out),
        "--quiet",
    )
    assert status == 0, err
    names = header[1:]  # the numeric columns, in file order
    assert list(read_csv(out / "rows_gradient_x_input.csv")[0])[3:] == names
    loaded = Explanation.load(out / "rows_gradient_x_input")
    assert list(loaded.feature_names) == names
    first = loaded.attributions[:, 0].double().numpy()
    np.testing.assert_allclose(first, np.array(values) * np.array(WEIGHTS[:3]), rtol=1e-6)
    figure = rows_figure(first, loaded.feature_names, chart_titles(loaded))
    for axis, row in zip(figure.axes, first, strict=True):
        shown = [label.get_text() for label in axis.get_yticklabels()]
        # bars from the bottom up: the largest |attribution| on top
        assert shown == [names[i] for i in np.argsort(np.abs(row), kind="stable")]
    assert [axis.get_title() for axis in figure.axes] == chart_titles(loaded)
    assert chart_titles(loaded)[0].startswith("row 1: ")
