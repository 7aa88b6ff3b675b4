"""Ingesting new labelled data: refusals, dedupe, atomic commits, the retrain threshold and the raw-data event,
live labels ingested once, and prepare training on the newest data version without moving old examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import parse_model_config
from pipeline.data import landing, parts
from pipeline.data.dataset import SPLITS
from pipeline.data.landing import IngestRefused, ingest_file, ingest_live_labels
from pipeline.data.prepare import prepare_snapshot
from pipeline.data.snapshot import example_digests
from pipeline.settings import Paths
from tests.data.conftest import make_images, make_texts

_CLASSES = ["zero", "one", "two"]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A home with an image model on a 300-example npz source (prepared), and no Airflow configured."""
    for name in ("PIPELINE_AIRFLOW_API_URL", "AIRFLOW__API__PORT"):
        monkeypatch.delenv(name, raising=False)
    base = make_images(300, 3, seed=100)
    source = tmp_path / "base.npz"
    np.savez(source, x=base.x, y=base.y)
    config = parse_model_config({
        "name": "digits", "task": "image_classification", "class_names": _CLASSES,
        "data": {"source": "npz", "path": str(source), "retrain_min_new_examples": 100},
        "train": {"architecture": "softmax"},
    })
    paths = Paths(tmp_path / "home")
    prepare_snapshot(config, paths)
    return config, paths, base


def _npz(path, examples, **override):
    arrays = {"x": examples.x, "y": examples.y, **override}
    np.savez(path, **arrays)
    return path


def _ingest(world, path, **kwargs):
    config, paths, _ = world
    return ingest_file(config.name, path, paths=paths, config=config, **kwargs)


def _committed(world):
    config, paths, _ = world
    return parts.committed_parts(paths.data_dir, config.name)


def test_an_ingested_file_becomes_a_data_version_and_prepare_trains_on_it(world, tmp_path):
    config, paths, base = world
    before = prepare_snapshot(config, paths)
    new = make_images(60, 3, seed=7)
    mixed = type(new)("image", np.concatenate([new.x, base.x[:5]]), np.concatenate([new.y, base.y[:5]]), new.class_names)

    result = _ingest(world, _npz(tmp_path / "new.npz", mixed))

    assert (result.new_examples, result.duplicates, result.refused) == (60, 5, False)
    assert result.parts == 1 and result.ingested_total == 60 and result.total_examples == 360
    manifest = json.loads((paths.data_dir / "digits" / "versions" / f"{result.data_version}.json").read_text())
    assert [p["sha256"] for p in manifest["parts"]] == [result.part]
    assert manifest["parts"][0]["examples"] == 60 and manifest["parts"][0]["origin"]["name"] == "new.npz"

    after = prepare_snapshot(config, paths)
    assert after.sha256 != before.sha256 and after.manifest["data_version"] == result.data_version
    assert [p["added"] for p in after.manifest["parts"]] == [60]
    assert sum(after.manifest["counts"][s]["total"] for s in SPLITS) == 360
    for name in SPLITS:  # old examples stay in their split; new ones are spread over all three
        old = set(example_digests(before.split(name)))
        assert old <= set(example_digests(after.split(name)))
    splits = {name: set(example_digests(after.split(name))) for name in SPLITS}
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["val"])
    assert after.manifest["counts"]["test"]["total"] > before.manifest["counts"]["test"]["total"]
    assert prepare_snapshot(config, paths).path == after.path  # unchanged data: the same snapshot again


def _refusal(world, path, match, **kwargs):
    with pytest.raises(IngestRefused, match=match):
        _ingest(world, path, **kwargs)
    assert _committed(world) == []  # nothing of a refused file is visible
    config, paths, _ = world
    landing_dir = parts.landing_dir(paths.data_dir, config.name)
    assert not [p for p in landing_dir.iterdir() if p.name.startswith(".tmp-")]


def test_bad_schema_is_refused_whole(world, tmp_path):
    new = make_images(20, 3, seed=1)
    np.savez(tmp_path / "no_y.npz", x=new.x)
    _refusal(world, tmp_path / "no_y.npz", r"missing arrays \['y'\]")
    _refusal(world, _npz(tmp_path / "shape.npz", new, x=new.x[:, :20, :20]), r"expected \(n, 28, 28\)")
    _refusal(world, _npz(tmp_path / "text.csv", new), "takes .npz files")


def test_a_label_outside_the_class_set_is_refused_whole(world, tmp_path):
    new = make_images(30, 3, seed=2)
    labels = new.y.copy()
    labels[4] = 7
    _refusal(world, _npz(tmp_path / "labels.npz", new, y=labels), r"unknown label 7 \(1 row\)")


def test_pixels_out_of_range_are_refused_whole(world, tmp_path):
    new = make_images(30, 3, seed=3)
    x = new.x.astype(np.int16)
    x[0, 10, 10] = 300
    _refusal(world, _npz(tmp_path / "pixels.npz", new, x=x), "pixel_max: values must be between 0 and 255")


def test_scaled_pixels_are_refused_whole(world, tmp_path):
    new = make_images(30, 3, seed=3)
    _refusal(world, _npz(tmp_path / "scaled.npz", new, x=new.x / 255.0), "hold fractions")


def test_a_duplicate_file_and_a_file_of_known_examples_are_refused(world, tmp_path):
    config, paths, base = world
    path = _npz(tmp_path / "new.npz", make_images(40, 3, seed=4))
    first = _ingest(world, path)
    with pytest.raises(IngestRefused, match="duplicate file, already ingested as part"):
        _ingest(world, path)
    with pytest.raises(IngestRefused, match="nothing new, all 10 example"):
        _ingest(world, _npz(tmp_path / "old.npz", base.subset(np.arange(10))))
    assert [p.sha256 for p in _committed(world)] == [first.part]


def test_a_half_written_file_is_refused(world, tmp_path):
    data = _npz(tmp_path / "whole.npz", make_images(40, 3, seed=5)).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _refusal(world, tmp_path / "cut.npz", "not a complete .npz")
    (tmp_path / "next.npz.part").write_bytes(data)
    _refusal(world, tmp_path / "next.npz.part", "still being written")


def test_a_file_that_changes_while_read_is_refused(world, tmp_path, monkeypatch):
    path = _npz(tmp_path / "growing.npz", make_images(40, 3, seed=5))
    real_read = type(path).read_bytes

    def read_then_grow(self):
        data = real_read(self)
        if self == path:
            with open(path, "ab") as handle:
                handle.write(b"more")
        return data

    monkeypatch.setattr(type(path), "read_bytes", read_then_grow)
    _refusal(world, path, "changed while it was read")


@pytest.mark.parametrize("crash_in", ["write_split", "commit_parts"])
def test_a_crash_mid_ingest_leaves_nothing_visible(world, tmp_path, monkeypatch, crash_in):
    config, paths, _ = world
    before = prepare_snapshot(config, paths)
    path = _npz(tmp_path / "new.npz", make_images(40, 3, seed=6))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(parts if crash_in == "write_split" else landing, crash_in, crash)
    with pytest.raises(OSError, match="simulated"):
        _ingest(world, path)
    assert _committed(world) == [] and prepare_snapshot(config, paths).path == before.path

    monkeypatch.undo()
    result = _ingest(world, path)  # the same file again, once the fault is gone: taken, and no leftovers
    assert result.new_examples == 40 and [p.sha256 for p in _committed(world)] == [result.part]
    landing_dir = parts.landing_dir(paths.data_dir, config.name)
    assert not [p for p in landing_dir.iterdir() if p.name.startswith(".tmp-")]


class _FakeAirflow:
    def __init__(self):
        self.events = []

    def post(self, name, uri, extra, paths=None):
        self.events.append((name, uri, extra))
        return {"id": len(self.events), "extra": extra}


def test_the_event_waits_for_the_threshold_and_counts_what_is_new(world, tmp_path, monkeypatch):
    import pipeline.airflow_rest as airflow_rest

    config, paths, _ = world
    first = _ingest(world, _npz(tmp_path / "a.npz", make_images(60, 3, seed=11)))
    assert not first.announced and first.pending_examples == 60
    assert "60 ingested example(s) since the last announced data version, 100 needed" in first.reason

    second = _ingest(world, _npz(tmp_path / "b.npz", make_images(60, 3, seed=12)))
    assert not second.announced and second.pending_examples == 120
    assert "Airflow is not configured" in second.reason and "next run of digits_release" in second.reason

    airflow = _FakeAirflow()
    monkeypatch.setattr(airflow_rest, "api_access", lambda paths=None: airflow_rest.ApiAccess("http://airflow"))
    monkeypatch.setattr(airflow_rest, "post_asset_event", airflow.post)
    third = _ingest(world, _npz(tmp_path / "c.npz", make_images(30, 3, seed=13)))
    assert third.announced and third.pending_examples == 0
    [(name, uri, extra)] = airflow.events
    assert (name, uri) == ("digits_raw_data", "pipeline://raw-data/digits")
    assert extra["new_examples"] == 150 and extra["ingested_now"] == 30 and extra["parts"] == 3
    assert extra["data_version"] == third.data_version and extra["total_examples"] == 450

    fourth = _ingest(world, _npz(tmp_path / "d.npz", make_images(20, 3, seed=14)))
    assert not fourth.announced and fourth.pending_examples == 20 and len(airflow.events) == 1


# ---- live labels --------------------------------------------------------------------------------------------


def _capture(store, request_id, body, batch_size=1):
    from pipeline.live.store import Capture, VariantAnswer

    store.add(Capture(request_id, 1.0, "stable", "/v1/models/digits:predict", body, batch_size,
                      VariantAnswer(classes=(0,)), VariantAnswer(classes=(0,))))


def _label(store, request_id, label):
    with store.transaction() as tx:
        tx.add_label(request_id, label, 2.0, "test")


def _body(image):
    return json.dumps({"instances": [(image.reshape(-1).astype(np.float32) / np.float32(255)).tolist()]})


def test_live_labels_are_ingested_once_and_what_cannot_be_an_example_is_counted(world, monkeypatch):
    from pipeline.live.store import CaptureStore, StoreLimits, capture_db_path

    config, paths, _ = world
    live = make_images(12, 3, seed=21)
    store = CaptureStore(capture_db_path("digits", paths), StoreLimits(max_input_bytes=12_000))
    for i in range(10):
        _capture(store, f"r{i}", _body(live.x[i]))
        _label(store, f"r{i}", int(live.y[i]))
    _capture(store, "unlabelled", _body(live.x[10]))
    _capture(store, "batch", json.dumps({"instances": [[0.0] * 784, [0.0] * 784]}), batch_size=2)
    _label(store, "batch", 1)
    _capture(store, "big", json.dumps({"instances": [[0.5] * 784], "padding": "x" * 20_000}))
    _label(store, "big", 1)
    _capture(store, "bad-label", _body(live.x[11]))
    _label(store, "bad-label", 9)

    first = ingest_live_labels("digits", paths=paths, config=config)
    assert (first.new_examples, first.origin, first.refused) == (10, "live", False)
    assert first.skipped == {"batched": 1, "inputs_not_kept": 1, "unknown_label": 1}
    part = _committed(world)[0]
    assert np.array_equal(np.sort(part.examples().y), np.sort(live.y[:10]))
    assert set(example_digests(part.examples())) == set(example_digests(live.subset(np.arange(10))))

    again = ingest_live_labels("digits", paths=paths, config=config)
    assert again.new_examples == 0 and again.reason.startswith("no new labelled live requests")
    assert len(_committed(world)) == 1

    _label(store, "unlabelled", int(live.y[10]))  # a label that came late is taken by the next ingest
    late = ingest_live_labels("digits", paths=paths, config=config)
    assert late.new_examples == 1 and late.parts == 2 and late.ingested_total == 11
    store.close()


def test_live_labels_without_a_capture_store_say_so(world):
    config, paths, _ = world
    result = ingest_live_labels("digits", paths=paths, config=config)
    assert (result.new_examples, result.announced, result.data_version) == (0, False, None)
    assert "no capture store" in result.reason


# ---- texts --------------------------------------------------------------------------------------------------


@pytest.fixture
def text_world(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    base = make_texts(200, seed=1)
    source = tmp_path / "base.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": base.class_names[y]}) + "\n"
                              for t, y in zip(base.x, base.y, strict=True)))
    config = parse_model_config({
        "name": "mail", "task": "text_classification", "class_names": ["ham", "spam"],
        "data": {"source": "jsonl", "path": str(source)}, "train": {"architecture": "text_cnn"},
    })
    return config, Paths(tmp_path / "home"), base


def test_text_files_label_outside_the_set_half_written_and_good(text_world, tmp_path):
    config, paths, _ = text_world
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello there friend,ham\nwin money now,phishing\n")
    with pytest.raises(IngestRefused, match=r"labels \['phishing'\] are not in class_names"):
        ingest_file("mail", bad, paths=paths, config=config)
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"text": "lunch today at noon", "label": "ham"}\n{"text": "free mon')
    with pytest.raises(IngestRefused, match="half-written"):
        ingest_file("mail", cut, paths=paths, config=config)
    assert str(bad) in str(pytest.raises(IngestRefused, ingest_file, "mail", bad, paths=paths, config=config).value)

    good = tmp_path / "good.csv"
    new = make_texts(30, seed=9)
    good.write_text("text,label\n" + "".join(f"{t},{new.class_names[y]}\n" for t, y in zip(new.x, new.y, strict=True)))
    result = ingest_file("mail", good, paths=paths, config=config)
    assert result.new_examples == 30 and result.total_examples is None  # the source was never prepared here
    snapshot = prepare_snapshot(config, paths)
    assert sum(snapshot.manifest["counts"][s]["total"] for s in SPLITS) == 230


def test_ingests_at_the_same_time_both_count(world, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files = [_npz(tmp_path / f"{i}.npz", make_images(25, 3, seed=30 + i)) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda path: _ingest(world, path), files))
    assert sorted(r.new_examples for r in results) == [25, 25]
    assert {p.sha256 for p in _committed(world)} == {r.part for r in results}  # no commit lost the other's part
