"""Labels of a batch manifest reach the results table and the index page's label and correct
columns, also when pandas wrote the manifest (an integer column with a missing value is stored
as floats: ``3.0``)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from salience.runner.index import render_index
from salience.runner.inputs import collect_inputs, label_index
from salience.runner.results import table_rows
from salience.runner.work import DONE

CLASS_NAMES = [f"class {i}" for i in range(10)]
_CELLS = re.compile(r'<td class="label">(.*?)</td><td class="correct">(.*?)</td>')


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_pandas_manifest_fills_the_label_and_correct_columns(tmp_path, suffix):
    names = ["a.png", "b.png", "c.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")  # only the paths are read here
    table = pd.DataFrame({"path": names, "label": [3, 5, None]})  # pandas makes it 3.0, 5.0, NaN
    manifest = tmp_path / f"manifest{suffix}"
    if suffix == ".csv":
        table.to_csv(manifest, index=False)
    else:
        table.to_parquet(manifest)
    items = collect_inputs(manifest)
    labels = {item.key: label_index(item.label, CLASS_NAMES, item) for item in items}
    assert list(labels.values()) == [3, 5, None]
    records = {
        item.key: {"status": DONE, "predicted": 3, "predicted_class": "class 3", "probability": 0.9}
        for item in items
    }
    rows = table_rows(items, records, labels, CLASS_NAMES, methods=["gradient"], auc=False)
    assert [row["correct"] for row in rows] == [True, False, None]
    page = render_index(rows, methods=["gradient"], model="net", auc=False)
    assert _CELLS.findall(page) == [("class 3", "✓"), ("class 5", "✗"), ("", "")]
    assert "1 of 2 correct" in page


@pytest.mark.parametrize("label", ["3.5", "10.0", "-1.0", "nan"])
def test_a_label_that_is_no_class_index_is_refused(tmp_path, label):
    from salience.errors import InvalidInputError
    from salience.runner.inputs import BatchItem

    with pytest.raises(InvalidInputError, match="fix the manifest's label column"):
        label_index(label, CLASS_NAMES, BatchItem("a", "a.png", label))
