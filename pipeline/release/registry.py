"""The release registry: every exported version, its lineage and every change of its state.

One of the three places release state lives (beside the version directories and each server's
``models.config``). It is a small transactional store behind SQLAlchemy 2: SQLite by default
(``$PIPELINE_HOME/registry.db``), any SQLAlchemy URL otherwise (Postgres in docker-compose/k8s).

Tables, created on first use:

- ``model_versions``: one row per (model, version) with its lineage and its *current* state.
- ``transitions``: one row per state change (from, to, when, Airflow run id, reason).
- ``events``: task failures reported by Airflow's ``on_failure_callback``.
- ``locks``: one row per locked model; cross-process mutual exclusion for releases and rollbacks.
- ``live_phases``: one row per phase of a live canary (shadow, each weighted step): its split, when it started,
  its decision and every figure of its analysis, updated at each look.

The life of a version (``_ALLOWED`` is the full table)::

    exported ─▶ staged ─▶ validated ─▶ [canary ─▶] promoted ─▶ superseded ─▶ retired (deleted from disk)
    exported | staged | validated | canary ─▶ rejected | failed ─▶ retired
    canary | promoted | superseded ─▶ rolled_back ─▶ retired
    superseded ─▶ promoted (a rollback makes a previous stable version stable again)

Exactly one version of a model is ``promoted`` (= stable now): promoting a version moves the previous
stable to ``superseded`` in the same transaction, and a partial unique index enforces it in the database.

Imported by DAG files at parse time: stdlib and SQLAlchemy only at module level, no I/O at import.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, PipelineError
from pipeline.settings import get_paths

_log = logging.getLogger(__name__)

_DEFAULT_LOCK_TIMEOUT_S = 600.0
_DEFAULT_LOCK_TTL_S = 1800.0
_DEFAULT_LOCK_POLL_S = 0.25
_DEFAULT_SQLITE_BUSY_TIMEOUT_S = 30.0
# Execution option that marks a connection whose transaction will write (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "pipeline_registry_write"


class State(StrEnum):
    """Where a version is in its release. Values are what the database stores."""

    EXPORTED = "exported"
    STAGED = "staged"
    VALIDATED = "validated"
    CANARY = "canary"
    PROMOTED = "promoted"  # stable now; exactly one per model
    SUPERSEDED = "superseded"  # was stable, replaced by a newer promotion; still a rollback target
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"  # deleted from disk
    FAILED = "failed"


_ALLOWED: dict[State, frozenset[State]] = {
    State.EXPORTED: frozenset({State.STAGED, State.REJECTED, State.FAILED, State.RETIRED}),
    State.STAGED: frozenset({State.VALIDATED, State.REJECTED, State.FAILED, State.RETIRED}),
    State.VALIDATED: frozenset(
        {State.CANARY, State.PROMOTED, State.REJECTED, State.FAILED, State.RETIRED}
    ),
    State.CANARY: frozenset({State.PROMOTED, State.REJECTED, State.ROLLED_BACK, State.FAILED}),
    State.PROMOTED: frozenset({State.SUPERSEDED, State.ROLLED_BACK}),
    State.SUPERSEDED: frozenset({State.PROMOTED, State.ROLLED_BACK, State.RETIRED}),
    State.REJECTED: frozenset({State.RETIRED}),
    State.ROLLED_BACK: frozenset({State.RETIRED}),
    State.FAILED: frozenset({State.RETIRED}),
    State.RETIRED: frozenset(),
}
# States of a version that was stable at some point and was not rolled back or deleted since.
_GOOD_STATES = (State.PROMOTED, State.SUPERSEDED)
# Lineage keys stored in their own columns; any other key goes to the ``extra`` JSON column.
_LINEAGE_COLUMNS = (
    "data_sha256",
    "airflow_run_id",
    "training_run_id",
    "params",
    "metrics",
    "export_path",
)


class RegistryConflict(PipelineError):
    """The registry refused a change that contradicts what it holds (a transition, a version clash)."""


class _UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (portable across SQLite and Postgres)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


_metadata = sa.MetaData()

model_versions = sa.Table(
    "model_versions",
    _metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("data_sha256", sa.String(64)),
    sa.Column("airflow_run_id", sa.String(250)),
    sa.Column("training_run_id", sa.String(250)),
    sa.Column("params", sa.JSON),
    sa.Column("metrics", sa.JSON),
    sa.Column("export_path", sa.Text),
    sa.Column("extra", sa.JSON),
)
# The database itself guarantees that a model has at most one stable version.
sa.Index(
    "uq_model_versions_one_promoted",
    model_versions.c.model,
    unique=True,
    sqlite_where=model_versions.c.state == State.PROMOTED.value,
    postgresql_where=model_versions.c.state == State.PROMOTED.value,
)

transitions = sa.Table(
    "transitions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("from_state", sa.String(32)),
    sa.Column("to_state", sa.String(32), nullable=False),
    sa.Column("at", _UTCDateTime, nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Index("ix_transitions_model_id", "model", "id"),
)

events = sa.Table(
    "events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("at", _UTCDateTime, nullable=False),
    sa.Index("ix_events_model_id", "model", "id"),
)

locks = sa.Table(
    "locks",
    _metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(250), nullable=False),
    sa.Column("acquired_at", _UTCDateTime, nullable=False),
    sa.Column("expires_at", _UTCDateTime, nullable=False),
)

live_phases = sa.Table(
    "live_phases",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("canary_percent", sa.Float, nullable=False),
    sa.Column("mirror_percent", sa.Float, nullable=False),
    sa.Column("started_at", _UTCDateTime, nullable=False),
    sa.Column("updated_at", _UTCDateTime, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # running | pass | fail | undecided
    sa.Column("figures", sa.JSON),
    sa.Column("summary", sa.Text, nullable=False, default=""),
    sa.Column("window", sa.JSON),  # where the phase's window starts in the proxy's log (path, offset)
    sa.UniqueConstraint("model", "run_id", "phase", name="uq_live_phases_run_phase"),
    sa.Index("ix_live_phases_model_id", "model", "id"),
)


@dataclass(frozen=True)
class VersionRecord:
    """One version of a model as the registry knows it: lineage and current state."""

    model: str
    version: int
    state: State
    created_at: datetime
    data_sha256: str | None = None
    airflow_run_id: str | None = None
    training_run_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    export_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransitionRecord:
    """One change of a version's state. ``from_state`` is None for the registration."""

    id: int
    model: str
    version: int
    from_state: State | None
    to_state: State
    at: datetime
    run_id: str | None
    reason: str


@dataclass(frozen=True)
class FailureEvent:
    """A task failure reported by Airflow."""

    id: int
    model: str
    run_id: str | None
    task_id: str | None
    reason: str
    at: datetime


@dataclass(frozen=True)
class LivePhase:
    """One phase of a live canary as recorded: its split, start, decision and the figures of its last look."""

    id: int
    model: str
    version: int
    run_id: str
    phase: str
    canary_percent: float
    mirror_percent: float
    started_at: datetime
    updated_at: datetime
    decision: str
    figures: dict[str, Any]
    summary: str
    window: dict[str, Any]

    @property
    def running(self) -> bool:
        return self.decision == "running"


@dataclass(frozen=True)
class LockInfo:
    """Who holds a model's lock and until when.

    Attributes:
        reentered: True when the owner already held the lock before this acquisition.
    """

    model: str
    owner: str
    acquired_at: datetime
    expires_at: datetime
    reentered: bool = False


class HeldLock:
    """What :meth:`Registry.lock` yields: the lock's facts and a way to extend it."""

    def __init__(self, registry: Registry, info: LockInfo, ttl_s: float) -> None:
        self._registry = registry
        self.info = info
        self._ttl_s = ttl_s

    def refresh(self, ttl_s: float | None = None) -> LockInfo:
        """Pushes the expiry ``ttl_s`` (default: the acquisition's) past now; call it from long work.

        Raises:
            DeadlineExceeded: the lock expired and another owner took it.
        """
        self.info = self._registry.refresh_lock(
            self.info.model, self.info.owner, ttl_s or self._ttl_s
        )
        return self.info


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Registry:
    """The release registry behind one SQLAlchemy URL.

    Construction is cheap and does no I/O: the engine is made, and the tables created, on first use.

    Args:
        url: SQLAlchemy URL; default ``get_paths().registry_url`` (``$PIPELINE_REGISTRY_URL`` or
            ``sqlite:///$PIPELINE_HOME/registry.db``).

    Raises:
        ConfigError: the URL cannot be parsed.
    """

    def __init__(self, url: str | URL | None = None) -> None:
        try:
            self._url = sa.make_url(url or get_paths().registry_url)
        except ArgumentError as exc:
            raise ConfigError(f"registry URL {url!r} is not a SQLAlchemy URL: {exc}") from exc
        self._engine: Engine | None = None
        self._engine_guard = threading.Lock()

    @property
    def url(self) -> str:
        """The URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def close(self) -> None:
        """Closes pooled connections; the registry reconnects on next use."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ----------------------------------------------------------------- versions

    def register_version(self, model: str, version: int, lineage: Mapping[str, Any]) -> VersionRecord:
        """Records a freshly exported version in state ``exported``.

        Idempotent: registering the same version again from the same ``airflow_run_id`` returns the
        existing record (an Airflow task retry), whatever the rest of the lineage says.

        Args:
            model: Model name.
            version: The version directory's number.
            lineage: ``data_sha256``, ``airflow_run_id``, ``training_run_id``, ``params``, ``metrics``,
                ``export_path`` and optionally ``created_at`` (aware datetime); other keys are kept in
                ``extra`` (e.g. the code version).

        Raises:
            RegistryConflict: the version is already registered by another run.
        """
        row = _lineage_row(model, version, lineage)
        try:
            with self._write() as conn:
                if _select_version(conn, model, version) is None:
                    conn.execute(model_versions.insert().values(**row, state=State.EXPORTED.value))
                    _insert_transition(
                        conn, model, version, None, State.EXPORTED, row["airflow_run_id"], "registered"
                    )
        except IntegrityError:
            pass  # a concurrent registration won the insert; its row is compared below
        record = self.get_version(model, version)
        _check_same_run(record, row["airflow_run_id"])
        return record

    def transition(
        self,
        model: str,
        version: int,
        to_state: State | str,
        *,
        run_id: str | None = None,
        reason: str = "",
    ) -> VersionRecord:
        """Moves a version to ``to_state`` after checking the move is allowed.

        Moving to the state a version is already in does nothing (Airflow task retries). Promoting
        supersedes the current stable version in the same transaction.

        Raises:
            NotFound: the version is not registered.
            RegistryConflict: the move is not allowed (e.g. promoting a rejected version).
        """
        target = _parse_state(to_state)
        if target is State.SUPERSEDED:
            raise RegistryConflict("'superseded' is set by promoting another version, not directly")
        with self._write() as conn:
            states = _lock_model_rows(conn, model)
            _move(conn, states, model, version, target, run_id, reason)
        return self.get_version(model, version)

    def check_transition(self, model: str, version: int, to_state: State | str) -> None:
        """Raises what :meth:`transition` would raise, changing nothing.

        Call it before touching a server, so a move the registry will refuse never leaves the server
        and the registry disagreeing.

        Raises:
            NotFound: the version is not registered.
            RegistryConflict: the move is not allowed.
        """
        target = _parse_state(to_state)
        states = {record.version: record.state for record in self.versions(model)}
        current = _current_state(states, model, version)
        if current is not target:
            _check_allowed(model, version, current, target)
            _check_single_canary(states, model, version, target)

    def record_rollback(
        self,
        model: str,
        bad_version: int,
        *,
        restore_version: int | None = None,
        run_id: str | None = None,
        reason: str = "",
    ) -> None:
        """Marks ``bad_version`` rolled back and, when given, makes ``restore_version`` stable again.

        Both changes happen in one transaction, so the registry never shows a model without a stable
        version in between. A failed canary passes no ``restore_version``: the stable one stays.

        Raises:
            NotFound: a version is not registered.
            RegistryConflict: a move is not allowed (e.g. restoring a rejected version).
        """
        with self._write() as conn:  # an error in either move rolls back both
            states = _lock_model_rows(conn, model)
            _move(conn, states, model, bad_version, State.ROLLED_BACK, run_id, reason)
            if restore_version is not None:
                why = f"restored by the rollback of version {bad_version}: {reason}".rstrip(": ")
                _move(conn, states, model, restore_version, State.PROMOTED, run_id, why)

    def get_version(self, model: str, version: int) -> VersionRecord:
        """The registered version.

        Raises:
            NotFound: the version is not registered.
        """
        with self._read() as conn:
            record = _select_version(conn, model, version)
        if record is None:
            raise NotFound(f"{model} version {version} is not in the registry {self.url}")
        return record

    def versions(self, model: str) -> list[VersionRecord]:
        """Every registered version of ``model``, oldest first."""
        query = (
            sa.select(model_versions)
            .where(model_versions.c.model == model)
            .order_by(model_versions.c.version)
        )
        with self._read() as conn:
            return [_version_record(row) for row in conn.execute(query).mappings()]

    def models(self) -> list[str]:
        """Names of the models with at least one registered version."""
        query = sa.select(model_versions.c.model).distinct().order_by(model_versions.c.model)
        with self._read() as conn:
            return list(conn.execute(query).scalars())

    def history(self, model: str, limit: int | None = None) -> list[TransitionRecord]:
        """State changes of ``model``'s versions, newest first."""
        query = (
            sa.select(transitions)
            .where(transitions.c.model == model)
            .order_by(transitions.c.id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            return [_transition_record(row) for row in conn.execute(query).mappings()]

    def stable_version(self, model: str) -> int | None:
        """The version that is stable (``promoted``) now, or None."""
        return self._version_in_state(model, State.PROMOTED)

    def canary_version(self, model: str) -> int | None:
        """The version in canary now, or None."""
        return self._version_in_state(model, State.CANARY)

    def last_good_version(self, model: str, before: int | None = None) -> int | None:
        """The newest version that was stable at some point and not rolled back, rejected or deleted since.

        Args:
            model: Model name.
            before: Only versions lower than this (a rollback passes the version it moves away from).
        """
        query = sa.select(sa.func.max(model_versions.c.version)).where(
            model_versions.c.model == model,
            model_versions.c.state.in_([state.value for state in _GOOD_STATES]),
        )
        if before is not None:
            query = query.where(model_versions.c.version < before)
        with self._read() as conn:
            return conn.execute(query).scalar()

    def passed_validation(self, model: str, version: int) -> bool:
        """Whether the version reached ``validated`` at some point."""
        query = sa.select(sa.func.count()).where(
            transitions.c.model == model,
            transitions.c.version == version,
            transitions.c.to_state == State.VALIDATED.value,
        )
        with self._read() as conn:
            return bool(conn.execute(query).scalar())

    def validated_versions(self, model: str) -> set[int]:
        """Every version that reached ``validated`` at some point (one query; see :meth:`passed_validation`)."""
        query = sa.select(transitions.c.version).distinct().where(
            transitions.c.model == model, transitions.c.to_state == State.VALIDATED.value)
        with self._read() as conn:
            return {int(version) for version in conn.execute(query).scalars()}

    def protected_versions(self, model: str) -> set[int]:
        """Versions retention must keep: the stable one, the canary and the rollback target."""
        stable = self.stable_version(model)
        candidates = (stable, self.canary_version(model), self.last_good_version(model, before=stable))
        return {version for version in candidates if version is not None}

    def _version_in_state(self, model: str, state: State) -> int | None:
        query = sa.select(sa.func.max(model_versions.c.version)).where(
            model_versions.c.model == model, model_versions.c.state == state.value
        )
        with self._read() as conn:
            return conn.execute(query).scalar()

    # ------------------------------------------------------------------- events

    def record_failure(self, model: str, run_id: str | None, task_id: str | None, reason: str) -> None:
        """Records a failed task (Airflow's ``on_failure_callback``); changes no version's state."""
        values = dict(
            model=model, kind="failure", run_id=run_id, task_id=task_id, reason=reason, at=_utcnow()
        )
        with self._write() as conn:
            conn.execute(events.insert().values(**values))

    def failures(self, model: str, limit: int | None = None) -> list[FailureEvent]:
        """Recorded task failures of ``model``, newest first."""
        query = (
            sa.select(events)
            .where(events.c.model == model, events.c.kind == "failure")
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).mappings()
            return [
                FailureEvent(r["id"], r["model"], r["run_id"], r["task_id"], r["reason"], r["at"])
                for r in rows
            ]

    # -------------------------------------------------------------- live phases

    def start_live_phase(self, model: str, version: int, run_id: str, phase: str, canary_percent: float,
                         mirror_percent: float, window: Mapping[str, Any]) -> LivePhase:
        """Record that a live phase starts now; idempotent: a phase this run already started is returned as is
        (a sensor's later look, or a retry, keeps the phase's window)."""
        now = _utcnow()
        values = dict(model=model, version=version, run_id=run_id, phase=phase, canary_percent=canary_percent,
                      mirror_percent=mirror_percent, started_at=now, updated_at=now, decision="running",
                      figures={}, summary="", window=dict(window))
        with self._write() as conn:
            existing = _select_live_phase(conn, model, run_id, phase)
            if existing is not None:
                return existing
            conn.execute(live_phases.insert().values(**values))
            started = _select_live_phase(conn, model, run_id, phase)
        assert started is not None
        return started

    def update_live_phase(self, phase_id: int, decision: str, figures: Mapping[str, Any], summary: str) -> None:
        """Record a look at a phase: its decision so far and the figures behind it."""
        with self._write() as conn:
            conn.execute(live_phases.update().where(live_phases.c.id == phase_id).values(
                decision=decision, figures=dict(figures), summary=summary, updated_at=_utcnow()))

    def live_phases(self, model: str, run_id: str | None = None, limit: int | None = None) -> list[LivePhase]:
        """Live phases of ``model`` (of one run when given), newest first."""
        query = sa.select(live_phases).where(live_phases.c.model == model)
        if run_id is not None:
            query = query.where(live_phases.c.run_id == run_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(live_phases.c.id.desc()).limit(limit)).mappings()
            return [_live_phase(row) for row in rows]

    # -------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(
        self,
        model: str,
        owner: str,
        timeout_s: float = _DEFAULT_LOCK_TIMEOUT_S,
        ttl_s: float = _DEFAULT_LOCK_TTL_S,
    ) -> Iterator[HeldLock]:
        """Holds ``model``'s lock for the ``with`` block, across processes and hosts.

        If ``owner`` already held the lock (taken by an earlier task of the same Airflow run), the block
        runs under it and leaves it held on exit.

        Raises:
            DeadlineExceeded: another owner kept the lock for ``timeout_s``; the message names it.
        """
        info = self.acquire_lock(model, owner, timeout_s=timeout_s, ttl_s=ttl_s)
        try:
            yield HeldLock(self, info, ttl_s)
        finally:
            if not info.reentered and not self.release_lock(model, owner):
                _log.warning(
                    "lock on %s by %s expired and was taken by another owner during the block; "
                    "raise ttl_s or call refresh() in long work",
                    model,
                    owner,
                )

    def acquire_lock(
        self,
        model: str,
        owner: str,
        timeout_s: float = _DEFAULT_LOCK_TIMEOUT_S,
        ttl_s: float = _DEFAULT_LOCK_TTL_S,
    ) -> LockInfo:
        """Takes ``model``'s lock for ``owner`` until released or ``ttl_s`` passes; waits ``timeout_s``.

        Use this (and :meth:`release_lock`) to hold a lock across tasks of one Airflow run, with the
        run id as owner. Re-acquiring by the same owner succeeds and extends the expiry. An expired lock
        of another owner (a crashed holder) is taken over.

        Raises:
            DeadlineExceeded: another owner kept the lock for ``timeout_s``; the message names it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            info = self._attempt_lock(model, owner, ttl_s)
            if info is not None:
                return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = self.lock_holder(model)
                raise DeadlineExceeded(_lock_timeout_message(model, owner, timeout_s, holder))
            time.sleep(min(remaining, _DEFAULT_LOCK_POLL_S * random.uniform(0.5, 1.5)))

    def release_lock(self, model: str, owner: str) -> bool:
        """Releases ``model``'s lock if ``owner`` holds it; False if not (expired and taken, never held)."""
        query = locks.delete().where(locks.c.model == model, locks.c.owner == owner)
        with self._write() as conn:
            return conn.execute(query).rowcount == 1

    def refresh_lock(self, model: str, owner: str, ttl_s: float = _DEFAULT_LOCK_TTL_S) -> LockInfo:
        """Moves the expiry of ``owner``'s lock to ``ttl_s`` from now.

        Raises:
            DeadlineExceeded: ``owner`` no longer holds the lock (it expired and another owner took it).
        """
        with self._write() as conn:
            expires_at = _utcnow() + timedelta(seconds=ttl_s)
            updated = _update_lock(conn, model, locks.c.owner == owner, expires_at=expires_at)
            info = _read_lock(conn, model) if updated else None
        if info is None:
            raise DeadlineExceeded(
                f"lock on {model!r} by {owner!r} was lost (now held by "
                f"{_describe_holder(self.lock_holder(model))}); stop and rerun the release"
            )
        return info

    def lock_holder(self, model: str) -> LockInfo | None:
        """Who holds ``model``'s lock (possibly expired), or None."""
        with self._read() as conn:
            return _read_lock(conn, model)

    def _attempt_lock(self, model: str, owner: str, ttl_s: float) -> LockInfo | None:
        """One atomic try: re-enter our own lock, take over an expired one, or insert a new row."""
        now = _utcnow()
        expires_at = now + timedelta(seconds=ttl_s)
        with self._write() as conn:
            if _update_lock(conn, model, locks.c.owner == owner, expires_at=expires_at):
                return _read_lock(conn, model, reentered=True)
            taken = dict(owner=owner, acquired_at=now, expires_at=expires_at)
            previous = _read_lock(conn, model)
            if previous is not None and _update_lock(conn, model, locks.c.expires_at < now, **taken):
                _log.warning("took over the expired lock on %s from %s", model, previous.owner)
                return _read_lock(conn, model)
            try:
                with conn.begin_nested():  # a savepoint, so a lost insert race keeps the transaction usable
                    conn.execute(locks.insert().values(model=model, **taken))
            except IntegrityError:
                return None
            return _read_lock(conn, model)

    # --------------------------------------------------------------- plumbing

    def _ready(self) -> Engine:
        """The engine, created with the tables on first use."""
        with self._engine_guard:
            if self._engine is None:
                engine = _create_engine(self._url)
                _create_schema(engine)
                self._engine = engine
            return self._engine

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed at the end of the block."""
        with self._ready().connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._ready().connect() as conn:
            yield conn


# ------------------------------------------------------------------- engine


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": _DEFAULT_SQLITE_BUSY_TIMEOUT_S})
    sa.event.listen(engine, "connect", _configure_sqlite_connection)
    sa.event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite's own implicit BEGIN is deferred and skips SELECTs; we emit BEGIN ourselves instead
    # (SQLAlchemy's documented recipe), so reads see one snapshot and writers take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while a writer commits; the busy timeout makes writers wait, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(_DEFAULT_SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_sqlite_transaction(conn: Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock at once (waiting up to the busy timeout). A deferred
    # transaction that reads and then writes can fail with "database is locked" without waiting.
    writes = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _create_schema(engine: Engine) -> None:
    """Creates missing tables; a second try covers another process creating them at the same time."""
    for attempt in range(2):
        try:
            with engine.connect() as conn:
                conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    _metadata.create_all(conn)
            return
        except DBAPIError:
            if attempt == 1:
                raise
            time.sleep(_DEFAULT_LOCK_POLL_S)


# ------------------------------------------------------------- version rows


def _lineage_row(model: str, version: int, lineage: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"{model} version must be a non-negative integer, got {version!r}")
    created_at = lineage.get("created_at") or _utcnow()
    if not isinstance(created_at, datetime) or created_at.tzinfo is None:
        raise ConfigError(f"lineage.created_at must be an aware datetime, got {created_at!r}")
    row: dict[str, Any] = {key: lineage.get(key) for key in _LINEAGE_COLUMNS}
    row["params"] = dict(row["params"] or {})
    row["metrics"] = dict(row["metrics"] or {})
    extra = {k: v for k, v in lineage.items() if k not in _LINEAGE_COLUMNS and k != "created_at"}
    return {**row, "model": model, "version": version, "created_at": created_at, "extra": extra}


def _check_same_run(record: VersionRecord, airflow_run_id: str | None) -> None:
    if record.airflow_run_id != airflow_run_id:
        raise RegistryConflict(
            f"{record.model} version {record.version} is already registered by run "
            f"{record.airflow_run_id!r}, not {airflow_run_id!r}; versions only grow: export a new one"
        )


def _select_version(conn: Connection, model: str, version: int) -> VersionRecord | None:
    query = sa.select(model_versions).where(
        model_versions.c.model == model, model_versions.c.version == version
    )
    row = conn.execute(query).mappings().first()
    return None if row is None else _version_record(row)


def _version_record(row: Mapping[Any, Any]) -> VersionRecord:
    return VersionRecord(
        model=row["model"],
        version=row["version"],
        state=State(row["state"]),
        created_at=row["created_at"],
        data_sha256=row["data_sha256"],
        airflow_run_id=row["airflow_run_id"],
        training_run_id=row["training_run_id"],
        params=row["params"] or {},
        metrics=row["metrics"] or {},
        export_path=row["export_path"],
        extra=row["extra"] or {},
    )


def _select_live_phase(conn: Connection, model: str, run_id: str, phase: str) -> LivePhase | None:
    row = conn.execute(sa.select(live_phases).where(
        live_phases.c.model == model, live_phases.c.run_id == run_id, live_phases.c.phase == phase)).mappings().first()
    return None if row is None else _live_phase(row)


def _live_phase(row: Mapping[Any, Any]) -> LivePhase:
    return LivePhase(row["id"], row["model"], row["version"], row["run_id"], row["phase"], row["canary_percent"],
                     row["mirror_percent"], row["started_at"], row["updated_at"], row["decision"],
                     dict(row["figures"] or {}), row["summary"] or "", dict(row["window"] or {}))


def _transition_record(row: Mapping[Any, Any]) -> TransitionRecord:
    from_state = row["from_state"]
    return TransitionRecord(
        id=row["id"],
        model=row["model"],
        version=row["version"],
        from_state=None if from_state is None else State(from_state),
        to_state=State(row["to_state"]),
        at=row["at"],
        run_id=row["run_id"],
        reason=row["reason"],
    )


# ---------------------------------------------------------------- transitions


def _parse_state(state: State | str) -> State:
    try:
        return State(state)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise RegistryConflict(f"unknown state {state!r}; one of: {names}") from None


def _lock_model_rows(conn: Connection, model: str) -> dict[int, State]:
    """The current state of every version of ``model``, row-locked until commit (Postgres).

    Locking all of a model's rows serializes concurrent transitions of one model, so two promotions
    can't both see the old stable. SQLite gets the same from BEGIN IMMEDIATE (FOR UPDATE is dropped).
    """
    query = (
        sa.select(model_versions.c.version, model_versions.c.state)
        .where(model_versions.c.model == model)
        .order_by(model_versions.c.version)  # one locking order, so two transactions can't deadlock
        .with_for_update()
    )
    return {version: State(state) for version, state in conn.execute(query)}


def _current_state(states: Mapping[int, State], model: str, version: int) -> State:
    if version not in states:
        raise NotFound(f"{model} version {version} is not in the registry; register it first")
    return states[version]


def _check_allowed(model: str, version: int, current: State, target: State) -> None:
    allowed = _ALLOWED[current]
    if target not in allowed:
        options = ", ".join(sorted(state.value for state in allowed)) or "nothing (final state)"
        raise RegistryConflict(
            f"cannot move {model} version {version} from {current.value} to {target.value}; "
            f"from {current.value} it may go to: {options}"
        )


def _check_single_canary(states: Mapping[int, State], model: str, version: int, target: State) -> None:
    if target is not State.CANARY:
        return
    others = [v for v, state in states.items() if state is State.CANARY and v != version]
    if others:
        raise RegistryConflict(
            f"{model} version {others[0]} is already in canary; promote it or roll it back "
            f"before putting version {version} in canary"
        )


def _move(
    conn: Connection,
    states: dict[int, State],
    model: str,
    version: int,
    target: State,
    run_id: str | None,
    reason: str,
) -> None:
    """Moves one version to ``target`` inside the caller's transaction; ``states`` follows along.

    Already being in ``target`` is not an error, so a retried task changes nothing.
    """
    current = _current_state(states, model, version)
    if current is target:
        return
    _check_allowed(model, version, current, target)
    _check_single_canary(states, model, version, target)
    if target is State.PROMOTED:
        for other, state in list(states.items()):
            if state is State.PROMOTED:  # exactly one stable: the old one steps down first
                why = f"superseded by version {version}"
                _set_state(conn, model, other, state, State.SUPERSEDED, run_id, why)
                states[other] = State.SUPERSEDED
    _set_state(conn, model, version, current, target, run_id, reason)
    states[version] = target


def _set_state(
    conn: Connection,
    model: str,
    version: int,
    current: State,
    target: State,
    run_id: str | None,
    reason: str,
) -> None:
    conn.execute(
        model_versions.update()
        .where(model_versions.c.model == model, model_versions.c.version == version)
        .values(state=target.value)
    )
    _insert_transition(conn, model, version, current, target, run_id, reason)


def _insert_transition(
    conn: Connection,
    model: str,
    version: int,
    current: State | None,
    target: State,
    run_id: str | None,
    reason: str,
) -> None:
    conn.execute(
        transitions.insert().values(
            model=model,
            version=version,
            from_state=None if current is None else current.value,
            to_state=target.value,
            at=_utcnow(),
            run_id=run_id,
            reason=reason,
        )
    )


# ---------------------------------------------------------------------- locks


def _update_lock(conn: Connection, model: str, condition: Any, **values: Any) -> bool:
    """Updates ``model``'s lock row where ``condition`` holds; True when a row changed (atomic)."""
    query = locks.update().where(locks.c.model == model, condition).values(**values)
    return conn.execute(query).rowcount == 1


def _read_lock(conn: Connection, model: str, reentered: bool = False) -> LockInfo | None:
    row = conn.execute(sa.select(locks).where(locks.c.model == model)).mappings().first()
    if row is None:
        return None
    return LockInfo(row["model"], row["owner"], row["acquired_at"], row["expires_at"], reentered)


def _describe_holder(holder: LockInfo | None) -> str:
    if holder is None:
        return "nobody"
    since, until = holder.acquired_at.isoformat(), holder.expires_at.isoformat()
    return f"{holder.owner!r} since {since}, expiring {until}"


def _lock_timeout_message(model: str, owner: str, timeout_s: float, holder: LockInfo | None) -> str:
    return (
        f"{owner!r} waited {timeout_s:g}s for the lock on {model!r}, held by {_describe_holder(holder)}; "
        "wait for that release or rollback to finish, or if its holder died, for the lock to expire "
        "(or release it by hand with Registry.release_lock)"
    )
