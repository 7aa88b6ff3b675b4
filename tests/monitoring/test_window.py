import json

from pipeline.live.store import Capture, CaptureStore, StoreLimits, VariantAnswer
from pipeline.monitoring.window import read_window
from pipeline.settings import get_paths


def _capture(store: CaptureStore, request_id: str, at: float, body: str, classes: tuple[int, ...] | None) -> None:
    store.add(Capture(request_id, at, "stable", "/v1/models/spam:predict", body, None,
                      VariantAnswer(classes) if classes else VariantAnswer(error="down"), VariantAnswer((0,))))


def test_a_window_reads_rest_and_grpc_bodies_and_counts_what_it_cannot_read(tmp_path) -> None:
    paths = get_paths(tmp_path)
    with CaptureStore.for_model("spam", paths, StoreLimits(max_input_bytes=200)) as store:
        _capture(store, "rest", 10.0, json.dumps({"instances": ["cheap pills"]}), (1,))
        _capture(store, "grpc", 11.0, json.dumps({"inputs": {"text": ["team meeting", "lunch"]}}), (0, 0))
        _capture(store, "big", 12.0, json.dumps({"instances": ["x" * 500]}), (0,))  # kept as an excerpt only
        _capture(store, "failed", 13.0, json.dumps({"instances": ["hello"]}), None)
        _capture(store, "late", 20.0, json.dumps({"instances": ["after the window"]}), (0,))
        with store.transaction() as tx:
            tx.add_label("rest", 1, 14.0, "test")
            tx.add_label("grpc", 0, 14.0, "test")  # a batch: its one label is left out of accuracy

    window = read_window("spam", since=10.0, until=20.0, limit=100, paths=paths)
    assert window.requests == 4 and window.instances == ["cheap pills", "team meeting", "lunch", "hello"]
    assert window.predicted == [1, 0, 0, -1] and window.predicted_counts() == {"1": 1, "0": 2}
    assert window.labelled == [(1, 1)] and window.correct == 1
    assert window.skipped == {"body not kept": 1, "no stable answer": 1}
    assert (window.first_at, window.last_at) == (10.0, 13.0)
    assert read_window("spam", since=10.0, until=20.0, limit=2, paths=paths).requests == 2  # the newest
