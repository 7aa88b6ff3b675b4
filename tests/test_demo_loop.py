"""The closed-loop demo's own pieces: the asset-triggered run, live accuracy by group, recovery, window figures."""

import json
from datetime import UTC, datetime

import numpy as np

from pipeline.data.dataset import Examples
from pipeline.data.snapshot import example_digests
from pipeline.demo_loop import (
    LoopReport,
    find_asset_triggered_run,
    group_accuracy,
    live_answers,
    pooled_accuracy,
    recovered,
    window_accuracy,
)
from pipeline.live.store import Capture, CaptureStore, StoreLimits, VariantAnswer
from pipeline.release.registry import MonitorRun
from pipeline.settings import get_paths
from pipeline.steps import resolve_config


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _run(run_id: str, run_type: str, queued_at: float) -> dict:
    return {"dag_run_id": run_id, "run_type": run_type, "queued_at": _iso(queued_at), "state": "running"}


def test_the_asset_triggered_run_is_found_and_a_manual_or_older_one_is_not() -> None:
    runs = [_run("manual", "manual", 1000.0), _run("old_asset", "asset_triggered", 500.0),
            _run("later_asset", "asset_triggered", 1200.0), _run("asset", "asset_triggered", 1100.0),
            _run("scheduled", "scheduled", 1050.0)]
    assert find_asset_triggered_run(runs, after=900.0)["dag_run_id"] == "asset"  # the first one after
    assert find_asset_triggered_run(runs, after=1300.0) is None
    assert find_asset_triggered_run([_run("manual", "manual", 2000.0)], after=0.0) is None
    no_queue = {"dag_run_id": "a", "run_type": "asset_triggered", "queued_at": None, "run_after": _iso(1500.0)}
    assert find_asset_triggered_run([no_queue], after=1400.0)["dag_run_id"] == "a"  # run_after when not queued


def test_group_accuracy_splits_unshifted_and_shifted_seen_and_unseen() -> None:
    answers = [("base1", 1, 1), ("base2", 2, 3),  # unshifted: 1 of 2 right
               ("seen1", 4, 4), ("seen2", 5, 5),  # shifted, trained on: both right
               ("new1", 6, 6), ("new2", 7, 0), ("new3", 8, 0)]  # shifted, never trained on: 1 of 3
    groups = group_accuracy(answers, base_digests={"base1", "base2"}, train_digests={"seen1", "seen2", "base1"})
    assert groups["overall"] == {"n": 7, "accuracy": round(4 / 7, 4)}
    assert groups["unshifted"] == {"n": 2, "accuracy": 0.5}
    assert groups["shifted"] == {"n": 5, "accuracy": 0.6}
    assert groups["shifted_seen"] == {"n": 2, "accuracy": 1.0}
    assert groups["shifted_unseen"] == {"n": 3, "accuracy": round(1 / 3, 4)}
    assert group_accuracy([], set(), set())["shifted_unseen"] == {"n": 0, "accuracy": None}


def test_recovered_is_within_one_point_of_before() -> None:
    assert recovered(0.98, 0.975) and recovered(0.98, 0.99)
    assert not recovered(0.98, 0.969)
    assert not recovered(None, 0.99) and not recovered(0.98, None)


def _monitor_run(accuracy: dict | None) -> MonitorRun:
    return MonitorRun(1, "mnist", 1, "r", datetime.now(UTC), None, 10.0, 300, 250, "ok", False, False, 0,
                      {"verdict": {"accuracy": accuracy}}, None, "")


def test_window_accuracy_reads_the_verdict() -> None:
    assert window_accuracy(_monitor_run({"labelled": 250, "accuracy": 0.9712, "expected": 0.98,
                                         "p_value": 0.3, "dropped": False})) == 0.9712
    assert window_accuracy(_monitor_run(None)) is None
    assert window_accuracy(_monitor_run({"labelled": 0, "accuracy": None})) is None


def test_the_report_times_are_measured_from_the_onset() -> None:
    report = LoopReport(started_at=0.0, onset_at=100.0, alarm_at=160.0, serving_at=520.0, alarm_windows=2)
    figures = report.as_dict()
    assert (figures["onset_to_alarm_s"], figures["alarm_to_serving_s"], figures["onset_to_serving_s"]) == \
        (60.0, 360.0, 420.0)
    assert LoopReport(onset_at=None).as_dict()["onset_to_alarm_s"] is None


def test_live_answers_are_the_labelled_one_instance_requests_with_their_digests(tmp_path) -> None:
    paths = get_paths(tmp_path)
    config = resolve_config("mnist")
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    digests = example_digests(Examples("image", images, np.array([1, 2, 3]), config.class_names, "test"))

    def body(image: np.ndarray) -> str:
        return json.dumps({"instances": [(image.reshape(-1).astype(np.float32) / np.float32(255)).tolist()]})

    with CaptureStore.for_model("mnist", paths, StoreLimits(max_input_bytes=20_000)) as store:
        for i, (at, stable) in enumerate([(10.0, 1), (11.0, 5), (12.0, 3)]):
            store.add(Capture(f"r{i}", at, "stable", "/v1/models/mnist:predict", body(images[i]), None,
                              VariantAnswer((stable,)), VariantAnswer(error="no canary")))
        store.add(Capture("late", 30.0, "stable", "/v1/models/mnist:predict", body(images[0]), None,
                          VariantAnswer((1,)), VariantAnswer(error="no canary")))
        with store.transaction() as tx:
            for request_id, label in (("r0", 1), ("r1", 2), ("late", 1)):  # r2 never got its label
                tx.add_label(request_id, label, 20.0, "test")

    answers = live_answers(paths, config, since=10.0, until=20.0)
    assert sorted(answers) == sorted([(digests[0], 1, 1), (digests[1], 5, 2)])


def _bench_loop():
    from tests.benches import load_bench

    return load_bench("loop")


def test_the_bench_meets_its_targets_only_when_fast_enough_and_recovered() -> None:
    bench = _bench_loop()
    figures = {"onset_to_serving_s": 540.0, "accuracy_before": 0.97, "accuracy_after": 0.962,
               "after": {"shifted_unseen": {"n": 40, "accuracy": 0.9}}}
    assert bench.targets_met(figures)
    assert not bench.targets_met({**figures, "onset_to_serving_s": 601.0})
    assert not bench.targets_met({**figures, "accuracy_after": 0.959})
    assert not bench.targets_met({**figures, "onset_to_serving_s": None})
    table = bench.render_table(figures)
    assert "NOT trained on" in table and "0.9000 (n=40)" in table and "targets met: True" in table


def test_pooled_accuracy_weights_each_window_by_its_labels() -> None:
    runs = [_monitor_run({"labelled": 300, "accuracy": 0.95}), _monitor_run({"labelled": 100, "accuracy": 0.99}),
            _monitor_run({"labelled": 0, "accuracy": None}), _monitor_run(None)]
    assert pooled_accuracy(runs) == 0.96
    assert pooled_accuracy([_monitor_run(None)]) is None
