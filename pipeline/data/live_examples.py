"""Labelled live requests as examples: the captured request bodies whose delayed labels came back.

A captured body is a TF Serving predict request as the client sent it (REST ``{"instances": [...]}`` or
``{"inputs": ...}``; a gRPC request is stored as ``{"inputs": {name: values}}``). Only one-instance requests are
used (a label names one class for the whole request). Images come as the clients send them, pixels / 255
flattened (:func:`pipeline.models.to_model_inputs`) and are turned back into exact 0..255 pixels; texts as strings
(or ``{"b64": ...}``). What cannot be an example is skipped and counted by reason, never guessed:

- ``inputs_not_kept``: the body was bigger than the store keeps (only its hash and an excerpt are stored);
- ``batched``: more than one instance in the request;
- ``unknown_label``: a label that is no class index of the model;
- ``undecodable``: not JSON, not one instance, or values that are no image (784 pixels in 0..1 on the 1/255 grid)
  or no text.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.dataset import Examples, Kind

_IMAGE_SHAPE = (28, 28)
_PIXELS = 28 * 28
_PIXEL_MAX = 255.0
_GRID_TOLERANCE = 0.02  # of one grey level: float32 pixels / 255 come back within 1e-4 of the grid
NOT_KEPT = "inputs_not_kept"
BATCHED = "batched"
UNDECODABLE = "undecodable"
UNKNOWN_LABEL = "unknown_label"


@dataclass(frozen=True)
class LabelledRequest:
    """A captured request with its label: the id, the body (None when not kept) and the class index."""

    request_id: str
    body: str | None
    label: int
    batch_size: int | None = None


@dataclass
class DecodedRequests:
    """The examples decoded from labelled requests, the ids they came from, and what was skipped."""

    examples: Examples
    request_ids: list[str]
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_ids: list[str] = field(default_factory=list)


def decode_requests(requests: Sequence[LabelledRequest], kind: Kind, class_names: tuple[str, ...]) -> DecodedRequests:
    """Decode each labelled request into one example; skip (and count) what cannot be one."""
    values: list[Any] = []
    labels: list[int] = []
    ids: list[str] = []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    for request in requests:
        value, why = _decode(request, kind) if 0 <= request.label < len(class_names) else (None, UNKNOWN_LABEL)
        if why is not None:
            skipped[why] += 1
            skipped_ids.append(request.request_id)
            continue
        values.append(value)
        labels.append(request.label)
        ids.append(request.request_id)
    if kind == "image":
        x = np.stack(values) if values else np.zeros((0, *_IMAGE_SHAPE), dtype=np.uint8)
    else:
        x = np.array(values, dtype=object)
    examples = Examples(kind, x, np.array(labels, dtype=np.int64), class_names, {"name": "live"})
    return DecodedRequests(examples, ids, skipped, skipped_ids)


def _decode(request: LabelledRequest, kind: Kind) -> tuple[Any, str | None]:
    if request.body is None:
        return None, NOT_KEPT
    if request.batch_size not in (None, 1):
        return None, BATCHED
    try:
        document = json.loads(request.body)
    except json.JSONDecodeError:
        return None, UNDECODABLE
    instances = _instances(document)
    if instances is None:
        return None, UNDECODABLE
    if len(instances) != 1:
        return None, BATCHED
    value = _image(instances[0]) if kind == "image" else _text(instances[0])
    return value, (None if value is not None else UNDECODABLE)


def _instances(document: Any) -> list[Any] | None:
    """The request's instances (row format), whichever of TF Serving's request forms it uses."""
    if not isinstance(document, dict):
        return None
    data = document.get("instances", document.get("inputs"))
    if isinstance(data, dict):  # columnar, by input name: one named input
        if len(data) != 1:
            return None
        data = next(iter(data.values()))
    if not isinstance(data, list):
        return None
    return [_unnamed(item) for item in data]


def _unnamed(item: Any) -> Any:
    """An instance given as ``{input name: value}`` (one input) is its value."""
    if isinstance(item, dict) and len(item) == 1 and "b64" not in item:
        return next(iter(item.values()))
    return item


def _image(value: Any) -> np.ndarray | None:
    """784 pixels / 255 back to a (28, 28) uint8 image; None when they are no such image."""
    try:
        scaled = np.asarray(value, dtype=np.float64).reshape(-1) * _PIXEL_MAX
    except (TypeError, ValueError):
        return None
    if scaled.size != _PIXELS or not np.isfinite(scaled).all():
        return None
    pixels = np.rint(scaled)
    if pixels.min() < 0 or pixels.max() > _PIXEL_MAX or np.abs(scaled - pixels).max() > _GRID_TOLERANCE:
        return None
    return pixels.astype(np.uint8).reshape(_IMAGE_SHAPE)


def _text(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 1:  # a [1]-shaped string tensor
        value = value[0]
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError):
            return None
    return value if isinstance(value, str) else None
