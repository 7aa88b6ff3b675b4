"""The live capture store: captured requests, both versions' answers and delayed true labels, per model.

One SQLite file per model, ``<PIPELINE_HOME>/live/<model>/capture.db``, in WAL mode so that the capture service
writes while ``pipeline feedback`` and the canary's analysis read and write from other processes. Every change is
one transaction. Tables, created on first use:

- ``captured``: one row per captured request, keyed by ``seq`` (insertion order) with a unique ``request_id``:
  when it was received, which variant answered the client, the request path, the batch size, the request's
  inputs (bounded, below), stable's and canary's predicted classes (JSON lists, one class per instance), their
  probabilities (only when small) and the error of a side that failed.
- ``feedback``: delayed true labels, ``request_id`` primary key, the label as a class index, when it came and
  from where (``file:<name>``, ``http``).
- ``forgotten``: ids rotated away by the row cap, so that feedback for them can say so (bounded the same way).
- ``counters``: running totals (``captured``, ``duplicates``, ``dropped``, ``rotated``, ``feedback_<answer>``).
- ``meta``: settings in effect that readers need (the capture service's ``sample`` fraction).

Limits (:class:`StoreLimits`, all parameters with safe defaults): at most ``max_rows`` captured requests
(inserting one more deletes the oldest, with its label); a request body up to ``max_input_bytes`` is kept whole,
a bigger one as its SHA-256 and its first ``excerpt_chars`` characters; probabilities only up to
``max_stored_probabilities`` numbers a row. So the file stays under about
``max_rows * (max_input_bytes + 2 KiB)``: 20,000 * 18 KiB ≈ 360 MB with the defaults.

Stdlib only: the CLI's ``pipeline feedback`` stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from pipeline.errors import ConfigError, PipelineError
from pipeline.settings import Paths, get_paths

STABLE = "stable"
CANARY = "canary"
VARIANTS = (STABLE, CANARY)
SAMPLE_META_KEY = "sample"  # the capture service's sample fraction, for feedback's "why unknown"

_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 10.0  # another process may hold the write lock for one short transaction
_PROBABILITY_DECIMALS = 5
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII: nginx's $request_id is 32 hex digits
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captured (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    variant TEXT NOT NULL CHECK (variant IN ('stable', 'canary')),
    path TEXT NOT NULL,
    batch_size INTEGER,
    inputs TEXT,
    inputs_excerpt TEXT,
    inputs_sha256 TEXT NOT NULL,
    inputs_bytes INTEGER NOT NULL,
    stable_classes TEXT,
    canary_classes TEXT,
    stable_probabilities TEXT,
    canary_probabilities TEXT,
    stable_error TEXT,
    canary_error TEXT
);
CREATE INDEX IF NOT EXISTS captured_received_at ON captured (received_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    label INTEGER NOT NULL,
    received_at REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    rotated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class CaptureStoreError(PipelineError):
    """The capture store could not be opened, read or written (the message names the file)."""


@dataclass(frozen=True)
class StoreLimits:
    """How much one model's capture store keeps (see the module docstring for the disk bound).

    Attributes:
        max_rows: captured requests kept; one more deletes the oldest (and its label).
        max_input_bytes: a request body up to this size is kept whole; a bigger one as hash + excerpt.
        excerpt_chars: characters of the body kept when it is too big (and shown by :func:`captured`).
        max_stored_probabilities: probabilities are kept when a side's answer has at most this many numbers.
    """

    max_rows: int = 20_000
    max_input_bytes: int = 16 * 1024
    excerpt_chars: int = 512
    max_stored_probabilities: int = 256

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_input_bytes", "excerpt_chars", "max_stored_probabilities"):
            minimum = 1 if name == "max_rows" else 0
            if getattr(self, name) < minimum:
                raise ConfigError(f"capture store limit {name} must be at least {minimum}, got {getattr(self, name)}")


@dataclass(frozen=True)
class VariantAnswer:
    """What one version answered for a captured request: a class per instance, or the error."""

    classes: tuple[int, ...] | None = None
    probabilities: tuple[tuple[float, ...], ...] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Capture:
    """One mirrored request and both versions' answers, as the capture service records it."""

    request_id: str
    received_at: float
    variant: str
    path: str
    body: str
    batch_size: int | None
    stable: VariantAnswer
    canary: VariantAnswer


@dataclass(frozen=True)
class CapturedRequest:
    """A captured request joined with its label, as the live canary's analysis reads it.

    ``stable_class`` / ``canary_class`` are the predicted classes of a one-instance request (the live case);
    a batched request keeps every instance's class in ``stable_classes`` / ``canary_classes``, and its label
    (which names one class for the whole request) is best left out of accuracy.
    """

    request_id: str
    received_at: float
    variant: str
    path: str
    batch_size: int | None
    stable_classes: tuple[int, ...] | None
    canary_classes: tuple[int, ...] | None
    stable_probabilities: tuple[tuple[float, ...], ...] | None
    canary_probabilities: tuple[tuple[float, ...], ...] | None
    stable_error: str | None
    canary_error: str | None
    label: int | None
    labelled_at: float | None
    inputs_excerpt: str
    inputs_sha256: str
    inputs_kept: bool  # the whole body is in the store (CaptureStore.inputs_of)

    @property
    def stable_class(self) -> int | None:
        """Stable's class for a one-instance request; None when it failed or the request was a batch."""
        return _single(self.stable_classes)

    @property
    def canary_class(self) -> int | None:
        """Canary's class for a one-instance request; None when it failed or the request was a batch."""
        return _single(self.canary_classes)

    @property
    def errors(self) -> dict[str, str]:
        """``{"stable": ..., "canary": ...}`` for the sides that failed."""
        pairs = ((STABLE, self.stable_error), (CANARY, self.canary_error))
        return {side: error for side, error in pairs if error}

    @property
    def agree(self) -> bool | None:
        """Whether both versions predicted the same classes; None when a side has no answer."""
        if self.stable_classes is None or self.canary_classes is None:
            return None
        return self.stable_classes == self.canary_classes


@dataclass(frozen=True)
class CaptureCounts:
    """Running totals of one model's capture, for progress lines.

    Attributes:
        kept: captured requests in the store now.
        captured: requests captured since the store was created (kept + rotated).
        rotated: captured requests deleted by the row cap.
        duplicates: mirrored requests whose id was already captured (the first capture stays).
        dropped: mirrored requests the capture service dropped because its queue was full.
        labelled: kept requests that have a label.
        feedback: feedback items by answer (``accepted``, ``duplicate``, ...).
    """

    kept: int
    captured: int
    rotated: int
    duplicates: int
    dropped: int
    labelled: int
    feedback: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "captured": self.captured, "rotated": self.rotated, "duplicates": self.duplicates,
                "dropped": self.dropped, "labelled": self.labelled, "feedback": dict(self.feedback)}

    def describe(self) -> str:
        """``"120 captured (100 kept, 20 rotated), 3 dropped, 0 duplicates; 80 labelled; feedback: 80 accepted"``."""
        line = (f"{self.captured} captured ({self.kept} kept, {self.rotated} rotated), {self.dropped} dropped, "
                f"{self.duplicates} duplicates; {self.labelled} labelled")
        answers = ", ".join(f"{count} {answer}" for answer, count in sorted(self.feedback.items()))
        return line + (f"; feedback: {answers}" if answers else "")


def is_request_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a usable request id: 1-128 visible ASCII characters."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def in_sample(request_id: str, fraction: float) -> bool:
    """Whether ``request_id`` falls in a ``fraction`` sample: deterministic, so every process agrees on it."""
    if fraction >= 1:
        return True
    digest = hashlib.sha256(request_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def capture_db_path(model: str, paths: Paths | None = None) -> Path:
    """``<home>/live/<model>/capture.db``.

    Raises:
        ConfigError: the model name could not be a directory name.
    """
    if _MODEL_NAME.fullmatch(model) is None or ".." in model:
        raise ConfigError(f"not a model name: {model!r}")
    return (paths or get_paths()).home / "live" / model / "capture.db"


class StoreTransaction:
    """The reads and writes feedback needs, inside one write transaction (:meth:`CaptureStore.transaction`)."""

    def __init__(self, connection: sqlite3.Connection):
        self._db = connection

    def received_at_of(self, request_id: str) -> float | None:
        """When the request was captured; None if it is not in the store."""
        row = self._db.execute("SELECT received_at FROM captured WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else float(row[0])

    def label_of(self, request_id: str) -> tuple[int, float, str] | None:
        """The request's label, when it came and its source; None if it has none."""
        row = self._db.execute("SELECT label, received_at, source FROM feedback WHERE request_id = ?",
                               (request_id,)).fetchone()
        return None if row is None else (int(row[0]), float(row[1]), str(row[2]))

    def add_label(self, request_id: str, label: int, received_at: float, source: str) -> None:
        self._db.execute("INSERT INTO feedback (request_id, label, received_at, source) VALUES (?, ?, ?, ?)",
                         (request_id, label, received_at, source))

    def was_rotated(self, request_id: str) -> bool:
        """Whether the request was captured and then deleted by the row cap (as far as the record goes)."""
        return self._db.execute("SELECT 1 FROM forgotten WHERE request_id = ?", (request_id,)).fetchone() is not None

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                         "excluded.value", (key, value))

    def bump(self, counter: str, by: int = 1) -> None:
        """Add ``by`` to a running total."""
        if by:
            self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                             "value = value + excluded.value", (counter, by))


class CaptureStore:
    """One model's capture store (the module docstring has the schema and the limits).

    Safe to share between threads: one connection, one transaction at a time. Other processes open their own.

    Args:
        path: the SQLite file (created with its directory on first use).
        limits: what the store keeps.
    """

    def __init__(self, path: str | Path, limits: StoreLimits = StoreLimits()):
        self.path = Path(path)
        self.limits = limits
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    @classmethod
    def for_model(cls, model: str, paths: Paths | None = None, limits: StoreLimits = StoreLimits()) -> CaptureStore:
        """The store of ``model`` under the pipeline home."""
        return cls(capture_db_path(model, paths), limits)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> CaptureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- writes -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """One write transaction (``BEGIN IMMEDIATE``): committed at the end, rolled back on any exception.

        Raises:
            CaptureStoreError: SQLite failed (locked past the busy timeout, disk full, a broken file).
        """
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise CaptureStoreError(f"capture store {self.path}: {exc}") from exc
            try:
                yield StoreTransaction(db)
            except BaseException as exc:
                if db.in_transaction:  # SQLite may have rolled back already (e.g. after SQLITE_FULL)
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise CaptureStoreError(f"capture store {self.path}: {exc}") from exc
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise CaptureStoreError(f"capture store {self.path}: {exc}") from exc

    def add(self, capture: Capture, dropped: int = 0) -> bool:
        """Record a capture (first capture of an id wins), rotate past ``max_rows``, and add ``dropped`` drops.

        Returns:
            False when the request id was already captured (counted as a duplicate; nothing else changes).
        """
        with self.transaction() as tx:
            tx.bump("dropped", dropped)
            cursor = self._db_checked().execute(
                "INSERT INTO captured (request_id, received_at, variant, path, batch_size, inputs, inputs_excerpt, "
                "inputs_sha256, inputs_bytes, stable_classes, canary_classes, stable_probabilities, "
                "canary_probabilities, stable_error, canary_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO NOTHING",
                (capture.request_id, capture.received_at, capture.variant, capture.path, capture.batch_size,
                 *self._bounded_inputs(capture.body), *self._answer_columns(capture.stable, capture.canary)))
            if cursor.rowcount == 0:
                tx.bump("duplicates")
                return False
            tx.bump("captured")
            if cursor.lastrowid is not None:
                self._rotate(tx, cursor.lastrowid, capture.received_at)
            return True

    def add_dropped(self, dropped: int) -> None:
        """Count requests dropped without a capture (the service flushes its count when it stops)."""
        if dropped:
            with self.transaction() as tx:
                tx.bump("dropped", dropped)

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.set_meta(key, value)

    def _rotate(self, tx: StoreTransaction, newest_seq: int, now: float) -> None:
        """Delete the captures (and labels) older than the newest ``max_rows``, remembering their ids.

        ``seq`` only ever grows and rows leave only through here, so the newest ``max_rows`` rows are exactly
        those with ``seq > newest_seq - max_rows``.
        """
        db = self._db_checked()
        cutoff = newest_seq - self.limits.max_rows
        if cutoff <= 0:
            return
        rotated = [row[0] for row in db.execute("SELECT request_id FROM captured WHERE seq <= ?", (cutoff,))]
        if not rotated:
            return
        db.executemany("INSERT OR REPLACE INTO forgotten (request_id, rotated_at) VALUES (?, ?)",
                       [(request_id, now) for request_id in rotated])
        db.execute("DELETE FROM feedback WHERE request_id IN (SELECT request_id FROM captured WHERE seq <= ?)",
                   (cutoff,))
        db.execute("DELETE FROM captured WHERE seq <= ?", (cutoff,))
        db.execute("DELETE FROM forgotten WHERE seq <= (SELECT MAX(seq) FROM forgotten) - ?", (self.limits.max_rows,))
        tx.bump("rotated", len(rotated))

    def _bounded_inputs(self, body: str) -> tuple[str | None, str | None, str, int]:
        """(inputs, excerpt, sha256, size): the whole body when it fits ``max_input_bytes``, else an excerpt."""
        raw = body.encode("utf-8")
        digest = hashlib.sha256(raw).hexdigest()
        if len(raw) <= self.limits.max_input_bytes:
            return body, None, digest, len(raw)
        return None, body[: self.limits.excerpt_chars], digest, len(raw)

    def _answer_columns(self, stable: VariantAnswer, canary: VariantAnswer) -> tuple[Any, ...]:
        return (_json_or_none(stable.classes), _json_or_none(canary.classes),
                self._probabilities_json(stable.probabilities), self._probabilities_json(canary.probabilities),
                stable.error, canary.error)

    def _probabilities_json(self, probabilities: Sequence[Sequence[float]] | None) -> str | None:
        if probabilities is None or sum(len(row) for row in probabilities) > self.limits.max_stored_probabilities:
            return None
        return json.dumps([[round(float(p), _PROBABILITY_DECIMALS) for p in row] for row in probabilities])

    # ---- reads --------------------------------------------------------------------------------------------

    def captured(self, since: float | None = None, until: float | None = None,
                 limit: int | None = None) -> list[CapturedRequest]:
        """Captured requests joined with their labels, newest first.

        Args:
            since: only requests received at or after this time (Unix seconds).
            until: only requests received before this time.
            limit: at most this many (the newest).
        """
        query = (
            "SELECT c.request_id, c.received_at, c.variant, c.path, c.batch_size, c.stable_classes, "
            "c.canary_classes, c.stable_probabilities, c.canary_probabilities, c.stable_error, c.canary_error, "
            "f.label, f.received_at, substr(coalesce(c.inputs, c.inputs_excerpt, ''), 1, ?), c.inputs_sha256, "
            "c.inputs IS NOT NULL "
            "FROM captured c LEFT JOIN feedback f ON f.request_id = c.request_id "
            "WHERE (? IS NULL OR c.received_at >= ?) AND (? IS NULL OR c.received_at < ?) "
            "ORDER BY c.seq DESC LIMIT ?")
        params = (self.limits.excerpt_chars, since, since, until, until, -1 if limit is None else limit)
        return [_captured_request(row) for row in self._read(query, params)]

    def inputs_of(self, request_id: str) -> str | None:
        """The whole request body of a capture; None when it was too big to keep or is not in the store."""
        rows = self._read("SELECT inputs FROM captured WHERE request_id = ?", (request_id,))
        return rows[0][0] if rows else None

    def counts(self) -> CaptureCounts:
        """Running totals (one consistent snapshot)."""
        with self._snapshot() as db:
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            kept = db.execute("SELECT COUNT(*) FROM captured").fetchone()[0]
            labelled = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        feedback = {name.removeprefix("feedback_"): int(value) for name, value in counters.items()
                    if name.startswith("feedback_")}
        return CaptureCounts(kept=int(kept), captured=int(counters.get("captured", 0)),
                             rotated=int(counters.get("rotated", 0)), duplicates=int(counters.get("duplicates", 0)),
                             dropped=int(counters.get("dropped", 0)), labelled=int(labelled), feedback=feedback)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query in it sees the same committed state (WAL: writers go on meanwhile)."""
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN")
                try:
                    yield db
                finally:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise CaptureStoreError(f"capture store {self.path}: {exc}") from exc

    def _read(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise CaptureStoreError(f"capture store {self.path}: {exc}") from exc

    # ---- the connection -----------------------------------------------------------------------------------

    def _db_checked(self) -> sqlite3.Connection:
        if self._db is None:
            raise CaptureStoreError(f"capture store {self.path} is not open")
        return self._db

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)  # shared by threads, one at a time (self._lock)
            except (OSError, sqlite3.Error) as exc:
                raise CaptureStoreError(f"cannot open the capture store {self.path}: {exc}") from exc
            try:
                _prepare(db)
            except sqlite3.Error as exc:
                db.close()
                raise CaptureStoreError(f"cannot open the capture store {self.path}: {exc}") from exc
            self._db = db
        return self._db


def captured(model: str, since: float | None = None, until: float | None = None, limit: int | None = None,
             paths: Paths | None = None) -> list[CapturedRequest]:
    """The captured requests of ``model`` joined with their labels, newest first (see :meth:`CaptureStore.captured`)."""
    with CaptureStore.for_model(model, paths) as store:
        return store.captured(since=since, until=until, limit=limit)


def capture_counts(model: str, paths: Paths | None = None) -> CaptureCounts:
    """The running totals of ``model``'s capture (see :class:`CaptureCounts`)."""
    with CaptureStore.for_model(model, paths) as store:
        return store.counts()


def _prepare(db: sqlite3.Connection) -> None:
    """WAL, a busy timeout, and the schema (created once; a newer schema is refused)."""
    db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a power cut may lose the last commits, never corrupt
    db.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > _SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than this code's ({_SCHEMA_VERSION})")
    if version < _SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(list(value))


def _tuple_or_none(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(value) for value in json.loads(text))


def _matrix_or_none(text: str | None) -> tuple[tuple[float, ...], ...] | None:
    return None if text is None else tuple(tuple(float(p) for p in row) for row in json.loads(text))


def _single(classes: tuple[int, ...] | None) -> int | None:
    return classes[0] if classes is not None and len(classes) == 1 else None


def _captured_request(row: Sequence[Any]) -> CapturedRequest:
    (request_id, received_at, variant, path, batch_size, stable_classes, canary_classes, stable_probabilities,
     canary_probabilities, stable_error, canary_error, label, labelled_at, excerpt, sha256, kept) = row
    return CapturedRequest(
        request_id=request_id, received_at=float(received_at), variant=variant, path=path, batch_size=batch_size,
        stable_classes=_tuple_or_none(stable_classes), canary_classes=_tuple_or_none(canary_classes),
        stable_probabilities=_matrix_or_none(stable_probabilities),
        canary_probabilities=_matrix_or_none(canary_probabilities),
        stable_error=stable_error, canary_error=canary_error,
        label=None if label is None else int(label), labelled_at=None if labelled_at is None else float(labelled_at),
        inputs_excerpt=excerpt, inputs_sha256=sha256, inputs_kept=bool(kept))
