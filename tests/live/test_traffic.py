"""Synthetic live traffic (``pipeline traffic``): the spec and where it may point, the examples it sends, pacing,
the label share, the feedback sender, the report's figures on fake clients; then (slow) real runs: straight to an
embedded TF Serving, and through the nginx proxy with its mirror to a real capture service taking the labels.

The served model is ``digits``: a template classifier that reads the synthetic digit ``k`` of tests/conftest.py as
``k`` (tests/release/core_world.py), version 1 labelled ``stable`` and version 2 (same classes) ``canary``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound
from pipeline.live.endpoints import LiveEndpoints
from pipeline.live.store import in_sample
from pipeline.live.traffic import (
    APIS,
    FeedbackSender,
    HeldOut,
    TrafficSpec,
    api_of,
    check_endpoints,
    example_order,
    failure_kind,
    is_loopback,
    label_selected,
    load_held_out,
    mixed_order,
    pace_requests,
    predicted_class,
    run_traffic,
)
from pipeline.serving.client import NO_RETRY, PredictAnswer, ServingClient
from pipeline.settings import Paths, get_paths
from pipeline.wire.status import ServingError
from tests.conftest import write_image_snapshot

MODEL = "digits"
_DEADLINE_S = 120.0  # servers import TensorFlow; the 2 shared cores may be busy
_LOCAL = "http://127.0.0.1:8501"


def spec(**fields: Any) -> TrafficSpec:
    values: dict[str, Any] = {"model": MODEL, "rest_url": _LOCAL, "grpc_target": "127.0.0.1:8500",
                              "feedback_url": "http://127.0.0.1:8701", "rps": 10, "duration_s": 1}
    return TrafficSpec(**{**values, **fields})


# ---- the spec -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("rps", 0), ("rps", -1), ("rps", 500.5), ("rps", float("nan")), ("rps", "10"),
    ("duration_s", 0), ("duration_s", 3601), ("label_delay_s", -0.1), ("label_delay_s", 601),
    ("label_share", 1.5), ("label_share", -0.01), ("max_in_flight", 0), ("max_in_flight", 257),
    ("max_in_flight", 2.5), ("timeout_s", 0), ("apis", ()), ("apis", ("rest", "rest")), ("apis", ("http",)),
    ("rest_url", None), ("rest_url", "127.0.0.1:8501"), ("rest_url", "ftp://127.0.0.1:8501"),
    ("rest_url", "http://127.0.0.1:99999"), ("rest_url", "http://127.0.0.1:8501/v1/models"),
    ("grpc_target", None), ("grpc_target", "127.0.0.1"), ("grpc_target", "http://127.0.0.1:8500"),
    ("feedback_url", "capture:8701"), ("model", ""), ("model", "../etc"), ("model", "a/b"),
    ("signature_name", ""), ("shift_share", 1.5), ("shift_share", -0.1),
])
def test_a_bad_value_is_a_config_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"traffic {field}"):
        spec(**{field: value})


def test_a_good_spec_and_its_request_count() -> None:
    assert spec(rps=10, duration_s=1).count == 10
    assert spec(rps=0.1, duration_s=1).count == 1  # at least one request
    assert spec(rps=500, duration_s=3600).count == 1_800_000  # the bound
    only_grpc = spec(apis=("grpc",), rest_url=None, feedback_url=None)
    assert only_grpc.apis == ("grpc",) and only_grpc.feedback_url is None
    assert spec(grpc_target="[::1]:8500").grpc_target == "[::1]:8500"


def test_loopback_means_this_machine_without_resolving_names() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "example.com", "127.0.0.1.nip.io", "::", "192.168.1.1"):
        assert not is_loopback(host), host


def test_endpoints_must_be_loopback_or_exactly_the_profiles() -> None:
    production = LiveEndpoints(rest_url="http://10.1.2.3:8501", grpc_target="10.1.2.3:8500",
                               capture_url="http://10.1.2.4:8701", prometheus_url="http://10.1.2.3:9090")
    check_endpoints(spec(), None)  # loopback everywhere
    check_endpoints(spec(rest_url="http://[::1]:8501", grpc_target="localhost:8500"), None)
    check_endpoints(spec(rest_url="http://10.1.2.3:8501/", grpc_target="10.1.2.3:8500",
                         feedback_url="http://10.1.2.4:8701"), production)
    refused = [
        ("rest_url", spec(rest_url="http://10.1.2.3:8501"), None),  # the profile configures no traffic path
        ("rest_url", spec(rest_url="http://10.1.2.3:8502"), production),  # another port of that host
        ("rest_url", spec(rest_url="http://example.com:8501"), production),
        ("grpc_target", spec(grpc_target="10.1.2.4:8500"), production),
        ("feedback_url", spec(feedback_url="http://10.1.2.3:8701"), production),  # capture is on .4
    ]
    for name, refused_spec, configured in refused:
        with pytest.raises(ConfigError, match=f"{name} .* not allowed: point it at a loopback address"):
            check_endpoints(refused_spec, configured)
    # An API that is not used is not checked.
    check_endpoints(spec(apis=("grpc",), rest_url="http://10.9.9.9:1", feedback_url=None), None)


# ---- determinism: examples, APIs, label share ------------------------------------------------------------------


def test_the_example_order_is_a_seeded_shuffle_and_apis_alternate() -> None:
    order = example_order(50, seed=7)
    assert sorted(order.tolist()) == list(range(50))
    assert order.tolist() == example_order(50, seed=7).tolist()
    assert order.tolist() != example_order(50, seed=8).tolist()
    assert [api_of(seq, APIS) for seq in range(5)] == ["rest", "grpc", "rest", "grpc", "rest"]
    assert {api_of(seq, ("grpc",)) for seq in range(5)} == {"grpc"}


def test_the_label_share_is_deterministic_by_request_id() -> None:
    ids = [f"traffic-0badcafe-{seq}" for seq in range(10_000)]
    picked = [label_selected(request_id, 0.3) for request_id in ids]
    assert picked == [label_selected(request_id, 0.3) for request_id in ids]
    assert 2_800 <= sum(picked) <= 3_200  # a fixed hash: this never changes from run to run
    assert all(label_selected(request_id, 1.0) for request_id in ids)
    assert not any(label_selected(request_id, 0.0) for request_id in ids)
    # Not the capture service's own sample of the same ids (nor, by the salt, the proxy's split).
    captured = [in_sample(request_id, 0.3) for request_id in ids]
    assert sum(a and b for a, b in zip(picked, captured, strict=True)) < 0.5 * sum(picked)


# ---- pacing ---------------------------------------------------------------------------------------------------


def test_pacing_starts_every_request_once() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def send(seq: int) -> None:
        with lock:
            seen.append(seq)

    pacing = pace_requests(count=30, rps=500, give_up_after_s=600, max_in_flight=4, send=send)
    assert pacing.started == 30 and pacing.not_sent == 0
    assert sorted(seen) == list(range(30))


def test_a_request_that_cannot_start_on_time_is_late_not_a_slower_rate() -> None:
    def send(seq: int) -> None:
        if seq == 0:
            time.sleep(0.3)  # the only place in flight: 1-4 are due within 40 ms but start after this

    pacing = pace_requests(count=5, rps=100, give_up_after_s=600, max_in_flight=1, send=send)
    assert pacing.started == 5 and pacing.not_sent == 0
    assert pacing.late_starts >= 4


def test_requests_left_when_the_run_gives_up_are_not_sent() -> None:
    def send(seq: int) -> None:
        time.sleep(0.5)  # holds the only place past the give-up time

    pacing = pace_requests(count=5, rps=100, give_up_after_s=0.1, max_in_flight=1, send=send)
    assert (pacing.started, pacing.not_sent) == (1, 4)


def test_a_send_that_raises_is_not_swallowed() -> None:
    def send(seq: int) -> None:
        raise RuntimeError(f"bug in request {seq}")

    with pytest.raises(RuntimeError, match="bug in request"):
        pace_requests(count=3, rps=100, give_up_after_s=600, max_in_flight=2, send=send)


# ---- answers and failures -------------------------------------------------------------------------------------


def test_the_predicted_class_and_how_failures_are_counted() -> None:
    assert predicted_class({"classes": np.array([3]), "probabilities": np.eye(10)[[5]]}) == 3
    assert predicted_class({"probabilities": np.eye(10, dtype=np.float32)[[5]]}) == 5
    assert predicted_class({"y": np.array([2.5])}) is None
    assert failure_kind("rest", ServingError("NOT_FOUND", "no model", 404)) == "HTTP 404"
    assert failure_kind("rest", ServingError("UNAVAILABLE", "refused", None)) == "no answer (connection failed)"
    assert failure_kind("grpc", ServingError("PERMISSION_DENIED", "fenced")) == "PERMISSION_DENIED"
    assert failure_kind("grpc", DeadlineExceeded("slow")) == "DEADLINE_EXCEEDED"
    assert failure_kind("rest", ValueError("odd answer")) == "client error (ValueError)"


class _HeaderSession:
    """A requests-like session answering a predict with an ``X-Request-Id`` header; records what was sent."""

    def __init__(self) -> None:
        self.sent_headers: list[dict[str, str]] = []

    def request(self, method: str, url: str, data: Any = None, headers: Any = None, timeout: Any = None) -> Any:
        self.sent_headers.append(dict(headers or {}))
        response = requests.Response()
        response.status_code = 200
        if url.endswith("/metadata"):
            signature = {"inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"unknown_rank": True}}},
                         "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"unknown_rank": True}}}}
            body: Any = {"metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}
        else:
            body = {"predictions": [2.5]}
            response.headers["x-request-id"] = "answered-id"
        response._content = json.dumps(body).encode()
        return response

    def close(self) -> None:
        pass


def test_the_client_sends_a_request_id_and_reads_the_answers() -> None:
    session = _HeaderSession()
    client = ServingClient("http://127.0.0.1:1", retry=NO_RETRY, session=session)
    answer = client.predict_answer("m", instances=np.array([1.0], dtype=np.float32), request_id="mine-1")
    assert answer.request_id == "answered-id"
    assert answer.outputs["y"].tolist() == [2.5]
    assert session.sent_headers[0]["X-Request-Id"] == "mine-1"
    assert client.predict("m", instances=np.array([1.0], dtype=np.float32))["y"].tolist() == [2.5]
    assert "X-Request-Id" not in session.sent_headers[-1]  # none asked for, none sent


# ---- a whole run on fake clients ------------------------------------------------------------------------------


class FakeClient:
    """Predicts ``x % 3`` (REST) or always 0 (gRPC); gRPC fails for x == 7 and answers x == 4 without an id."""

    def __init__(self, api: str):
        self.api = api
        self.request_ids: list[str] = []
        self.closed = False
        self._lock = threading.Lock()

    def predict_answer(self, model: str, instances: Any = None, protocol: str = "rest", request_id: str | None = None,
                       **_: Any) -> PredictAnswer:
        assert model == MODEL and protocol == self.api and request_id is not None
        with self._lock:
            self.request_ids.append(request_id)
        x = int(np.asarray(instances).reshape(-1)[0])
        if self.api == "grpc" and x == 7:
            raise ServingError("UNAVAILABLE", "down")
        predicted = x % 3 if self.api == "rest" else 0
        answered = None if (self.api == "grpc" and x == 4) else request_id
        return PredictAnswer({"classes": np.array([predicted])}, answered)

    def close(self) -> None:
        self.closed = True


class RecordingClient:
    """Answers class 0 and keeps every instance it was sent."""

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []
        self._lock = threading.Lock()

    def predict_answer(self, model: str, instances: Any = None, request_id: str | None = None,
                       **_: Any) -> PredictAnswer:
        with self._lock:
            self.sent.append(np.asarray(instances).reshape(-1))
        return PredictAnswer({"classes": np.array([0])}, request_id)

    def close(self) -> None:
        pass


def test_a_shift_sends_its_share_of_the_digits_shifted_with_their_labels() -> None:
    from pipeline.monitoring.shifts import thicken

    digits = np.zeros((10, 784), dtype=np.float32)
    digits[:, 400] = 1.0  # one lit pixel: thickened, it lights its four neighbours
    examples = HeldOut(digits, np.arange(10), "ten dots")
    client = RecordingClient()
    report = run_traffic(spec(rps=400, duration_s=0.025, apis=("rest",), feedback_url=None, shift="thicken",
                              shift_share=0.3), examples=examples, clients={"rest": client})
    assert report.planned == 10 and "3 of them shifted (thicken)" in report.examples
    shifted = [x for x in client.sent if x.sum() == 5]
    assert len(shifted) == 3 and all(np.array_equal(x, thicken(digits[0])) for x in shifted)
    assert sum(x.sum() == 1 for x in client.sent) == 7


@pytest.mark.parametrize(("unshifted", "shifted", "share"), [(30, 10, 0.2), (7, 50, 0.2), (5, 3, 0.5), (0, 4, 1.0)])
def test_a_new_scanners_stream_sends_each_shifted_digit_once_per_cycle_at_its_share(
        unshifted: int, shifted: int, share: float) -> None:
    order = mixed_order(unshifted, shifted, share, seed=3)
    assert len(order) == max(shifted, round(shifted / share))
    from_scanner = order[order >= unshifted]
    assert sorted(from_scanner.tolist()) == list(range(unshifted, unshifted + shifted))  # each once, none missing
    others = order[order < unshifted]
    if unshifted:  # the usual stream cycles through whole shuffles: no digit twice before every one came once
        counts = Counter(others.tolist())
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == min(unshifted, len(others))
    assert np.array_equal(order, mixed_order(unshifted, shifted, share, seed=3))
    assert not np.array_equal(order, mixed_order(unshifted, shifted, share, seed=4)) or share == 1.0


@pytest.mark.parametrize(("unshifted", "shifted", "share", "message"),
                         [(10, 0, 0.2, "both sides"), (0, 10, 0.2, "both sides"), (10, 10, 0.0, "within"),
                          (10, 10, 1.5, "within")])
def test_a_mixed_stream_without_digits_on_a_side_or_a_share_is_refused(unshifted: int, shifted: int, share: float,
                                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mixed_order(unshifted, shifted, share, seed=0)


def test_the_snapshot_pool_sends_the_scanners_digits_shifted_beside_the_test_split_as_it_is() -> None:
    from pipeline.monitoring.shifts import translate

    test = HeldOut(np.zeros((8, 784), dtype=np.float32), np.zeros(8, dtype=np.int64), "eight blanks")
    digits = np.zeros((4, 784), dtype=np.float32)
    digits[np.arange(4), np.arange(4) * 28 + 100] = 1.0  # one lit pixel each, in different places
    pool = HeldOut(digits, np.array([1, 2, 3, 4]), "four dots")
    client = RecordingClient()
    run = spec(rps=400, duration_s=0.05, apis=("rest",), feedback_url=None, shift="translate", shift_share=0.2,
               shift_pool="snapshot")
    report = run_traffic(run, examples=test, clients={"rest": client}, pool=pool)
    assert report.planned == 20 and "each of 4 digits once per cycle" in report.examples
    lit = sorted(tuple(np.flatnonzero(x)) for x in client.sent if x.any())
    assert lit == sorted(tuple(np.flatnonzero(translate(d))) for d in digits)  # all four, shifted, once each
    assert sum(not x.any() for x in client.sent) == 16


def test_an_unknown_shift_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match="shift_pool must be one of test, snapshot"):
        spec(shift="translate", shift_pool="everything")


def test_an_unknown_shift_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ConfigError, match="unknown shift 'smudge'"):
        spec(shift="smudge")


def test_the_report_counts_what_each_api_did() -> None:
    examples = HeldOut(np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10) % 3, "ten numbers")
    clients = {"rest": FakeClient("rest"), "grpc": FakeClient("grpc")}
    run = spec(rps=400, duration_s=0.1, feedback_url=None, seed=5)
    report = run_traffic(run, examples=examples, clients=clients)

    order = example_order(10, seed=5)
    expected: dict[str, Counter[str]] = {"rest": Counter(), "grpc": Counter()}
    for seq in range(run.count):
        api, x = api_of(seq, APIS), int(order[seq % 10])
        figures = expected[api]
        figures["sent"] += 1
        if api == "grpc" and x == 7:
            figures["failed"] += 1
            continue
        figures["correct"] += int((x % 3 if api == "rest" else 0) == x % 3)
        figures["without_id"] += int(api == "grpc" and x == 4)
    assert report.planned == 40 and report.pacing.started == 40 and report.pacing.not_sent == 0
    by_api = {figures.api: figures for figures in report.apis}
    for api in APIS:
        figures, want = by_api[api], expected[api]
        assert figures.sent == want["sent"] == 20
        assert figures.ok == want["sent"] - want["failed"] == figures.judged
        assert figures.failed == ({"UNAVAILABLE": want["failed"]} if want["failed"] else {})
        assert figures.correct == want["correct"]
        assert figures.p50_ms is not None and figures.p95_ms is not None and figures.p50_ms <= figures.p95_ms
    assert by_api["rest"].accuracy == 1.0
    assert report.answers_without_request_id == expected["grpc"]["without_id"]
    assert report.answers_with_other_request_id == 0
    sent_ids = clients["rest"].request_ids + clients["grpc"].request_ids
    assert sorted(sent_ids) == sorted(f"{report.request_id_prefix}-{seq}" for seq in range(40))
    assert not clients["rest"].closed  # the caller's clients stay the caller's

    document = json.loads(json.dumps(report.as_dict()))
    assert document["failed"] == expected["grpc"]["failed"] and document["feedback"] is None
    text = "\n".join(report.summary_lines())
    assert "api" in text and "p95 ms" in text and "accuracy" in text
    rest_row = next(line for line in report.summary_lines() if line.startswith("rest "))
    assert rest_row.split()[1:4] == ["20", "20", "0"] and rest_row.split()[-1] == "1.0000"
    if expected["grpc"]["failed"]:
        assert f"FAILED over grpc: UNAVAILABLE x{expected['grpc']['failed']}" in text


# ---- the feedback sender --------------------------------------------------------------------------------------


class FakeCapture:
    """Answers feedback POSTs with scripted statuses (then 200: every item accepted); records what came when."""

    def __init__(self, *statuses: int):
        self.statuses = list(statuses)
        self.posts: list[tuple[float, list[dict[str, Any]]]] = []

    def __call__(self, url: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
        assert url == "http://127.0.0.1:1/feedback/digits"
        self.posts.append((time.monotonic(), list(items)))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return 200, {"counts": {"accepted": len(items)}, "results": []}
        return status, {"error": f"status {status}"}


def test_labels_go_after_their_delay_in_batches_and_a_busy_store_is_retried() -> None:
    capture = FakeCapture(503)
    sender = FeedbackSender("http://127.0.0.1:1/feedback/digits", delay_s=0.2, post=capture).start()
    added_at = time.monotonic()
    for seq in range(5):
        sender.add(f"r-{seq}", seq % 2)
    figures = sender.finish()
    assert figures.labels == 5 and figures.answers == {"accepted": 5} and figures.not_delivered == 0
    assert all(posted_at >= added_at + 0.2 for posted_at, _ in capture.posts)  # never before the delay
    delivered = [item for _, items in capture.posts[1:] for item in items]
    assert delivered == [{"request_id": f"r-{seq}", "label": seq % 2} for seq in range(5)]
    assert capture.posts[0][1] == capture.posts[1][1]  # the 503'd batch was sent again as it was


def test_labels_still_pending_past_the_drain_bound_are_not_delivered() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(url: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
        entered.set()
        release.wait(_DEADLINE_S)
        return 200, {"counts": {"accepted": len(items)}}

    sender = FeedbackSender("http://127.0.0.1:1/feedback/digits", delay_s=0.0, post=slow).start()
    sender.add("r-0", 1)
    assert entered.wait(_DEADLINE_S)  # r-0 is being posted, and the service hangs
    sender.add("r-1", 1)
    sender.add("r-2", 1)
    threading.Timer(0.2, release.set).start()
    figures = sender.finish(drain_s=0.0)  # the bound passes while r-0 is in flight
    assert (figures.labels, figures.answers, figures.not_delivered) == (3, {"accepted": 1}, 2)


@pytest.mark.parametrize("failure", ["status", "no answer"])
def test_labels_that_cannot_be_delivered_are_counted_with_the_reason(failure: str) -> None:
    def refuse(url: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
        if failure == "status":
            return 404, {"error": "digits is not captured here"}
        raise requests.ConnectionError("connection refused")

    sender = FeedbackSender("http://127.0.0.1:1/feedback/digits", delay_s=0.0, post=refuse).start()
    for seq in range(3):
        sender.add(f"r-{seq}", 1)
    figures = sender.finish()
    assert figures.labels == 3 and figures.not_delivered == 3 and not figures.answers
    assert figures.errors and ("404" in figures.errors[0] if failure == "status" else "no answer" in figures.errors[0])


# ---- the examples ---------------------------------------------------------------------------------------------


def _snapshot_in(paths: Paths, seed: int, mtime: float) -> Path:
    """A synthetic digits snapshot at ``data/digits/<sha>`` (as prepare writes it), its manifest dated ``mtime``."""
    staged = write_image_snapshot(paths.home / f"staged-{seed}", {"train": 10, "val": 10, "test": 30}, seed=seed)
    target = paths.data_dir / MODEL / staged.sha256
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.path.rename(target)
    os.utime(target / "manifest.json", (mtime, mtime))
    return target


def _trained_on(version_dir: Path, snapshot: Path) -> None:
    """Make the version directory's metadata name the snapshot it was trained on (as export writes it)."""
    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "metadata.json").write_text(json.dumps({"data_snapshot_sha256": snapshot.name}))


def test_examples_are_the_stable_versions_test_split_else_the_newest_snapshots(tmp_path: Path) -> None:
    from pipeline.data.dataset import Snapshot

    paths = get_paths(tmp_path)
    with pytest.raises(NotFound, match="run `pipeline data digits` first"):
        load_held_out(MODEL, paths)
    older = _snapshot_in(paths, seed=1, mtime=1_000_000)
    newer = _snapshot_in(paths, seed=2, mtime=2_000_000)
    (paths.data_dir / MODEL / "by-source").mkdir()  # prepare's index: not a snapshot
    _trained_on(paths.model_base_path(MODEL) / "3", older)

    newest = load_held_out(MODEL, paths)
    test = Snapshot.open(newer).split("test")
    assert newest.inputs.shape == (30, 784) and newest.inputs.dtype == np.float32
    assert np.array_equal(newest.inputs, test.x.reshape(30, 784).astype(np.float32) / 255)
    assert newest.labels.tolist() == test.y.tolist() and newer.name in newest.source

    stable = load_held_out(MODEL, paths, stable_version=3)
    assert stable.labels.tolist() == Snapshot.open(older).split("test").y.tolist()
    assert older.name in stable.source and "stable version 3" in stable.source

    gone = load_held_out(MODEL, paths, stable_version=4)  # no such version directory: the newest, saying why
    assert newer.name in gone.source and "stable version 4" in gone.source

    every = load_held_out(MODEL, paths, stable_version=3, splits=("train", "val", "test"))
    parts = [Snapshot.open(older).split(name) for name in ("train", "val", "test")]
    assert every.labels.tolist() == [label for part in parts for label in part.y.tolist()]
    assert len(every.inputs) == sum(len(part) for part in parts) and "train+val+test splits" in every.source


# ---- real runs (slow) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(good, good_alt): template classifiers reading the synthetic digit k as k."""
    from tests.release.core_world import GOOD, GOOD_ALT, build_template_classifier

    root = tmp_path_factory.mktemp("classifiers")
    build_template_classifier(root / "good", GOOD)
    build_template_classifier(root / "good_alt", GOOD_ALT)
    return root / "good", root / "good_alt"


@pytest.fixture
def served(serve: Any, make_base_path: Any, classifiers: tuple[Path, Path], tmp_path: Path) -> tuple[Paths, Any]:
    """A pipeline home at tmp_path whose ``digits`` versions 1 (stable) and 2 (canary) an embedded server serves.

    Version 1 was trained on an older snapshot; a newer one lies beside it.
    """
    from pipeline.wire import model_config

    paths = get_paths(tmp_path)  # make_base_path writes tmp_path/models/<name>: this home's model base path
    base = make_base_path(MODEL, {1: classifiers[0], 2: classifiers[1]})
    _trained_on(base / "1", _snapshot_in(paths, seed=11, mtime=1_000_000))
    _snapshot_in(paths, seed=12, mtime=2_000_000)
    config = model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 1, "canary": 2})
    server = serve(model_config_file=str(model_config.write_config(tmp_path / "models.config", config)),
                   allow_version_labels_for_unavailable_models=True)
    ServingClient(f"http://127.0.0.1:{server.rest_port}").wait_until_available(MODEL, 2, _DEADLINE_S)
    return paths, server


def _offline_classes(rest_url: str, examples: HeldOut) -> list[int]:
    """What stable answers for every example, asked directly in one batch."""
    with ServingClient(rest_url) as client:
        return client.predict(MODEL, instances=examples.inputs, label="stable")["classes"].tolist()


def _expected_correct(examples: HeldOut, classes: list[int], count: int, seed: int) -> dict[str, int]:
    order = example_order(len(examples.labels), seed)
    correct = Counter[str]()
    for seq in range(count):
        index = int(order[seq % len(order)])
        correct[api_of(seq, APIS)] += int(classes[index] == examples.labels[index])
    return dict(correct)


@pytest.mark.slow
def test_straight_to_tf_serving_every_request_is_answered_without_an_id(served: tuple[Paths, Any]) -> None:
    paths, server = served
    rest_url, grpc_target = f"http://127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
    run = TrafficSpec(MODEL, rest_url=rest_url, grpc_target=grpc_target, rps=40, duration_s=0.5, seed=2,
                      stable_version=1, timeout_s=30)
    report = run_traffic(run, paths=paths)

    examples = load_held_out(MODEL, paths, stable_version=1)
    assert report.examples == examples.source and "stable version 1" in report.examples
    correct = _expected_correct(examples, _offline_classes(rest_url, examples), run.count, seed=2)
    for figures in report.apis:
        assert (figures.sent, figures.ok, figures.failed, figures.judged) == (10, 10, {}, 10)
        assert figures.correct == correct[figures.api]
    assert report.answers_without_request_id == 20  # TF Serving itself gives no request ids

    # A model the server does not know: every request fails, counted by HTTP status and gRPC code.
    missing = run_traffic(TrafficSpec("absent", rest_url=rest_url, grpc_target=grpc_target, rps=40, duration_s=0.2,
                                      timeout_s=30), examples=examples)
    assert {figures.api: figures.failed for figures in missing.apis} == {"rest": {"HTTP 404": 4},
                                                                         "grpc": {"NOT_FOUND": 4}}
    assert "FAILED over rest: HTTP 404 x4" in "\n".join(missing.summary_lines())


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Any]:
    from pipeline.errors import SourceUnavailable
    from pipeline.live.proxy import NginxProxy, find_nginx

    try:
        find_nginx()
    except SourceUnavailable:
        pytest.skip("nginx not installed: apt-get install nginx-light")
    running = NginxProxy(tmp_path / "proxy")
    yield running
    running.stop()


@pytest.mark.slow
def test_through_the_proxy_labels_reach_the_capture_service(served: tuple[Paths, Any], proxy: Any) -> None:
    from pipeline.live.capture import CaptureService
    from pipeline.live.proxy import ProxySpec, UpstreamSpec
    from pipeline.live.store import captured
    from pipeline.util.net import free_port
    from pipeline.util.polling import poll_until

    paths, server = served
    serving_url = f"http://127.0.0.1:{server.rest_port}"
    capture = CaptureService(serving_url, [MODEL], paths=paths, port=free_port(),
                             class_names={MODEL: [str(digit) for digit in range(10)]}).start()
    try:
        upstream = UpstreamSpec(rest=f"127.0.0.1:{server.rest_port}", grpc=f"127.0.0.1:{server.grpc_port}")
        endpoint = proxy.start(ProxySpec(stable=upstream, mirror_percent=100, mirror_url=capture.url),
                               timeout_s=_DEADLINE_S)
        run = TrafficSpec(MODEL, rest_url=endpoint.rest_url, grpc_target=endpoint.grpc_target,
                          feedback_url=capture.url, rps=20, duration_s=2, label_delay_s=1.0, label_share=0.5, seed=3,
                          stable_version=1, timeout_s=30)
        report = run_traffic(run, paths=paths)

        examples = load_held_out(MODEL, paths, stable_version=1)
        correct = _expected_correct(examples, _offline_classes(serving_url, examples), run.count, seed=3)
        for figures in report.apis:
            assert (figures.sent, figures.ok, figures.failed) == (20, 20, {})
            assert figures.correct == correct[figures.api]
        assert report.answers_without_request_id == 0 and report.answers_with_other_request_id == 0

        # The labels: the share picked by id, each answered; one the capture had not recorded yet is unknown.
        order = example_order(len(examples.labels), seed=3)
        truth = {f"{report.request_id_prefix}-{seq}": int(examples.labels[order[seq % len(order)]])
                 for seq in range(run.count)}
        picked = {request_id: label for request_id, label in truth.items() if label_selected(request_id, 0.5)}
        feedback = report.feedback
        assert feedback is not None and feedback.labels == len(picked) and feedback.not_delivered == 0
        assert set(feedback.answers) <= {"accepted", "unknown"} and sum(feedback.answers.values()) == len(picked)

        # Once everything is captured, sending the labels again finds each recorded (duplicate) or records it.
        poll_until(lambda: (True if len(captured(MODEL, paths=paths)) >= run.count else None, "capturing"),
                   _DEADLINE_S, "mirrored requests not captured")
        capture.wait_idle(_DEADLINE_S)
        again = requests.post(f"{capture.url}/feedback/{MODEL}", timeout=_DEADLINE_S,
                              json=[{"request_id": rid, "label": label} for rid, label in picked.items()]).json()
        assert again["counts"].get("duplicate", 0) == feedback.answers.get("accepted", 0)
        assert again["counts"].get("accepted", 0) == feedback.answers.get("unknown", 0)
        rows = {row.request_id: row for row in captured(MODEL, paths=paths)}
        assert set(rows) == set(truth)  # every request went through the proxy with our id
        assert {rid: row.label for rid, row in rows.items() if row.label is not None} == picked
    finally:
        capture.stop()
    assert "feedback to" in "\n".join(report.summary_lines())
