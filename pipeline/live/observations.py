"""The live window: the proxy's access log joined with the capture store, as the analysis' observations.

The proxy logs every client request (id, the variant that answered, HTTP and gRPC status, times); the capture
service records, for the mirrored share, what both versions answer and, once feedback arrives, the true label.
Joined on the request id they give :class:`~pipeline.live.analysis.Observation` s: errors and latency of every
request, both answers and the label where captured.

A phase's window starts at a position in the access log (its size when the phase started), so each look reads
only the phase's own lines. A REST request names its model in its path; a gRPC one carries it in the body, which
nginx does not read, so the window holds every gRPC inference request. Only one canary runs on the production
endpoint at a time, and every other model answers from the same stable version on both upstreams, so they can
only dilute the canary's error and latency figures, never fake a difference; predictions come from the capture,
which knows the model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.live.analysis import VARIANTS, Observation, Variant
from pipeline.live.store import CapturedRequest

log = logging.getLogger(__name__)

_REST_INFERENCE = re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/\d+|/labels/[^/:]+)?:(?:predict|classify|regress)$")
_GRPC_INFERENCE = re.compile(r"^/tensorflow\.serving\.PredictionService/(?:Predict|Classify|Regress|MultiInference)$")


@dataclass(frozen=True)
class LogPosition:
    """Where a window starts in the access log: the file (inode, to notice a rotation) and a byte offset."""

    path: str
    inode: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "inode": self.inode, "offset": self.offset}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LogPosition:
        return cls(str(raw["path"]), int(raw["inode"]), int(raw["offset"]))


@dataclass(frozen=True)
class AccessEntry:
    """One client request as the proxy logged it."""

    ts: float
    request_id: str
    api: str
    variant: str
    path: str
    status: int
    grpc_status: str
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.grpc_status in ("", "0")


def log_position(access_log: Path) -> LogPosition:
    """The access log's end now: a window starting here holds only requests logged from now on."""
    try:
        stat = access_log.stat()
    except FileNotFoundError:
        return LogPosition(str(access_log), 0, 0)
    return LogPosition(str(access_log), stat.st_ino, stat.st_size)


def read_entries(start: LogPosition) -> Iterator[AccessEntry]:
    """The inference requests logged since ``start`` (from the file's beginning when it was rotated since)."""
    path = Path(start.path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        stat = path.stat()
        same_file = stat.st_ino == start.inode and stat.st_size >= start.offset
        handle.seek(start.offset if same_file else 0)
        for raw in handle:
            entry = _parse_line(raw)
            if entry is not None:
                yield entry


def _parse_line(raw: bytes) -> AccessEntry | None:
    try:
        record = json.loads(raw)
        path = str(record["path"])
        if not (_REST_INFERENCE.match(path) or _GRPC_INFERENCE.match(path)) or record.get("variant") not in VARIANTS:
            return None  # not an inference request, or refused before reaching an upstream
        return AccessEntry(float(record["ts"]), str(record["request_id"]), str(record["api"]), str(record["variant"]),
                           path, int(record["status"]), str(record.get("grpc_status") or ""), _latency_ms(record))
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line while nginx writes it; it is read whole at the next look


def _latency_ms(record: Mapping[str, Any]) -> float:
    """The upstream's answer time (the last try's), else the whole request's."""
    upstream = str(record.get("upstream_response_time") or "").split(",")[-1].strip()
    try:
        return max(0.0, float(upstream) * 1000)
    except ValueError:
        return max(0.0, float(record.get("request_time") or 0) * 1000)


def model_of(entry: AccessEntry) -> str | None:
    """The model a REST request names; None for gRPC (the model is in the body)."""
    match = _REST_INFERENCE.match(entry.path)
    return match.group("model") if match else None


def join(model: str, entries: Iterable[AccessEntry], captures: Iterable[CapturedRequest], now: float | None = None
         ) -> list[Observation]:
    """Observations of ``model``'s window: every logged request of it, with its capture where there is one, and
    its age at ``now`` (epoch seconds; None: ages unknown).

    A request logged more than once (a client retrying with the same id) counts once: its last answer.
    """
    by_id = {capture.request_id: capture for capture in captures}
    chosen: dict[str, AccessEntry] = {}
    for entry in entries:
        named = model_of(entry)
        if named == model or (named is None and entry.api == "grpc"):
            chosen[entry.request_id] = entry
    return [_observation(entry, by_id.get(entry.request_id), None if now is None else max(0.0, now - entry.ts))
            for entry in chosen.values()]


def _observation(entry: AccessEntry, capture: CapturedRequest | None, age_s: float | None = None) -> Observation:
    variant: Variant = "canary" if entry.variant == "canary" else "stable"
    if capture is None:
        return Observation(entry.request_id, variant, entry.ok, entry.latency_ms, None, age_s=age_s)
    other = "stable" if variant == "canary" else "canary"
    served_class = capture.canary_class if variant == "canary" else capture.stable_class
    other_error = capture.canary_error if other == "canary" else capture.stable_error
    return Observation(
        entry.request_id, variant, entry.ok, entry.latency_ms, served_class if entry.ok else None,
        stable_class=capture.stable_class, canary_class=capture.canary_class, label=capture.label,
        mirror_ok=other_error is None, excerpt=capture.inputs_excerpt[:120], age_s=age_s,
    )
