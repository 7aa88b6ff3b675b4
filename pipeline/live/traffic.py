"""Synthetic live traffic: real held-out examples replayed through the production endpoint, with their true labels
sent back as delayed feedback (``pipeline traffic <model> --rps N --duration S``).

What is sent: the test split of the data snapshot production's stable version was trained on (``stable_version``
of the spec; the CLI reads it from the release registry), else of the newest prepared snapshot of the model; as the
standard client sends them (:func:`pipeline.models.to_model_inputs`: MNIST pixels / 255 flattened, spam raw text),
one example a request, cycling through a seeded shuffle.

How it is paced: open loop. Request ``k`` is due at ``start + k / rps``, whatever the answers before it did; a
bounded pool (``max_in_flight``) sends them. A request that cannot start within one interval (or 10 ms) of its
due time, because every place in flight is taken, is counted as a late start rather than quietly lowering the
rate; once the run is ``timeout_s`` past its duration, the requests left are counted as not sent. For ``both``
APIs, even requests go over REST and odd ones over gRPC.

Request ids: each request carries its own, ``traffic-<8 hex of this run>-<k>`` (REST header ``X-Request-Id``, gRPC
metadata ``x-request-id``), which the proxy (:mod:`pipeline.live.proxy`) keeps and answers with; answers without
an id are counted. Feedback names the id the answer carried.

Feedback (unless ``feedback_url`` is None): for the ``label_share`` of answered requests picked by a hash of the
request id, the true label is posted ``label_delay_s`` after the answer, in batches, to
``<feedback_url>/feedback/<model>`` (:mod:`pipeline.live.capture`); a 503 (store busy) is retried. At the end the
run waits for the last labels (bounded) and counts the answers by kind (:class:`pipeline.live.feedback.Answer`).

Where it may point: loopback addresses, or exactly the production endpoint and capture service of the serving
profile (:func:`pipeline.live.endpoints.live_endpoints`), so the command cannot be aimed at an arbitrary host.
"""

from __future__ import annotations

import ipaddress
import math
import re
import secrets
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import numpy as np
import requests

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, PipelineError
from pipeline.live.endpoints import LiveEndpoints, live_endpoints
from pipeline.live.feedback import Answer
from pipeline.live.store import in_sample
from pipeline.serving.client import NO_RETRY, PredictAnswer, ServingClient
from pipeline.settings import Paths, get_paths
from pipeline.wire.status import ServingError
from pipeline.wire.version_dirs import read_metadata, version_dir

Api = Literal["rest", "grpc"]
APIS: tuple[Api, ...] = ("rest", "grpc")
ShiftPool = Literal["test", "snapshot"]
SHIFT_POOLS: tuple[ShiftPool, ...] = ("test", "snapshot")
MAX_RPS = 500.0
MAX_DURATION_S = 3600.0
MAX_LABEL_DELAY_S = 600.0
MAX_IN_FLIGHT = 256
_MIN_LATE_S = 0.01  # scheduling jitter below this is not lateness, even at high rates
_LABEL_SALT = "traffic-label:"  # the label share must not line up with the proxy's split or mirror on the same id
_FEEDBACK_TICK_S = 0.2  # labels that fall due within one tick go in one POST
_FEEDBACK_BATCH = 500  # items per POST at most
_FEEDBACK_ATTEMPTS = 4  # a 503 (store busy) is tried again, with backoff
_FEEDBACK_BACKOFF_S = 0.25
_FEEDBACK_TIMEOUT_S = 10.0
_FEEDBACK_DRAIN_S = 30.0  # at the end: beyond the label delay, how long the last labels may take
_MAX_ERRORS_KEPT = 5  # distinct error messages a report lists
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LOOPBACK_NAMES = ("localhost",)


# ---- the spec -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficSpec:
    """One run of synthetic traffic.

    Attributes:
        model: the model to ask (its examples come from ``<home>/data/<model>/``).
        rest_url: the production endpoint's REST API, ``http://host:port``; needed for ``rest``.
        grpc_target: its gRPC API, ``host:port``; needed for ``grpc``.
        feedback_url: the capture service, ``http://host:port``; None sends no labels.
        rps: requests per second (0 < rps <= 500).
        duration_s: seconds of traffic (0 < duration <= 3600): ``round(rps * duration_s)`` requests, at least one.
        apis: ``("rest",)``, ``("grpc",)`` or both (alternating, REST first).
        label_delay_s: how long after its answer a request's label is sent (0-600).
        label_share: the share of answered requests whose label is sent (0-1), by request id.
        signature_name: the signature asked.
        seed: the shuffle of the examples.
        max_in_flight: requests in flight at most (1-256).
        timeout_s: each request's deadline (0 < timeout <= 60); requests are not retried.
        stable_version: production's stable version, whose training snapshot's test split is sent; None: the
            newest prepared snapshot of the model.
        shift: a known shift of digits (:mod:`pipeline.monitoring.shifts`) applied to a seeded ``shift_share``
            of the examples, labels kept ("a new scanner"); None sends them as they are.
        shift_share: the share of the examples shifted (0-1).
        shift_pool: where the shifted digits come from. ``test``: a seeded ``shift_share`` of the test split is
            shifted and the run cycles through it, so the same few hundred shifted digits come back; ``snapshot``:
            a new scanner's stream, the shifted share drawn from every split of the snapshot, each digit once per
            cycle (:func:`mixed_order`), beside the unshifted test split; what a loop that learns from live labels
            needs, since repeats are no new examples.
    """

    model: str
    rest_url: str | None = None
    grpc_target: str | None = None
    feedback_url: str | None = None
    rps: float = 10.0
    duration_s: float = 60.0
    apis: tuple[Api, ...] = APIS
    label_delay_s: float = 2.0
    label_share: float = 1.0
    signature_name: str = "serving_default"
    seed: int = 0
    max_in_flight: int = 16
    timeout_s: float = 10.0
    stable_version: int | None = None
    shift: str | None = None
    shift_share: float = 0.2
    shift_pool: ShiftPool = "test"

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not _MODEL_NAME.fullmatch(self.model) or ".." in self.model:
            raise ConfigError(f"traffic model: expected a model name, got {self.model!r}")
        _check_range("rps", self.rps, 0, MAX_RPS, low_open=True)
        _check_range("duration_s", self.duration_s, 0, MAX_DURATION_S, low_open=True)
        _check_range("shift_share", self.shift_share, 0, 1)
        if self.shift_pool not in SHIFT_POOLS:
            raise ConfigError(f"traffic shift_pool must be one of {', '.join(SHIFT_POOLS)}, got {self.shift_pool!r}")
        if self.shift is not None:
            from pipeline.monitoring.shifts import shift_named

            shift_named(self.shift)  # an unknown shift is refused before anything is sent
        _check_range("label_delay_s", self.label_delay_s, 0, MAX_LABEL_DELAY_S)
        _check_range("label_share", self.label_share, 0, 1)
        _check_range("timeout_s", self.timeout_s, 0, 60, low_open=True)
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) \
                or not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(f"traffic max_in_flight must be an integer within 1-{MAX_IN_FLIGHT}, "
                              f"got {self.max_in_flight!r}")
        if not self.apis or len(set(self.apis)) != len(self.apis) or not set(self.apis) <= set(APIS):
            raise ConfigError(f"traffic apis must be rest, grpc or both, got {self.apis!r}")
        if "rest" in self.apis:
            _parse_url("rest_url", self.rest_url)
        if "grpc" in self.apis:
            _parse_target("grpc_target", self.grpc_target)
        if self.feedback_url is not None:
            _parse_url("feedback_url", self.feedback_url)
        if not self.signature_name:
            raise ConfigError("traffic signature_name must not be empty")
        if self.stable_version is not None and self.stable_version < 0:
            raise ConfigError(f"traffic stable_version must be a version number, got {self.stable_version}")

    @property
    def count(self) -> int:
        """How many requests the run sends."""
        return max(1, round(self.rps * self.duration_s))


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value > high or value < low or (low_open and value == low):
        bound = f"more than {low:g} and at most {high:g}" if low_open else f"within {low:g}-{high:g}"
        raise ConfigError(f"traffic {name} must be {bound}, got {value!r}")


def _parse_url(name: str, url: str | None) -> str:
    """The host of an ``http(s)://host:port`` URL.

    Raises:
        ConfigError: missing, or not such a URL.
    """
    parts = urlsplit(url or "")
    try:
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise ConfigError(f"traffic {name}: bad port in {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(f"traffic {name} must be http://host:port, got {url!r}")
    return parts.hostname


def _parse_target(name: str, target: str | None) -> str:
    """The host of a gRPC ``host:port`` (``[::1]:port`` for IPv6).

    Raises:
        ConfigError: missing, or not such a target.
    """
    parts = urlsplit(f"//{target or ''}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.username:
        raise ConfigError(f"traffic {name} must be host:port, got {target!r}")
    return parts.hostname


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, 127.0.0.0/8 or ::1 (no name is resolved)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoints(spec: TrafficSpec, configured: LiveEndpoints | None) -> None:
    """Refuse endpoints that are neither loopback nor exactly the profile's production endpoint / capture service.

    Args:
        spec: the run.
        configured: the serving profile's endpoints (:func:`configured_endpoints`); None allows loopback only.

    Raises:
        ConfigError: an endpoint points elsewhere; the message names the field.
    """
    checks: list[tuple[str, str | None, str, str | None]] = []
    if "rest" in spec.apis:
        checks.append(("rest_url", spec.rest_url, _parse_url("rest_url", spec.rest_url),
                       configured.rest_url if configured else None))
    if "grpc" in spec.apis:
        checks.append(("grpc_target", spec.grpc_target, _parse_target("grpc_target", spec.grpc_target),
                       configured.grpc_target if configured else None))
    if spec.feedback_url is not None:
        checks.append(("feedback_url", spec.feedback_url, _parse_url("feedback_url", spec.feedback_url),
                       configured.capture_url if configured else None))
    for name, value, host, allowed in checks:
        if is_loopback(host) or (allowed is not None and _same_endpoint(value, allowed)):
            continue
        also = f" or exactly the serving profile's {allowed}" if allowed else ""
        raise ConfigError(f"traffic {name} {value!r} is not allowed: point it at a loopback address{also}")


def configured_endpoints() -> LiveEndpoints | None:
    """The serving profile's live endpoints; None when the profile configures no traffic path."""
    try:
        return live_endpoints()
    except NotFound:
        return None


def _same_endpoint(value: str | None, configured: str) -> bool:
    return value is not None and value.rstrip("/").lower() == configured.rstrip("/").lower()


# ---- the examples ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """The examples a run sends: model inputs, their true labels, and where they came from."""

    inputs: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if len(self.inputs) == 0 or len(self.inputs) != len(self.labels):
            raise ConfigError(f"held-out examples: {len(self.inputs)} inputs for {len(self.labels)} labels")


def load_held_out(model: str, paths: Paths | None = None, stable_version: int | None = None,
                  splits: Sequence[str] = ("test",)) -> HeldOut:
    """The test split (or ``splits``) of the snapshot ``stable_version`` was trained on, else of the newest prepared
    snapshot.

    Raises:
        NotFound: the model has no prepared snapshot.
    """
    from pipeline.data.dataset import Snapshot
    from pipeline.models import to_model_inputs

    paths = paths or get_paths()
    directory, source = None, ""
    if stable_version is not None:
        directory, source = _snapshot_of_version(model, stable_version, paths)
    if directory is None:
        directory = _newest_snapshot(model, paths)
        source = f"test split of the newest snapshot {directory}" + (f" ({source})" if source else "")
    snapshot = Snapshot.open(directory)
    parts = [snapshot.split(name) for name in splits]
    inputs = [to_model_inputs(part) for part in parts if len(part)]
    if not inputs:
        raise NotFound(f"the snapshot {directory} has no {'/'.join(splits)} examples; run `pipeline data {model}` "
                       "again")
    labels = np.concatenate([np.asarray(part.y, dtype=np.int64) for part in parts if len(part)])
    if tuple(splits) != ("test",):
        source = source.replace("test split", f"{'+'.join(splits)} splits", 1)
    return HeldOut(np.concatenate(inputs), labels, f"{source}, {len(labels)} examples")


def _snapshot_of_version(model: str, version: int, paths: Paths) -> tuple[Path | None, str]:
    """The snapshot directory ``version`` was trained on and a description; None and why not when it is gone."""
    try:
        sha = read_metadata(version_dir(paths.model_base_path(model), version))["data_snapshot_sha256"]
    except (NotFound, KeyError, ValueError):
        return None, f"stable version {version} records no data snapshot"
    directory = paths.data_dir / model / str(sha)
    if not (directory / "manifest.json").is_file():
        return None, f"stable version {version}'s snapshot {sha[:12]} is no longer on disk"
    return directory, f"test split of {directory}, the data stable version {version} was trained on"


def _newest_snapshot(model: str, paths: Paths) -> Path:
    root = paths.data_dir / model
    manifests = [path for path in root.glob("*/manifest.json") if not path.parent.name.startswith(".")]
    if not manifests:
        raise NotFound(f"{model} has no prepared data snapshot under {root}; run `pipeline data {model}` first")
    return max(manifests, key=lambda path: (path.stat().st_mtime_ns, path.parent.name)).parent


def shifted(examples: HeldOut, shift: str, share: float, seed: int) -> HeldOut:
    """The examples with a seeded ``share`` of them shifted (:func:`pipeline.monitoring.shifts.shift_share`)."""
    from pipeline.monitoring.shifts import shift_share

    inputs, mask = shift_share(examples.inputs, shift, share, seed)
    return HeldOut(inputs, examples.labels, f"{examples.source}; {int(mask.sum())} of them shifted ({shift})")


def example_order(count: int, seed: int) -> np.ndarray:
    """The seeded shuffle of ``count`` examples that a run cycles through."""
    return np.random.default_rng(seed).permutation(count)


def mixed_order(unshifted: int, shifted: int, share: float, seed: int) -> np.ndarray:
    """One cycle of a new scanner's stream beside the usual one, as indices into ``unshifted + shifted`` examples.

    The cycle is as long as it takes to send each of the ``shifted`` examples once at ``share`` of the requests;
    they come in a seeded order at seeded places, and the other places cycle through seeded shuffles of the
    ``unshifted`` examples (each shuffle complete before the next starts).

    Raises:
        ConfigError: no examples on a side the share asks for, or a share outside (0, 1].
    """
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"a new scanner's share must be within (0, 1], got {share}")
    if shifted < 1 or (share < 1.0 and unshifted < 1):
        raise ConfigError(f"a mixed stream needs examples on both sides, got {unshifted} unshifted and {shifted} "
                          "shifted")
    rng = np.random.default_rng(seed)
    length = max(shifted, round(shifted / share))
    places = np.zeros(length, dtype=bool)
    places[rng.permutation(length)[:shifted]] = True
    order = np.empty(length, dtype=np.int64)
    order[places] = unshifted + rng.permutation(shifted)
    others = length - shifted
    if others:
        cycles = -(-others // unshifted)
        order[~places] = np.concatenate([rng.permutation(unshifted) for _ in range(cycles)])[:others]
    return order


def traffic_examples(spec: TrafficSpec, examples: HeldOut, pool: HeldOut | None = None
                     ) -> tuple[HeldOut, np.ndarray]:
    """What a run sends and the order it cycles through: ``examples`` as they are, with a share shifted in place
    (``shift_pool`` test) or beside a new scanner's stream of ``pool`` shifted (``shift_pool`` snapshot)."""
    if spec.shift is None or spec.shift_share == 0:
        return examples, example_order(len(examples.labels), spec.seed)
    if spec.shift_pool == "test":
        examples = shifted(examples, spec.shift, spec.shift_share, spec.seed)
        return examples, example_order(len(examples.labels), spec.seed)
    if pool is None:
        raise ConfigError("shift_pool snapshot needs the snapshot's digits (pool)")
    scanned = shifted(pool, spec.shift, 1.0, spec.seed)
    both = HeldOut(np.concatenate([examples.inputs, scanned.inputs]),
                   np.concatenate([examples.labels, scanned.labels]),
                   f"{examples.source} as they are; a new scanner ({spec.shift}) on {spec.shift_share:.0%} of the "
                   f"requests, each of {len(pool.labels)} digits once per cycle ({pool.source})")
    return both, mixed_order(len(examples.labels), len(pool.labels), spec.shift_share, spec.seed)


def api_of(seq: int, apis: Sequence[Api]) -> Api:
    """The API request ``seq`` goes over: round robin, so both halves of a mixed run see the same examples' mix."""
    return apis[seq % len(apis)]


def label_selected(request_id: str, share: float) -> bool:
    """Whether the label of ``request_id`` is sent: deterministic, independent of the proxy's hashes of the id."""
    return in_sample(_LABEL_SALT + request_id, share)


def predicted_class(outputs: Mapping[str, Any]) -> int | None:
    """The class a one-instance answer predicts: its ``classes`` output, else the argmax of ``probabilities``."""
    classes = np.asarray(outputs.get("classes", [])).reshape(-1)
    if classes.size and np.issubdtype(classes.dtype, np.integer):
        return int(classes[0])
    probabilities = np.asarray(outputs.get("probabilities", []), dtype=np.float64)
    if probabilities.size:
        return int(np.argmax(probabilities.reshape(len(probabilities), -1)[0]))
    return None


# ---- pacing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pacing:
    """How the schedule held: requests started, started late, and never started."""

    started: int
    late_starts: int
    not_sent: int


def pace_requests(count: int, rps: float, give_up_after_s: float, max_in_flight: int,
                  send: Callable[[int], None], stop: threading.Event | None = None) -> Pacing:
    """Start ``send(k)`` for k = 0..count-1 on a pool at ``rps`` (open loop), at most ``max_in_flight`` at once.

    Request k is due ``k / rps`` after the start. One that starts more than an interval (or 10 ms) after it is
    late. Once ``give_up_after_s`` have passed since the start, or ``stop`` is set, the rest are not sent. Returns
    when every started ``send`` has returned.

    Raises:
        Exception: the first exception a ``send`` raised (it should count its failures, not raise them).
    """
    places = threading.BoundedSemaphore(max_in_flight)
    late_after_s = max(1.0 / rps, _MIN_LATE_S)
    raised: list[BaseException] = []  # no future per request: a long run would hold millions
    started = late = 0

    def run(seq: int) -> None:
        try:
            send(seq)
        except BaseException as exc:  # re-raised by the scheduler below
            raised.append(exc)
        finally:
            places.release()

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="traffic") as pool:
        start = time.monotonic()
        give_up_at = start + give_up_after_s
        for seq in range(count):
            due = start + seq / rps
            if stop is not None:
                if stop.wait(max(due - time.monotonic(), 0)):
                    break
            else:
                time.sleep(max(due - time.monotonic(), 0))
            if raised or not places.acquire(timeout=max(give_up_at - time.monotonic(), 0)):
                break
            if time.monotonic() - due > late_after_s:
                late += 1
            pool.submit(run, seq)
            started += 1
    if raised:
        raise raised[0]
    return Pacing(started, late, count - started)


# ---- figures --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiFigures:
    """What one API did: requests sent, answered, failed by HTTP status / gRPC code, latency, live accuracy.

    ``accuracy`` is the share of answers whose predicted class is the example's true label (None without answers
    that name a class).
    """

    api: str
    sent: int
    ok: int
    failed: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    judged: int
    correct: int

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        return {"api": self.api, "sent": self.sent, "ok": self.ok, "failed": self.failed_total,
                "failed_by": dict(self.failed), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "judged": self.judged, "correct": self.correct, "accuracy": self.accuracy}


@dataclass(frozen=True)
class FeedbackFigures:
    """The labels of a run: how many were due, the capture service's answers by kind, and what never got there."""

    url: str
    label_delay_s: float
    labels: int
    answers: dict[str, int]
    not_delivered: int
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "label_delay_s": self.label_delay_s, "labels": self.labels,
                "answers": dict(self.answers), "not_delivered": self.not_delivered, "errors": list(self.errors)}


@dataclass(frozen=True)
class TrafficReport:
    """What a run sent and what came back (:meth:`summary_lines` for people, :meth:`as_dict` for machines)."""

    model: str
    examples: str
    request_id_prefix: str
    rps: float
    duration_s: float
    planned: int
    pacing: Pacing
    elapsed_s: float
    apis: tuple[ApiFigures, ...]
    answers_without_request_id: int
    answers_with_other_request_id: int
    feedback: FeedbackFigures | None
    errors: tuple[str, ...] = ()

    @property
    def failed(self) -> int:
        return sum(figures.failed_total for figures in self.apis)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "examples": self.examples, "request_id_prefix": self.request_id_prefix,
                "rps": self.rps, "duration_s": self.duration_s, "planned": self.planned,
                "started": self.pacing.started, "late_starts": self.pacing.late_starts,
                "not_sent": self.pacing.not_sent, "elapsed_s": round(self.elapsed_s, 3),
                "apis": [figures.as_dict() for figures in self.apis], "failed": self.failed,
                "answers_without_request_id": self.answers_without_request_id,
                "answers_with_other_request_id": self.answers_with_other_request_id,
                "feedback": self.feedback.as_dict() if self.feedback else None, "errors": list(self.errors)}

    def summary_lines(self) -> list[str]:
        """A headline, a table per API (sent, ok, failed, p50, p95, accuracy), failures, request ids, feedback."""
        names = "+".join(figures.api for figures in self.apis)
        lines = [f"{self.model}: {self.planned} requests at {self.rps:g} rps for {self.duration_s:g} s over {names}: "
                 f"{self.pacing.started} sent in {self.elapsed_s:.1f} s, {self.pacing.late_starts} started late, "
                 f"{self.pacing.not_sent} not sent (ids {self.request_id_prefix}-<n>)",
                 f"examples: {self.examples}",
                 f"{'api':<5} {'sent':>7} {'ok':>7} {'failed':>7} {'p50 ms':>8} {'p95 ms':>8} {'accuracy':>9}"]
        for f in self.apis:
            lines.append(f"{f.api:<5} {f.sent:>7} {f.ok:>7} {f.failed_total:>7} {_ms(f.p50_ms):>8} "
                         f"{_ms(f.p95_ms):>8} {'-' if f.accuracy is None else f'{f.accuracy:.4f}':>9}")
        for f in self.apis:
            if f.failed:
                by_kind = ", ".join(f"{kind} x{n}" for kind, n in sorted(f.failed.items()))
                lines.append(f"FAILED over {f.api}: {by_kind}")
        lines += [f"error: {message}" for message in self.errors]
        lines.append(f"answers without a request id: {self.answers_without_request_id}, with another id than sent: "
                     f"{self.answers_with_other_request_id}")
        if self.feedback is None:
            lines.append("feedback: none sent")
        else:
            fb = self.feedback
            kinds = ", ".join(f"{fb.answers.get(answer, 0)} {answer}" for answer in Answer)
            lines.append(f"feedback to {fb.url} ({fb.label_delay_s:g} s after each answer): {fb.labels} labels: "
                         f"{kinds}; {fb.not_delivered} not delivered")
            lines += [f"feedback error: {message}" for message in fb.errors]
        return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class _Tally:
    """The figures of a run, recorded from the worker threads."""

    def __init__(self, apis: Sequence[str]):
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        self._failed: dict[str, Counter[str]] = {api: Counter() for api in apis}
        self._latencies_ms = {api: array("d") for api in apis}  # compact: a long run answers millions
        self._judged: Counter[str] = Counter()
        self._correct: Counter[str] = Counter()
        self._errors: list[str] = []
        self.without_id = 0
        self.other_id = 0

    def answered(self, api: str, latency_ms: float, correct: bool | None, sent_id: str, answered_id: str | None) -> None:
        with self._lock:
            self._sent[api] += 1
            self._latencies_ms[api].append(latency_ms)
            if correct is not None:
                self._judged[api] += 1
                self._correct[api] += int(correct)
            if answered_id is None:
                self.without_id += 1
            elif answered_id != sent_id:
                self.other_id += 1

    def failed(self, api: str, kind: str, message: str | None = None) -> None:
        with self._lock:
            self._sent[api] += 1
            self._failed[api][kind] += 1
            if message and message not in self._errors and len(self._errors) < _MAX_ERRORS_KEPT:
                self._errors.append(message)

    def figures(self) -> tuple[tuple[ApiFigures, ...], tuple[str, ...]]:
        with self._lock:
            return tuple(self._api_figures(api) for api in self._failed), tuple(self._errors)

    def _api_figures(self, api: str) -> ApiFigures:
        latencies = np.asarray(self._latencies_ms[api], dtype=np.float64)
        p50, p95 = (None, None) if latencies.size == 0 else (round(float(np.percentile(latencies, 50)), 3),
                                                              round(float(np.percentile(latencies, 95)), 3))
        return ApiFigures(api, self._sent[api], len(latencies), dict(self._failed[api]), p50, p95,
                          self._judged[api], self._correct[api])


def failure_kind(api: str, exc: Exception) -> str:
    """How a failed request is counted: ``HTTP <status>`` (REST), the gRPC code, or what kept it from an answer."""
    if isinstance(exc, DeadlineExceeded):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, ServingError):
        if api == "grpc":
            return exc.code
        return f"HTTP {exc.http_status}" if exc.http_status is not None else "no answer (connection failed)"
    return f"client error ({type(exc).__name__})"


# ---- feedback -------------------------------------------------------------------------------------------------


Poster = Callable[[str, list[dict[str, Any]]], tuple[int, Any]]


def post_json(url: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
    """POST ``items`` as JSON; the status and the parsed answer (None when it is not JSON).

    Raises:
        requests.RequestException: no answer.
    """
    response = requests.post(url, json=items, timeout=_FEEDBACK_TIMEOUT_S)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


@dataclass(frozen=True)
class _DueLabel:
    due: float
    item: dict[str, Any]


class FeedbackSender:
    """Posts true labels in batches, each ``delay_s`` after it was added, from a background thread.

    Args:
        url: the feedback endpoint, ``<capture>/feedback/<model>``.
        delay_s: how long after :meth:`add` a label is due.
        post: how a batch is posted (tests pass a fake): ``(url, items) -> (status, answer)``.
    """

    def __init__(self, url: str, delay_s: float, post: Poster = post_json):
        self.url = url
        self.delay_s = delay_s
        self._post = post
        self._pending: deque[_DueLabel] = deque()  # added in answer order: due times (almost) ascending
        self._cond = threading.Condition()
        self._finish_by: float | None = None
        self._labels = 0
        self._answers: Counter[str] = Counter()
        self._not_delivered = 0
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="traffic-feedback", daemon=True)

    def start(self) -> FeedbackSender:
        self._thread.start()
        return self

    def add(self, request_id: str, label: int) -> None:
        """Queue the label of an answered request."""
        with self._cond:
            self._labels += 1
            self._pending.append(_DueLabel(time.monotonic() + self.delay_s, {"request_id": request_id,
                                                                               "label": int(label)}))

    def finish(self, drain_s: float = _FEEDBACK_DRAIN_S) -> FeedbackFigures:
        """Send what is left as it falls due, for at most the label delay plus ``drain_s``; then the figures.

        Labels still pending after that count as not delivered.
        """
        with self._cond:
            self._finish_by = time.monotonic() + self.delay_s + drain_s
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._not_delivered += len(self._pending)
            self._pending.clear()
            return FeedbackFigures(self.url, self.delay_s, self._labels, dict(self._answers), self._not_delivered,
                                   tuple(self._errors))

    def abandon(self) -> None:
        """Stop at once (an interrupted run): pending labels are not sent."""
        with self._cond:
            self._finish_by = time.monotonic()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                if self._finish_by is not None and (not self._pending or now >= self._finish_by):
                    return  # past the deadline, even due labels stay pending: a hung service must not hold the run
                batch = self._take_due(now)
                if not batch:
                    self._cond.wait(_FEEDBACK_TICK_S)
                    continue
            self._deliver(batch)

    def _take_due(self, now: float) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while self._pending and self._pending[0].due <= now and len(batch) < _FEEDBACK_BATCH:
            batch.append(self._pending.popleft().item)
        return batch

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Post one batch, trying a 503 again; count the answers or what went wrong."""
        problem = ""
        for attempt in range(1, _FEEDBACK_ATTEMPTS + 1):
            try:
                status, answer = self._post(self.url, batch)
            except requests.RequestException as exc:
                problem = f"no answer from {self.url}: {exc}"
                break
            if status == 200 and isinstance(answer, dict) and isinstance(answer.get("counts"), dict):
                with self._cond:
                    self._answers.update({str(kind): int(n) for kind, n in answer["counts"].items()})
                return
            problem = f"{self.url} answered {status}: {_error_text(answer)}"
            if status != 503 or attempt == _FEEDBACK_ATTEMPTS:
                break
            time.sleep(_FEEDBACK_BACKOFF_S * 2 ** (attempt - 1))
        with self._cond:
            self._not_delivered += len(batch)
            if problem not in self._errors and len(self._errors) < _MAX_ERRORS_KEPT:
                self._errors.append(problem)


def _error_text(answer: Any) -> str:
    text = answer.get("error") if isinstance(answer, dict) else None
    return str(text or answer)[:200]


def feedback_endpoint(feedback_url: str, model: str) -> str:
    """``<feedback_url>/feedback/<model>``."""
    return f"{feedback_url.rstrip('/')}/feedback/{quote(model, safe='')}"


# ---- the run --------------------------------------------------------------------------------------------------


class Predictor(Protocol):
    """What a run needs of a client (:class:`~pipeline.serving.client.ServingClient`)."""

    def predict_answer(self, model: str, instances: Any = None, inputs: Any = None, version: int | None = None,
                       label: str | None = None, signature_name: str | None = None, protocol: Api = "rest",
                       timeout_s: float | None = None, request_id: str | None = None) -> PredictAnswer: ...

    def close(self) -> None: ...


def make_clients(spec: TrafficSpec) -> dict[Api, Predictor]:
    """One client per API, never retrying (a failure is a figure), with room for every request in flight."""
    clients: dict[Api, Predictor] = {}
    if "rest" in spec.apis:
        # The keep-alive transport (one connection per thread): it reopens, once, a kept-alive connection the
        # proxy closed at a reload, as browsers and HTTP libraries do; a real failure or timeout is not retried.
        clients["rest"] = ServingClient(rest_url=spec.rest_url, timeout_s=spec.timeout_s, retry=NO_RETRY)
    if "grpc" in spec.apis:
        clients["grpc"] = ServingClient(grpc_target=spec.grpc_target, timeout_s=spec.timeout_s, retry=NO_RETRY)
    return clients


def run_traffic(spec: TrafficSpec, paths: Paths | None = None, examples: HeldOut | None = None,
                clients: Mapping[Api, Predictor] | None = None, stop: threading.Event | None = None,
                pool: HeldOut | None = None) -> TrafficReport:
    """Send the spec's traffic, post its labels, and report (see the module docstring).

    Args:
        spec: the run.
        paths: the pipeline home holding the data snapshots (default ``$PIPELINE_HOME``).
        examples: what to send (default :func:`load_held_out` of the model and ``spec.stable_version``).
        clients: a client per API (default :func:`make_clients`; tests pass fakes). Closed at the end either way.
        stop: ends the run early when set (the requests not sent yet are counted as such; labels still go out).
        pool: a new scanner's digits, for ``shift_pool`` snapshot (default every split of the snapshot).

    Raises:
        ConfigError: an endpoint is neither loopback nor the profile's (:func:`check_endpoints`).
        NotFound: the model has no prepared snapshot.
    """
    check_endpoints(spec, configured_endpoints())
    examples = load_held_out(spec.model, paths, spec.stable_version) if examples is None else examples
    if pool is None and spec.shift is not None and spec.shift_pool == "snapshot":
        pool = load_held_out(spec.model, paths, spec.stable_version, splits=("train", "val", "test"))
    examples, order = traffic_examples(spec, examples, pool)
    prefix = f"traffic-{secrets.token_hex(4)}"
    tally = _Tally(spec.apis)
    owned = clients is None
    clients = make_clients(spec) if clients is None else clients
    sender = (FeedbackSender(feedback_endpoint(spec.feedback_url, spec.model), spec.label_delay_s).start()
              if spec.feedback_url is not None else None)

    def send(seq: int) -> None:
        api, index, request_id = api_of(seq, spec.apis), int(order[seq % len(order)]), f"{prefix}-{seq}"
        label = int(examples.labels[index])
        began = time.perf_counter()
        try:
            answer = clients[api].predict_answer(spec.model, instances=examples.inputs[index:index + 1],
                                                 signature_name=spec.signature_name, protocol=api,
                                                 timeout_s=spec.timeout_s, request_id=request_id)
            latency_ms = (time.perf_counter() - began) * 1000
            predicted = predicted_class(answer.outputs)
        except Exception as exc:  # every failure is a figure; the run goes on
            tally.failed(api, failure_kind(api, exc), None if isinstance(exc, PipelineError) else repr(exc))
            return
        tally.answered(api, latency_ms, None if predicted is None else predicted == label, request_id,
                       answer.request_id)
        labelled_id = answer.request_id or request_id  # what the capture service recorded
        if sender is not None and label_selected(labelled_id, spec.label_share):
            sender.add(labelled_id, label)

    began = time.monotonic()
    try:
        pacing = pace_requests(spec.count, spec.rps, spec.duration_s + spec.timeout_s, spec.max_in_flight, send,
                               stop)
        feedback = sender.finish() if sender is not None else None
    except BaseException:
        if sender is not None:
            sender.abandon()
        raise
    finally:
        if owned:
            for client in clients.values():
                client.close()
    apis, errors = tally.figures()
    return TrafficReport(spec.model, examples.source, prefix, spec.rps, spec.duration_s, spec.count, pacing,
                         time.monotonic() - began, apis, tally.without_id, tally.other_id, feedback, errors)
