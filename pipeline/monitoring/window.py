"""The live window of one monitor run: the captured requests of a model between two times, as the tests need them.

From the capture store (:mod:`pipeline.live.store`): the newest ``limit`` requests received in ``[since, until)``,
each request's instances (its whole body, when the store kept it), stable's predicted class of each instance, and
the delayed true label of one-instance requests. A body the store kept only as an excerpt, or one that is not a
predict request, is counted as skipped, never guessed at.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.live.store import CaptureStore
from pipeline.monitoring.features import instances_of
from pipeline.settings import Paths


@dataclass
class LiveWindow:
    """What a window holds: instances and stable's classes (aligned), labelled pairs, and what was left out."""

    since: float | None
    until: float
    requests: int = 0
    instances: list[Any] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)  # stable's class of each instance (-1: none)
    labelled: list[tuple[int, int]] = field(default_factory=list)  # (stable's class, true label) per request
    skipped: Counter[str] = field(default_factory=Counter)
    first_at: float | None = None
    last_at: float | None = None

    def predicted_counts(self) -> dict[str, int]:
        return dict(Counter(str(c) for c in self.predicted if c >= 0))

    @property
    def correct(self) -> int:
        return sum(predicted == label for predicted, label in self.labelled)


def read_window(model: str, since: float | None, until: float, limit: int, paths: Paths | None = None
                ) -> LiveWindow:
    """The newest ``limit`` captured requests of ``model`` received in ``[since, until)`` (see the docstring)."""
    window = LiveWindow(since, until)
    with CaptureStore.for_model(model, paths) as store:
        for request in reversed(store.captured(since=since, until=until, limit=limit)):  # oldest first
            window.requests += 1
            window.first_at = request.received_at if window.first_at is None else window.first_at
            window.last_at = request.received_at
            body = store.inputs_of(request.request_id) if request.inputs_kept else None
            if body is None:
                window.skipped["body not kept"] += 1
                continue
            try:
                instances = instances_of(json.loads(body))
            except (ValueError, PipelineError):
                window.skipped["not a predict request"] += 1
                continue
            classes = request.stable_classes
            if classes is None or len(classes) != len(instances):
                window.skipped["no stable answer"] += 1
                classes = tuple(-1 for _ in instances)
            window.instances.extend(instances)
            window.predicted.extend(int(c) for c in classes)
            if request.label is not None and request.stable_class is not None:
                window.labelled.append((request.stable_class, request.label))
    return window
