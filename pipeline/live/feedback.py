"""Delayed true labels for captured requests, by request id: one function underneath two ways in.

Ways in:

- ``pipeline feedback <model> FILE`` (``-`` for stdin): one item a line, JSONL ``{"request_id": "...", "label": 3}``
  or CSV ``request_id,label`` (an optional ``request_id,label`` header line; blank lines and ``#`` comments are
  skipped). Lines may mix both forms. It prints a summary (items per answer, then the problems by line) and exits
  0 once every line has its answer, malformed ones included; it exits 2 when the file cannot be read at all or the
  model is unknown. Items are committed in chunks, so rerunning a file after an interruption is safe: what was
  recorded answers ``duplicate``.
- ``POST /feedback`` (or ``/feedback/<model>``) on the capture service (:mod:`pipeline.live.capture`): a JSON object
  or a list of them; the answer lists each item's result.

A label is a class index (``3``, ``"3"``) or a class name (``"spam"``) of the model's ``class_names``; it is
stored as the index. Each item gets one answer, and a bad item never stops or changes the others:

- ``accepted``: recorded.
- ``duplicate``: the same label for the same id again: nothing changes (sending twice is safe).
- ``conflict``: another label for an id that has one: refused, the first label stays.
- ``unknown``: no captured request has that id; the detail says whether it was captured and rotated away by the
  row cap, skipped by the capture service's own sample, or never seen (the proxy samples, or it was dropped).
- ``late``: the request was captured longer than the feedback window ago (default 7 days): not recorded.
- ``malformed``: no usable request id, a label that is not one of the model's classes, or a line that does not
  parse: not recorded.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError
from pipeline.live.store import SAMPLE_META_KEY, CaptureStore, StoreTransaction, in_sample, is_request_id
from pipeline.settings import Paths

DEFAULT_FEEDBACK_WINDOW_S = 7 * 24 * 3600.0  # labels (user reports, reviews) may take days
_CHUNK_ITEMS = 500  # items per transaction when reading a file: short write locks, bounded memory
_MAX_LISTED_PROBLEMS = 1000  # per summary: a huge broken file still prints a bounded answer
_MAX_ECHOED_CHARS = 60  # of a bad value, in a message


class Answer(StrEnum):
    """What happened to one feedback item."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    UNKNOWN = "unknown"
    LATE = "late"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class FeedbackResult:
    """One item's answer; ``line`` is its line number when it came from a file."""

    answer: Answer
    detail: str
    request_id: str | None = None
    label: int | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"answer": str(self.answer), "detail": self.detail, "request_id": self.request_id}
        if self.label is not None:
            result["label"] = self.label
        if self.line is not None:
            result["line"] = self.line
        return result

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else "item"
        who = f" ({self.request_id})" if self.request_id else ""
        return f"{where}{who}: {self.answer}: {self.detail}"


@dataclass(frozen=True)
class FeedbackSummary:
    """Counts per answer of one batch of feedback, and the items that were not accepted (bounded)."""

    model: str
    source: str
    counts: dict[str, int]
    problems: tuple[FeedbackResult, ...]
    problems_left_out: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "total": self.total, "counts": dict(self.counts),
                "problems": [p.as_dict() for p in self.problems], "problems_left_out": self.problems_left_out}

    def describe(self, max_lines: int = 20) -> str:
        """One summary line, then up to ``max_lines`` problems."""
        counts = ", ".join(f"{self.counts.get(answer, 0)} {answer}" for answer in Answer)
        lines = [f"{self.model} feedback from {self.source}: {self.total} items: {counts}"]
        lines += [f"  {problem.describe()}" for problem in self.problems[:max_lines]]
        more = len(self.problems) - max_lines + self.problems_left_out
        if more > 0:
            lines.append(f"  ... and {more} more (--json lists up to {_MAX_LISTED_PROBLEMS})")
        return "\n".join(lines)


class Malformed(ValueError):
    """An item that cannot be used; the message says why."""


@dataclass(frozen=True)
class LabelSpace:
    """The model's classes: labels are checked against them and stored as indexes.

    Attributes:
        model: the model name (for messages).
        class_names: the config's ``class_names``; None when the config has none (then any index >= 0 goes).
    """

    model: str
    class_names: tuple[str, ...] | None

    def index_of(self, value: object) -> int:
        """The class index a label names: an index (int or digits) or a class name.

        Raises:
            Malformed: not one of the model's classes.
        """
        names = self.class_names
        if isinstance(value, str):
            text = value.strip()
            if names is not None and text in names:
                return names.index(text)
            if text.isdigit():
                return self._checked_index(int(text), value)
        elif isinstance(value, int) and not isinstance(value, bool):
            return self._checked_index(value, value)
        raise Malformed(f"label {_echo(value)} is not one of {self.model}'s classes ({self._choices()})")

    def name_of(self, index: int) -> str:
        """How a stored label reads in messages: its class name when known."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return repr(self.class_names[index])
        return str(index)

    def _checked_index(self, index: int, value: object) -> int:
        if index < 0 or (self.class_names is not None and index >= len(self.class_names)):
            raise Malformed(f"label {_echo(value)} is not one of {self.model}'s classes ({self._choices()})")
        return index

    def _choices(self) -> str:
        if self.class_names is None:
            return "a class index >= 0"
        names = ", ".join(self.class_names[:12]) + (", ..." if len(self.class_names) > 12 else "")
        return f"an index 0-{len(self.class_names) - 1} or a name: {names}"


def label_space(model: str) -> LabelSpace:
    """The classes of ``model``, from its config (``configs/models/<model>.yaml``).

    Raises:
        NotFound: the model has no config.
    """
    from pipeline.config import load_model_config

    return LabelSpace(model, load_model_config(model).class_names)


@dataclass(frozen=True)
class _Item:
    request_id: str
    label: int


def parse_item(raw: object, classes: LabelSpace) -> _Item:
    """A feedback item from ``{"request_id": ..., "label": ...}``.

    Raises:
        Malformed: not an object, no usable request id, or a label that is not one of the classes.
    """
    if not isinstance(raw, Mapping):
        raise Malformed(f"expected an object with request_id and label, got {_echo(raw)}")
    request_id = raw.get("request_id")
    if request_id is None:
        raise Malformed("no request_id")
    if not is_request_id(request_id):
        raise Malformed(f"request_id {_echo(request_id)} is not a request id (1-128 visible ASCII characters)")
    if "label" not in raw or raw["label"] is None:
        raise Malformed("no label")
    return _Item(str(request_id), classes.index_of(raw["label"]))


def submit_feedback(store: CaptureStore, items: Sequence[object], classes: LabelSpace, source: str,
                    window_s: float = DEFAULT_FEEDBACK_WINDOW_S, now: float | None = None,
                    lines: Sequence[int | None] | None = None) -> list[FeedbackResult]:
    """Answer each item (see the module docstring), recording the accepted ones: one transaction for all.

    Args:
        store: the model's capture store.
        items: raw items (parsed JSON objects); a :class:`Malformed` stands for a line that did not parse.
        classes: the model's classes.
        source: where the items came from (stored with each label).
        window_s: feedback for a request captured longer ago than this is ``late``.
        now: the time of receipt (default: now).
        lines: the line number of each item, for the answers (files).

    Returns:
        One result per item, in order.
    """
    now = time.time() if now is None else now
    numbers = list(lines) if lines is not None else [None] * len(items)
    results: list[FeedbackResult] = []
    with store.transaction() as tx:
        for raw, line in zip(items, numbers, strict=True):
            results.append(_answer_one(tx, raw, classes, source, window_s, now, line))
        for answer, count in Counter(result.answer for result in results).items():
            tx.bump(f"feedback_{answer}", count)
    return results


def ingest_feedback_file(model: str, file: str | Path, paths: Paths | None = None,
                         window_s: float = DEFAULT_FEEDBACK_WINDOW_S, source: str | None = None,
                         classes: LabelSpace | None = None) -> FeedbackSummary:
    """Answer every line of a JSONL/CSV feedback file (``-``: stdin) and record the accepted labels.

    Raises:
        NotFound: the model has no config (and ``classes`` was not given).
        PipelineError: the file cannot be read.
    """
    classes = classes or label_space(model)
    name = "stdin" if str(file) == "-" else Path(file).name
    source = source or f"file:{name}"
    tally: Counter[str] = Counter()
    problems: list[FeedbackResult] = []
    left_out = 0
    with _open_feedback(file) as handle, CaptureStore.for_model(model, paths) as store:
        try:
            for chunk in _chunks(read_feedback_lines(handle), _CHUNK_ITEMS):
                numbers, items = zip(*chunk, strict=True)
                for result in submit_feedback(store, items, classes, source, window_s, lines=numbers):
                    tally[result.answer] += 1
                    if result.answer is not Answer.ACCEPTED:
                        if len(problems) < _MAX_LISTED_PROBLEMS:
                            problems.append(result)
                        else:
                            left_out += 1
        except OSError as exc:  # chunks already answered stay recorded: rerunning the file is safe
            raise PipelineError(f"reading the feedback file {file} failed after {sum(tally.values())} items "
                                f"(those are recorded; rerun it: they answer duplicate): {exc}") from exc
    counts = {str(answer): tally.get(answer, 0) for answer in Answer}
    return FeedbackSummary(model, name, counts, tuple(problems), left_out)


def read_feedback_lines(handle: IO[bytes]) -> Iterator[tuple[int, object]]:
    """``(line number, item)`` per line: a parsed object, or a :class:`Malformed` for a line that does not parse.

    Blank lines, ``#`` comments and a leading ``request_id,label`` header are skipped.
    """
    first = True
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield number, Malformed("the line is not UTF-8")
            continue
        if not text or text.startswith("#"):
            continue
        header, first = first and _is_header(text), False
        if not header:
            yield number, _parse_line(text)


def _answer_one(tx: StoreTransaction, raw: object, classes: LabelSpace, source: str, window_s: float, now: float,
                line: int | None) -> FeedbackResult:
    """The answer to one raw item; records it when accepted."""
    if isinstance(raw, Malformed):
        return FeedbackResult(Answer.MALFORMED, str(raw), line=line)
    try:
        item = parse_item(raw, classes)
    except Malformed as exc:
        request_id = raw.get("request_id") if isinstance(raw, Mapping) else None
        return FeedbackResult(Answer.MALFORMED, str(exc), request_id if is_request_id(request_id) else None,
                              line=line)
    request_id, label = item.request_id, item.label
    captured_at = tx.received_at_of(request_id)
    if captured_at is None:
        return FeedbackResult(Answer.UNKNOWN, _why_unknown(tx, request_id, classes.model), request_id, label, line)
    existing = tx.label_of(request_id)
    if existing is not None:
        first_label, first_at, first_source = existing
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first_at))
        if first_label == label:
            return FeedbackResult(Answer.DUPLICATE, f"already labelled {classes.name_of(label)} ({first_source}, "
                                  f"{when}); nothing changed", request_id, label, line)
        return FeedbackResult(Answer.CONFLICT, f"already labelled {classes.name_of(first_label)} ({first_source}, "
                              f"{when}); that label stays, {classes.name_of(label)} was refused",
                              request_id, label, line)
    age_s = now - captured_at
    if age_s > window_s:
        return FeedbackResult(Answer.LATE, f"captured {age_s:.0f}s ago, past the {window_s:g}s feedback window; "
                              "not recorded", request_id, label, line)
    tx.add_label(request_id, label, now, source)
    return FeedbackResult(Answer.ACCEPTED, f"labelled {classes.name_of(label)}", request_id, label, line)


def _why_unknown(tx: StoreTransaction, request_id: str, model: str) -> str:
    if tx.was_rotated(request_id):
        return "captured, then rotated away by the capture store's row cap; it can no longer be labelled"
    sample = tx.meta(SAMPLE_META_KEY)
    if sample is not None and not in_sample(request_id, float(sample)):
        return f"never captured: the capture service keeps a {float(sample):g} sample of requests and skipped this id"
    return (f"no captured request of {model} has this id: not mirrored (the proxy samples), dropped under load, "
            "or not an id of this model")


def _is_header(text: str) -> bool:
    return [field.strip().lower() for field in text.split(",")] == ["request_id", "label"]


def _parse_line(text: str) -> object:
    """A JSON object line as parsed, a CSV line as ``{"request_id", "label"}``; a :class:`Malformed` otherwise."""
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            return Malformed(f"not valid JSON: {exc}")
    fields = next(csv.reader([text]))
    if len(fields) != 2:
        return Malformed(f"expected request_id,label (CSV) or a JSON object, got {_echo(text)}")
    return {"request_id": fields[0].strip(), "label": fields[1].strip()}


@contextlib.contextmanager
def _open_feedback(file: str | Path) -> Iterator[IO[bytes]]:
    """The feedback file opened for binary reading (stdin for ``-``): lines are decoded one by one.

    Raises:
        PipelineError: the file cannot be opened.
    """
    if str(file) == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = open(file, "rb")
    except OSError as exc:
        raise PipelineError(f"cannot read the feedback file {file}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


def _chunks(pairs: Iterable[tuple[int, object]], size: int) -> Iterator[list[tuple[int, object]]]:
    chunk: list[tuple[int, object]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _echo(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_ECHOED_CHARS else text[:_MAX_ECHOED_CHARS] + "..."
