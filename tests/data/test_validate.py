"""Data validation: clean data passes with docs; each kind of broken data fails, named plainly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataValidationConfig
from pipeline.data.dataset import Examples, Snapshot
from pipeline.data.tidy import class_balance_table, example_table, text_features
from pipeline.data.validate import validate_snapshot, validate_splits
from pipeline.errors import ValidationFailed


def _failure(splits: dict[str, Examples], config: DataValidationConfig, docs_dir: Path) -> str:
    """Validate data that must fail; return the error message."""
    with pytest.raises(ValidationFailed) as caught:
        validate_splits(splits, config, docs_dir)
    return str(caught.value)


def _replace(examples: Examples, x: np.ndarray | None = None, y: np.ndarray | None = None) -> Examples:
    return Examples(examples.kind, examples.x if x is None else x, examples.y if y is None else y, examples.class_names)


# --- the tidy table ---------------------------------------------------------------------------


def test_example_table_keeps_out_of_range_pixels_uncast(image_splits):
    x = image_splits["train"].x.astype(np.int16)
    x[0, 0, 0], x[1, 5, 5] = 300, -1
    table = example_table({"train": _replace(image_splits["train"], x=x)})
    assert list(table.columns) == [
        "split", "label", "label_name", "example_sha", "pixel_min", "pixel_max", "pixel_mean", "ink_fraction",
    ]
    assert table.loc[0, "pixel_max"] == 300
    assert table.loc[1, "pixel_min"] == -1


def test_example_sha_is_the_same_for_equal_pixels_of_other_dtypes(image_splits):
    train = image_splits["train"]
    as_uint8 = example_table({"a": train})["example_sha"]
    as_float = example_table({"a": _replace(train, x=train.x.astype(np.float32))})["example_sha"]
    assert (as_uint8 == as_float).all()
    assert as_uint8.is_unique


def test_text_features_match_a_per_character_count():
    texts = ["Hello, world 42!", "", "  \t\n", "ünïcödé ½ ٣\x00\u200b", None]
    features = text_features(np.array(texts, dtype=object))
    assert features["length"][:4].tolist() == [16, 0, 4, 13]
    assert np.isnan(features["length"][4]) and np.isnan(features["alpha_fraction"][4])
    expected = {"alpha_fraction": str.isalpha, "digit_fraction": str.isdigit, "whitespace_fraction": str.isspace,
                "nonprintable_fraction": lambda c: not (c.isprintable() or c.isspace())}
    for name, is_class in expected.items():
        want = [sum(map(is_class, t)) / len(t) for t in (texts[0], texts[2], texts[3])]
        assert features[name][[0, 2, 3]] == pytest.approx(want), name
        assert features[name][1] == 0  # an empty text has no characters of any class


def test_class_balance_table_counts_missing_classes_as_zero(image_splits):
    train = image_splits["train"]
    only_zeros = _replace(train, y=np.zeros(len(train), dtype=np.int64))
    balance = class_balance_table(example_table({"train": only_zeros}), train.class_names, ["train"])
    assert balance["count"].tolist() == [len(train), 0, 0, 0]
    assert balance["fraction"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_example_table_of_ten_thousand_images_has_a_row_each(image_maker):
    images = image_maker(10_000, 4, seed=0)
    table = example_table({"train": images})
    assert len(table) == 10_000 and set(table["split"]) == {"train"}


# --- passing --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "text"])
def test_clean_data_passes_quietly_and_writes_docs_and_report(kind, request, validation_config, tmp_path, capfd):
    splits = request.getfixturevalue(f"{kind}_splits")
    report = validate_splits(splits, validation_config, tmp_path / "docs")
    assert capfd.readouterr() == ("", "")  # no progress bars or GX chatter
    assert report.success and report.failures == []
    assert report.docs_path == tmp_path / "docs" / "index.html" and report.docs_path.is_file()
    assert "examples_suite" in report.docs_path.read_text()
    written = json.loads((tmp_path / "docs" / "validation.json").read_text())
    assert written["success"] is True
    assert written["statistics"]["rows"] == 120
    assert written["statistics"]["split_rows"] == {"train": 80, "val": 20, "test": 20}


def test_validate_snapshot_writes_under_the_snapshot(image_splits, validation_config, tmp_path):
    for name, examples in image_splits.items():
        np.savez(tmp_path / f"{name}.npz", x=examples.x, y=examples.y)
    manifest = {"sha256": "0" * 64, "kind": "image", "class_names": list(image_splits["train"].class_names)}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = validate_snapshot(Snapshot.open(tmp_path), validation_config)
    assert report.docs_path == tmp_path / "validation" / "index.html" and report.docs_path.is_file()
    assert report.statistics["split_rows"] == {"train": 80, "val": 20, "test": 20}
    assert (tmp_path / "validation" / "validations" / "examples_suite" / "snapshot-000000000000").is_dir()


def test_no_docs_dir_writes_nothing(image_splits, validation_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = validate_splits(image_splits, validation_config)
    assert report.success and report.docs_path is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ten_thousand_images_validate(image_maker, validation_config, tmp_path):
    """The full-size case passes and writes its Data Docs; its time is bench/build.py's figure, not a test's."""
    images = image_maker(10_000, 4, seed=0)
    splits = {"train": images.subset(np.arange(8000)), "test": images.subset(np.arange(8000, 10_000))}
    report = validate_splits(splits, validation_config, tmp_path)
    assert report.success
    assert report.docs_path is not None and report.docs_path.exists()


# --- failing, each with a message naming the problem --------------------------------------------


def test_out_of_range_pixels_fail(image_splits, validation_config, tmp_path):
    x = image_splits["train"].x.astype(np.int16)
    x[0, 3, 3] = x[1, 3, 3] = 300
    x[2, 0, 0] = -1
    image_splits["train"] = _replace(image_splits["train"], x=x)
    message = _failure(image_splits, validation_config, tmp_path)
    assert "pixel_max: values must be between 0 and 255, found 300 (2 rows)" in message
    assert "pixel_min: values must be between 0 and 255, found -1 (1 row)" in message


def test_images_scaled_to_unit_range_fail_on_mean(image_splits, validation_config, tmp_path):
    scaled = {name: _replace(e, x=e.x / 255.0) for name, e in image_splits.items()}
    message = _failure(scaled, validation_config, tmp_path)
    assert "pixel_mean: the mean pixel must be between 10.0 and 100.0, found 0." in message


def test_blank_images_fail(image_splits, validation_config, tmp_path):
    x = image_splits["val"].x.copy()
    x[:3] = 0
    image_splits["val"] = _replace(image_splits["val"], x=x)
    message = _failure(image_splits, validation_config, tmp_path)
    assert "ink_fraction: share of bright pixels must be between 0.01 and 0.6" in message
    assert "found 0 (3 rows)" in message


def test_nan_pixels_fail_as_nulls(image_splits, validation_config, tmp_path):
    x = image_splits["test"].x.astype(np.float32)
    x[4, 10, 10] = np.nan
    image_splits["test"] = _replace(image_splits["test"], x=x)
    message = _failure(image_splits, validation_config, tmp_path)
    assert "pixel_min: values must not be null or NaN, found 1 null" in message


def test_unknown_label_fails(image_splits, validation_config, tmp_path):
    y = image_splits["train"].y.copy()
    y[7] = 11
    image_splits["train"] = _replace(image_splits["train"], y=y)
    assert "label: unknown label 11 (1 row)" in _failure(image_splits, validation_config, tmp_path)


def test_empty_and_blank_texts_fail(text_splits, validation_config, tmp_path):
    x = text_splits["train"].x.copy()
    x[0], x[1], x[2] = "", "", " \n\t "
    text_splits["train"] = _replace(text_splits["train"], x=x)
    message = _failure(text_splits, validation_config, tmp_path)
    assert "length: texts must have 1 to 500 characters, found 0 (2 rows)" in message
    assert "whitespace_fraction: texts must not be only whitespace, found 1 (1 row)" in message


def test_too_long_texts_fail(text_splits, validation_config, tmp_path):
    x = text_splits["val"].x.copy()
    x[0] = "spam " * 200
    text_splits["val"] = _replace(text_splits["val"], x=x)
    assert "length: texts must have 1 to 500 characters, found 1000 (1 row)" in _failure(
        text_splits, validation_config, tmp_path
    )


def test_missing_text_fails_as_null(text_splits, validation_config, tmp_path):
    x = text_splits["test"].x.copy()
    x[3] = None
    text_splits["test"] = _replace(text_splits["test"], x=x)
    message = _failure(text_splits, validation_config, tmp_path)
    assert "example_sha: values must not be null or NaN, found 1 null" in message
    assert "length: values must not be null or NaN" in message


def test_train_test_leak_fails(image_splits, validation_config, tmp_path):
    train, test = image_splits["train"], image_splits["test"]
    leaked = _replace(test, x=np.concatenate([test.x, train.x[:3]]), y=np.concatenate([test.y, train.y[:3]]))
    image_splits["test"] = leaked
    message = _failure(image_splits, validation_config, tmp_path)
    assert "example_sha: each example must appear once, found 3 examples shared between splits train/test" in message


def test_too_few_rows_fail(image_splits, tmp_path):
    config = DataValidationConfig(min_rows=1000, min_class_fraction=0.1, max_class_fraction=0.6)
    message = _failure(image_splits, config, tmp_path)
    assert "rows: at least 1000 rows in all, found 120" in message
    assert "split_rows: each split needs at least 50 rows, found val=20, test=20" in message


def test_class_imbalance_fails_naming_split_and_class(text_splits, validation_config, tmp_path):
    train = text_splits["train"]
    y = train.y.copy()
    y[:70] = 1  # only the 5 even rows of 70..79 stay ham
    text_splits["train"] = _replace(train, y=y)
    message = _failure(text_splits, validation_config, tmp_path)
    assert "fraction: each class must be 10% to 60% of its split, found train/ham=0.062, train/spam=0.938" in message


def test_failure_writes_report_and_docs_before_raising(image_splits, validation_config, tmp_path):
    y = image_splits["val"].y.copy()
    y[:] = 0
    image_splits["val"] = _replace(image_splits["val"], y=y)
    message = _failure(image_splits, validation_config, tmp_path)
    assert "val/zero=1.000, val/one=0.000" in message
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["success"] is False
    (failure,) = report["failures"]
    assert failure["expectation"] == "expect_column_values_to_be_between" and failure["column"] == "fraction"
    assert failure["kwargs"] == {"min_value": 0.1, "max_value": 0.6}
    assert failure["observed"]["unexpected_count"] == 4
    assert (tmp_path / "index.html").is_file()
