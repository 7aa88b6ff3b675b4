"""The release registry: every exported version, its lineage and every change of its state.

One of the three places release state lives (beside the version directories and each server's
``models.config``). It is a small transactional store behind SQLAlchemy 2: SQLite by default
(``$PIPELINE_HOME/registry.db``), any SQLAlchemy URL otherwise (Postgres in docker-compose/k8s).

Tables, created on first use:

- ``model_versions``: one row per (model, version) with its lineage and its *current* state.
- ``transitions``: one row per state change (from, to, when, Airflow run id, reason).
- ``events``: task failures reported by Airflow's ``on_failure_callback``.
- ``locks``: one row per locked model; cross-process mutual exclusion for releases and rollbacks. Each row records
  its holder (host, pid and start time, Airflow run): a lock whose holder died is taken over at once
  (:mod:`pipeline.release.lock_owner`), an expired one too.
- ``preemptions``: one row per release lock an on-call rollback took; the release stops at its next step.
- ``live_phases``: one row per phase of a live canary (shadow, each weighted step): its split, when it started,
  its decision and every figure of its analysis, updated at each look.
- ``monitor_runs``: one row per production monitor run (:mod:`pipeline.monitoring`): the stable version watched,
  the live window it judged, its verdict (drift, accuracy drop, the streak of drifted windows, the alarm), every
  figure of its tests and where its report is.

The life of a version (``_ALLOWED`` is the full table)::

    exported ─▶ staged ─▶ validated ─▶ [canary ─▶] promoted ─▶ superseded ─▶ retired (deleted from disk)
    exported | staged | validated | canary ─▶ rejected | failed ─▶ retired
    canary | promoted | superseded ─▶ rolled_back ─▶ retired
    superseded ─▶ promoted (a rollback makes a previous stable version stable again)

Exactly one version of a model is ``promoted`` (= stable now): promoting a version moves the previous
stable to ``superseded`` in the same transaction, and a partial unique index enforces it in the database.

Every wait is bounded (:data:`WAIT_ENV`), reads never need the write lock (SQLite in WAL mode; the schema is only
created when missing), and a locked, unreachable or corrupt registry is one :class:`RegistryUnavailable` naming it.
A registry missing or emptied while released versions are on disk is refused (:class:`RegistryMissing`), never
recreated empty: ``pipeline registry init --adopt`` registers the versions on disk again.

Imported by DAG files at parse time: stdlib and SQLAlchemy only at module level, no I/O at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, PipelineError, Preempted
from pipeline.release.lock_owner import RELEASE, Holder, Liveness, liveness, this_process
from pipeline.settings import get_paths

_log = logging.getLogger(__name__)

_DEFAULT_LOCK_TIMEOUT_S = 600.0
_DEFAULT_LOCK_TTL_S = 1800.0
_DEFAULT_LOCK_POLL_S = 0.25
_AIRFLOW_ASK_EVERY_S = 5.0  # how often a waiting acquisition asks Airflow whether the holder's run still runs
WAIT_ENV = "PIPELINE_REGISTRY_WAIT_S"
_DEFAULT_WAIT_S = 30.0  # a write waits this long for another writer
_READ_WAIT_S = 5.0  # a read waits at most this long (WAL: readers do not wait for writers)
_CONNECT_TIMEOUT_S = 10.0
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
    "data_version",
    "data_parts",
)


class RegistryConflict(PipelineError):
    """The registry refused a change that contradicts what it holds (a transition, a version clash)."""


class RegistryUnavailable(PipelineError):
    """The registry cannot be used now: locked by another process past the wait, unreachable, or corrupt.
    The message names the file (or the URL, password hidden) and what to do."""


class RegistryMissing(RegistryUnavailable):
    """The registry is missing or empty while released versions exist on disk: it is not recreated empty."""


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
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("data_sha256", sa.String(64)),
    sa.Column("airflow_run_id", sa.String(250)),
    sa.Column("training_run_id", sa.String(250)),
    sa.Column("params", sa.JSON),
    sa.Column("metrics", sa.JSON),
    sa.Column("export_path", sa.Text),
    sa.Column("extra", sa.JSON),
    sa.Column("data_version", sa.String(64)),  # the data version trained on (pipeline.data.parts; added later)
    sa.Column("data_parts", sa.JSON),  # its ingested parts: sha256, examples, origin (added later)
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
    sa.Column("version", sa.BigInteger, nullable=False),
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
    sa.Column("holder", sa.JSON),  # lock_owner.Holder: host, pid, start time, purpose, Airflow run (added later)
)

# One row per lock an on-call rollback took from a release: the release finds it at its next step and stops.
preemptions = sa.Table(
    "preemptions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(250), nullable=False),  # the release that lost the lock
    sa.Column("by_owner", sa.String(250), nullable=False),
    sa.Column("at", _UTCDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Index("ix_preemptions_model_owner", "model", "owner"),
)
# Columns added to existing tables after their first release: (table, column), added on first use when missing.
_ADDED_COLUMNS = (("locks", "holder"), ("model_versions", "data_version"), ("model_versions", "data_parts"))

live_phases = sa.Table(
    "live_phases",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
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


monitor_runs = sa.Table(
    "monitor_runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.BigInteger),  # the stable version watched (None: nothing stable)
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", _UTCDateTime, nullable=False),
    sa.Column("window_since", sa.Float),  # Unix seconds; None: from the first capture
    sa.Column("window_until", sa.Float, nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("labelled", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # ok | drift | alarm | no_verdict
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("accuracy_dropped", sa.Boolean, nullable=False),
    sa.Column("streak", sa.Integer, nullable=False),  # drifted windows in a row, this one included
    sa.Column("figures", sa.JSON),
    sa.Column("report", sa.Text),  # the report page, relative to the pipeline home
    sa.Column("summary", sa.Text, nullable=False, default=""),
    sa.Index("ix_monitor_runs_model_id", "model", "id"),
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
    data_version: str | None = None
    data_parts: list[dict[str, Any]] = field(default_factory=list)


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
    """A recorded event: a task failure reported by Airflow (``kind`` failure), a reconcile."""

    id: int
    model: str
    run_id: str | None
    task_id: str | None
    reason: str
    at: datetime
    kind: str = "failure"


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
class MonitorRun:
    """One production monitor run as recorded: the window it judged, its verdict and its figures."""

    id: int
    model: str
    version: int | None
    run_id: str
    at: datetime
    window_since: float | None
    window_until: float
    requests: int
    labelled: int
    decision: str
    drifted: bool
    accuracy_dropped: bool
    streak: int
    figures: dict[str, Any]
    report: str | None
    summary: str


@dataclass(frozen=True)
class LockInfo:
    """Who holds a model's lock and until when.

    Attributes:
        holder: the process that took or last confirmed it (None in rows written before holders were recorded).
        reentered: True when the owner already held the lock before this acquisition.
    """

    model: str
    owner: str
    acquired_at: datetime
    expires_at: datetime
    reentered: bool = False
    holder: Holder | None = None

    @property
    def expired(self) -> bool:
        return self.expires_at < _utcnow()

    def describe(self) -> str:
        """``'<owner>' (<holder>) since <t>, expiring <t>``: who to ask, or what to wait for."""
        who = f"{self.owner!r}" + (f" ({self.holder.describe()})" if self.holder else "")
        return f"{who} since {self.acquired_at.isoformat()}, expiring {self.expires_at.isoformat()}"


@dataclass(frozen=True)
class Preemption:
    """An on-call rollback took a release's lock: the release stops at its next step."""

    model: str
    owner: str
    by_owner: str
    at: datetime
    reason: str

    def message(self) -> str:
        return (f"{self.model}: release {self.owner!r} was preempted by {self.by_owner!r} at {self.at:%H:%M:%SZ} "
                f"({self.reason or 'on-call rollback'}); it stops here and changes no server. Production serves "
                f"what the rollback left: `pipeline status {self.model}`")


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

    Construction is cheap and does no I/O: the engine is made, and the tables created, on first use. Every wait is
    bounded and every database failure is a :class:`RegistryUnavailable` naming the file (or URL) and what to do.

    Args:
        url: SQLAlchemy URL; default ``get_paths().registry_url`` (``$PIPELINE_REGISTRY_URL`` or
            ``sqlite:///$PIPELINE_HOME/registry.db``).
        models_dir: the pipeline home's ``models/`` directory. When given, a registry found missing or empty while
            versions exported by a release are there raises :class:`RegistryMissing` instead of being created empty
            (rollback would be impossible). Default: the home's, when ``url`` is the home's registry (whoever opens
            it: a task, the CLI, an alert, the models pages).
        guard: False only to create a registry beside such versions on purpose (``pipeline registry init --adopt``).
        wait_s: how long a write waits for another writer (SQLite's busy timeout, Postgres's ``lock_timeout``);
            a read waits at most :data:`_READ_WAIT_S`. Default ``$PIPELINE_REGISTRY_WAIT_S`` or 30 s.

    Raises:
        ConfigError: the URL cannot be parsed.
    """

    def __init__(self, url: str | URL | None = None, *, models_dir: Path | None = None, guard: bool = True,
                 wait_s: float | None = None) -> None:
        paths = get_paths()
        url = paths.registry_url if url is None else url
        if guard and models_dir is None and str(url) == paths.registry_url:
            models_dir = paths.models_dir
        try:
            self._url = sa.make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"registry URL {url!r} is not a SQLAlchemy URL: {exc}") from exc
        self._models_dir = models_dir if guard else None
        self._wait_s = _configured_wait_s() if wait_s is None else float(wait_s)
        self._engine: Engine | None = None
        self._engine_guard = threading.Lock()

    @property
    def url(self) -> str:
        """The URL, password hidden."""
        return self._url.render_as_string(hide_password=True)

    @property
    def where(self) -> str:
        """What an error names: the SQLite file, else the URL (password hidden)."""
        database = _sqlite_file(self._url)
        return str(database) if database is not None else self.url

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def close(self) -> None:
        """Closes pooled connections; the registry reconnects on next use."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ensure_schema(self) -> None:
        """Connects and creates missing tables now (first use does it anyway).

        Export calls it before it writes a version, so a version a release put on disk always has a registry.

        Raises:
            RegistryMissing: the registry is missing or empty while released versions are on disk.
            RegistryUnavailable: it cannot be reached, is locked past the wait, or is corrupt.
        """
        self._ready()

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
        self.record_event(model, "failure", run_id, task_id, reason)

    def record_event(self, model: str, kind: str, run_id: str | None, task_id: str | None, reason: str) -> None:
        """Records something that happened to ``model`` (``failure``, ``reconcile``); changes no version's state."""
        values = dict(model=model, kind=kind, run_id=run_id, task_id=task_id, reason=reason, at=_utcnow())
        with self._write() as conn:
            conn.execute(events.insert().values(**values))

    def failures(self, model: str, limit: int | None = None) -> list[FailureEvent]:
        """Recorded task failures of ``model``, newest first."""
        return self.events(model, "failure", limit)

    def events(self, model: str, kind: str | None = None, limit: int | None = None) -> list[FailureEvent]:
        """Recorded events of ``model`` (of one ``kind`` when given), newest first."""
        query = sa.select(events).where(events.c.model == model)
        if kind is not None:
            query = query.where(events.c.kind == kind)
        with self._read() as conn:
            rows = conn.execute(query.order_by(events.c.id.desc()).limit(limit)).mappings()
            return [FailureEvent(r["id"], r["model"], r["run_id"], r["task_id"], r["reason"], r["at"], r["kind"])
                    for r in rows]

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

    # ------------------------------------------------------------------ monitor runs

    def record_monitor_run(self, run: Mapping[str, Any]) -> MonitorRun:
        """Record one monitor run (the fields of :class:`MonitorRun` but ``id`` and ``at``); returns it."""
        values = {column: run.get(column) for column in _MONITOR_FIELDS}
        values.update(at=_utcnow(), figures=dict(run.get("figures") or {}), summary=str(run.get("summary") or ""))
        with self._write() as conn:
            inserted = conn.execute(monitor_runs.insert().values(**values)).inserted_primary_key
            assert inserted is not None
            row_id = inserted[0]
            row = conn.execute(sa.select(monitor_runs).where(monitor_runs.c.id == row_id)).mappings().one()
        return _monitor_run(row)

    def monitor_runs(self, model: str, limit: int | None = None) -> list[MonitorRun]:
        """Monitor runs of ``model``, newest first."""
        query = sa.select(monitor_runs).where(monitor_runs.c.model == model)
        with self._read() as conn:
            rows = conn.execute(query.order_by(monitor_runs.c.id.desc()).limit(limit)).mappings()
            return [_monitor_run(row) for row in rows]

    # -------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def lock(
        self,
        model: str,
        owner: str,
        timeout_s: float = _DEFAULT_LOCK_TIMEOUT_S,
        ttl_s: float = _DEFAULT_LOCK_TTL_S,
        *,
        purpose: str = RELEASE,
        preempt: Collection[str] = (),
        reason: str = "",
    ) -> Iterator[HeldLock]:
        """Holds ``model``'s lock for the ``with`` block, across processes and hosts.

        If ``owner`` already held the lock (taken by an earlier task of the same Airflow run), the block
        runs under it and leaves it held on exit. See :meth:`acquire_lock` for the rest.

        Raises:
            DeadlineExceeded: another owner kept the lock for ``timeout_s``; the message names it.
        """
        info = self.acquire_lock(model, owner, timeout_s=timeout_s, ttl_s=ttl_s, purpose=purpose, preempt=preempt,
                                 reason=reason)
        try:
            yield HeldLock(self, info, ttl_s)
        finally:
            if not info.reentered and not self.release_lock(model, owner):
                _log.warning(
                    "lock on %s by %s was taken by another owner during the block (it expired, or a rollback "
                    "preempted it); raise ttl_s or call refresh() in long work",
                    model,
                    owner,
                )

    def acquire_lock(
        self,
        model: str,
        owner: str,
        timeout_s: float = _DEFAULT_LOCK_TIMEOUT_S,
        ttl_s: float = _DEFAULT_LOCK_TTL_S,
        *,
        purpose: str = RELEASE,
        preempt: Collection[str] = (),
        reason: str = "",
    ) -> LockInfo:
        """Takes ``model``'s lock for ``owner`` until released or ``ttl_s`` passes; waits ``timeout_s``.

        Use this (and :meth:`release_lock`) to hold a lock across tasks of one Airflow run, with the
        run id as owner. Re-acquiring by the same owner (of the same Airflow run) succeeds, extends the expiry
        and records the calling process as the holder. The row records who holds it
        (:class:`~pipeline.release.lock_owner.Holder`). Taken over at once, with a warning naming who held it:

        - an expired lock;
        - a lock whose holder is dead (:func:`~pipeline.release.lock_owner.liveness`: its process is gone, or its
          Airflow run no longer runs);
        - a lock held for one of the ``preempt`` purposes (an on-call rollback preempts a release): recorded as a
          :class:`Preemption`, which the release finds at its next :meth:`refresh_lock` and stops.

        Args:
            purpose: what the lock is held for (``release``, ``rollback``, ``reconcile``), recorded with the holder.
            reason: recorded with a preemption.

        Raises:
            DeadlineExceeded: another owner kept the lock for ``timeout_s``; the message names it and its process.
        """
        me = this_process(purpose)
        judge = _HolderJudge()
        deadline = time.monotonic() + timeout_s
        while True:
            info = self._attempt_lock(model, owner, ttl_s, me, frozenset(), reason)
            if info is None:  # a preempting caller does not wait for Airflow's answer: it preempts anyway
                info = self._take_over_if_dead(model, owner, ttl_s, me, judge, ask_airflow=not preempt)
            if info is None and preempt:
                info = self._attempt_lock(model, owner, ttl_s, me, frozenset(preempt), reason)
            if info is not None:
                return info
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = self.lock_holder(model)
                raise DeadlineExceeded(_lock_timeout_message(model, owner, timeout_s, holder, judge.last_why))
            time.sleep(min(remaining, _DEFAULT_LOCK_POLL_S * random.uniform(0.5, 1.5)))

    def release_lock(self, model: str, owner: str) -> bool:
        """Releases ``model``'s lock if ``owner`` holds it; False if not (expired and taken, never held)."""
        query = locks.delete().where(locks.c.model == model, locks.c.owner == owner)
        with self._write() as conn:
            return conn.execute(query).rowcount == 1

    def refresh_lock(self, model: str, owner: str, ttl_s: float = _DEFAULT_LOCK_TTL_S) -> LockInfo:
        """Confirms ``owner`` still holds the lock: moves its expiry to ``ttl_s`` from now and records this process
        as its holder. Each release step calls it first.

        Raises:
            Preempted: an on-call rollback took the lock; the message says who, when and why.
            DeadlineExceeded: ``owner`` no longer holds the lock (it expired and another owner took it).
        """
        me = this_process()
        with self._write() as conn:
            current = _read_lock(conn, model, for_update=True)
            info = None
            if current is not None and current.owner == owner and me.same_run(current.holder):
                purpose = current.holder.purpose if current.holder else me.purpose
                holder = Holder(**{**me.as_dict(), "purpose": purpose})
                expires_at = _utcnow() + timedelta(seconds=ttl_s)
                _update_lock(conn, model, locks.c.owner == owner, expires_at=expires_at, holder=holder.as_dict())
                info = _read_lock(conn, model)
        if info is not None:
            return info
        preemption = self.preemption(model, owner)
        if preemption is not None:
            raise Preempted(preemption.message())
        raise DeadlineExceeded(
            f"lock on {model!r} by {owner!r} was lost (now held by "
            f"{_describe_holder(self.lock_holder(model))}); stop and rerun the release"
        )

    def lock_holder(self, model: str) -> LockInfo | None:
        """Who holds ``model``'s lock (possibly expired), or None."""
        with self._read() as conn:
            return _read_lock(conn, model)

    def lock_liveness(self, model: str) -> tuple[LockInfo | None, Liveness, str]:
        """Who holds ``model``'s lock and whether that holder still runs (None, dead, "free" when nobody does).

        An expired lock counts as dead: anyone may take it over."""
        holder = self.lock_holder(model)
        if holder is None:
            return None, Liveness.DEAD, "free"
        if holder.expired:
            return holder, Liveness.DEAD, f"expired at {holder.expires_at.isoformat()}"
        verdict, why = liveness(holder.holder)
        return holder, verdict, why

    def preemption(self, model: str, owner: str) -> Preemption | None:
        """The last preemption of ``owner``'s lock on ``model``, or None."""
        query = (sa.select(preemptions).where(preemptions.c.model == model, preemptions.c.owner == owner)
                 .order_by(preemptions.c.id.desc()).limit(1))
        with self._read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return Preemption(row["model"], row["owner"], row["by_owner"], row["at"], row["reason"] or "")

    def _attempt_lock(self, model: str, owner: str, ttl_s: float, me: Holder, preempt: frozenset[str],
                      reason: str) -> LockInfo | None:
        """One atomic try: insert a new row, re-enter our own lock, or take over an expired or preempted one."""
        now = _utcnow()
        values = dict(owner=owner, acquired_at=now, expires_at=now + timedelta(seconds=ttl_s), holder=me.as_dict())
        with self._write() as conn:
            current = _read_lock(conn, model, for_update=True)
            if current is None:
                try:
                    with conn.begin_nested():  # a savepoint, so a lost insert race keeps the transaction usable
                        conn.execute(locks.insert().values(model=model, **values))
                except IntegrityError:
                    return None
                return _read_lock(conn, model)
            if current.owner == owner and me.same_run(current.holder):
                _update_lock(conn, model, locks.c.owner == owner, expires_at=values["expires_at"],
                             holder=values["holder"])
                return _read_lock(conn, model, reentered=True)
            held_for = current.holder.purpose if current.holder else RELEASE
            if not current.expired and held_for not in preempt:
                return None
            _update_lock(conn, model, locks.c.owner == current.owner, **values)
            if not current.expired:
                conn.execute(preemptions.insert().values(model=model, owner=current.owner, by_owner=owner, at=now,
                                                         reason=reason))
            taken = _read_lock(conn, model)
        how = "the expired lock" if current.expired else f"the {held_for}'s lock (preempted: {reason or owner})"
        _log.warning("%s took over %s on %s from %s", owner, how, model, current.describe())
        return taken

    def _take_over_if_dead(self, model: str, owner: str, ttl_s: float, me: Holder, judge: _HolderJudge,
                           ask_airflow: bool = True) -> LockInfo | None:
        """Takes the lock from a holder that is dead (checked outside any transaction: it may ask Airflow)."""
        current = self.lock_holder(model)
        if current is None or current.owner == owner:
            return None  # freed meanwhile, or ours from another run: the next attempt decides
        verdict, why = judge.judge(current, ask_airflow)
        if verdict is not Liveness.DEAD:
            return None
        now = _utcnow()
        with self._write() as conn:  # only if the same holder still has it (compare and swap)
            same = sa.and_(locks.c.owner == current.owner, locks.c.acquired_at == current.acquired_at)
            taken = _update_lock(conn, model, same, owner=owner, acquired_at=now,
                                 expires_at=now + timedelta(seconds=ttl_s), holder=me.as_dict())
            info = _read_lock(conn, model) if taken else None
        if info is not None:
            _log.warning("%s took over the lock on %s from %s: its holder is dead (%s)", owner, model,
                         current.describe(), why)
        return info

    # --------------------------------------------------------------- plumbing

    def _ready(self) -> Engine:
        """The engine, created with the tables on first use (refused when a released home lost its registry)."""
        with self._engine_guard:
            if self._engine is None:
                database = _sqlite_file(self._url)
                if database is not None and (not database.exists() or database.stat().st_size == 0):
                    self._refuse_if_versions_released()  # before connecting creates the file
                engine = _create_engine(self._url, self._wait_s)
                try:
                    with self._translated(self._wait_s):
                        _ensure_schema(engine, self._refuse_if_versions_released)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    def _refuse_if_versions_released(self) -> None:
        if self._models_dir is None:
            return
        found = _released_versions(self._models_dir)
        if found:
            listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
            raise RegistryMissing(
                f"the registry {self.where} is missing or empty, but {len(found)} released version(s) are on disk "
                f"under {self._models_dir} ({listed}); it is not recreated empty (their history and every rollback "
                "target would be lost). Restore it from a backup, or register the versions on disk again with "
                "`pipeline registry init --adopt`")

    @contextlib.contextmanager
    def _translated(self, waited_s: float) -> Iterator[None]:
        """Database failures as one clear :class:`RegistryUnavailable` naming the registry; conflicts pass."""
        try:
            yield
        except IntegrityError:
            raise
        except sa.exc.OperationalError as exc:
            raise RegistryUnavailable(_operational_message(self.where, exc, waited_s)) from exc
        except sa.exc.DatabaseError as exc:
            raise RegistryUnavailable(
                f"the registry {self.where} is not a readable registry database ({_first_line(exc.orig)}); move it "
                "aside and restore it from a backup, or register the versions on disk again with "
                "`pipeline registry init --adopt`") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed at the end of the block."""
        engine = self._ready()
        with self._translated(self._wait_s), engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        engine = self._ready()
        with self._translated(min(self._wait_s, _READ_WAIT_S)), engine.connect() as conn:
            yield conn


class _HolderJudge:
    """Judges a lock's holder while an acquisition waits: a local process at every try, an Airflow run's state at
    most every :data:`_AIRFLOW_ASK_EVERY_S` (the verdict is kept in between)."""

    def __init__(self) -> None:
        self._asked: dict[tuple[str, datetime], tuple[float, Liveness, str]] = {}
        self.last_why = ""

    def judge(self, current: LockInfo, ask_airflow: bool = True) -> tuple[Liveness, str]:
        key = (current.owner, current.acquired_at)
        asked = self._asked.get(key)
        if asked is not None and time.monotonic() - asked[0] < _AIRFLOW_ASK_EVERY_S:
            verdict, why = asked[1], asked[2]
        else:
            verdict, why = liveness(current.holder, ask_airflow=ask_airflow)
            if ask_airflow and current.holder is not None and current.holder.in_airflow:
                self._asked[key] = (time.monotonic(), verdict, why)
        self.last_why = why
        return verdict, why


# ------------------------------------------------------------------- engine


def _configured_wait_s() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return _DEFAULT_WAIT_S
    try:
        wait_s = float(raw)
    except ValueError:
        raise ConfigError(f"${WAIT_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 < wait_s <= 3600:
        raise ConfigError(f"${WAIT_ENV} must be above 0 and at most 3600 seconds, got {raw!r}")
    return wait_s


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory ones)."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" or \
            url.database.startswith("file:"):
        return None
    return Path(url.database).expanduser()


def _create_engine(url: URL, wait_s: float) -> Engine:
    if url.get_backend_name() != "sqlite":
        return _create_server_engine(url, wait_s)
    database = _sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    read_wait_s = min(wait_s, _READ_WAIT_S)
    engine = sa.create_engine(url, connect_args={"timeout": read_wait_s})

    def begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock at once (waiting up to the busy timeout). A deferred
        # transaction that reads and then writes can fail with "database is locked" without waiting.
        # Reads wait less: in WAL mode they never wait for a writer, only for a checkpoint or a recovery.
        writes = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int((wait_s if writes else read_wait_s) * 1000)}")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    sa.event.listen(engine, "connect", _configure_sqlite_connection)
    sa.event.listen(engine, "begin", begin)
    return engine


def _create_server_engine(url: URL, wait_s: float) -> Engine:
    """Postgres (or another server): a bounded connect, and a bounded wait for row locks."""
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": int(_CONNECT_TIMEOUT_S)}
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if url.get_backend_name() == "postgresql":
        def bound_lock_waits(dbapi_connection: Any, connection_record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = '{int(wait_s * 1000)}ms'")
            cursor.close()
            dbapi_connection.commit()

        sa.event.listen(engine, "connect", bound_lock_waits)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite's own implicit BEGIN is deferred and skips SELECTs; we emit BEGIN ourselves instead
    # (SQLAlchemy's documented recipe), so reads see one snapshot and writers take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers go on while a writer commits. It is a property of the file, set once: switching needs
        # the write lock, so it is only asked for when the file is not in WAL mode yet.
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # another process holds the file: read in its mode, switch next time
                _log.debug("registry: journal mode not switched to WAL (the file is busy)")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _ensure_schema(engine: Engine, refuse_if_released: Callable[[], None]) -> None:
    """Creates missing tables and columns. Looks first, read-only: a registry that has them all (every use but the
    first) never waits for the write lock here. A registry without its main table while released versions are on
    disk is refused (``refuse_if_released``), never recreated empty."""
    missing = _missing_schema(engine)
    if not missing:
        return
    if model_versions.name in missing:
        refuse_if_released()
    for attempt in range(2):  # a second try covers another process creating them at the same time
        try:
            with engine.connect() as conn:
                conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    _metadata.create_all(conn)
                    _add_missing_columns(conn)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, IntegrityError):
            if not _missing_schema(engine):
                return  # another process created them meanwhile
            if attempt == 1:
                raise
            time.sleep(_DEFAULT_LOCK_POLL_S)


def _missing_schema(engine: Engine) -> set[str]:
    """Names of the missing tables and ``table.column`` of the missing added columns (empty: all there)."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        tables = set(inspector.get_table_names())
        missing = {table.name for table in _metadata.sorted_tables} - tables
        for table, column in _ADDED_COLUMNS:
            if table in tables and column not in {c["name"] for c in inspector.get_columns(table)}:
                missing.add(f"{table}.{column}")
    return missing


def _add_missing_columns(conn: Connection) -> None:
    inspector = sa.inspect(conn)
    for table, column in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            kind = _metadata.tables[table].c[column].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _released_versions(models_dir: Path) -> list[str]:
    """``model/N`` of every version under ``models_dir`` that a release exported (its metadata names the Airflow
    or CLI run that registered it); versions built by hand (``pipeline build``) were never registered."""
    from pipeline.wire.version_dirs import list_versions, read_metadata, version_dir

    found: list[str] = []
    if not models_dir.is_dir():
        return found
    for base in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in list_versions(base):
            try:
                metadata = read_metadata(version_dir(base, version))
            except (OSError, ValueError, PipelineError):
                continue
            if metadata.get("airflow_run_id"):
                found.append(f"{base.name}/{version}")
    return found


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def _operational_message(where: str, exc: sa.exc.OperationalError, waited_s: float) -> str:
    detail = _first_line(exc.orig)
    if any(word in detail.lower() for word in ("locked", "busy", "lock timeout", "could not obtain lock")):
        return (f"the registry {where} is locked by another process: gave up after waiting {waited_s:g}s "
                f"({detail}). Retry when that process is done (a long write, or a stuck `sqlite3` shell); "
                f"${WAIT_ENV} sets the wait")
    return f"the registry {where} cannot be used: {detail}"


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
        data_version=row.get("data_version"),
        data_parts=list(row.get("data_parts") or []),
    )


def _select_live_phase(conn: Connection, model: str, run_id: str, phase: str) -> LivePhase | None:
    row = conn.execute(sa.select(live_phases).where(
        live_phases.c.model == model, live_phases.c.run_id == run_id, live_phases.c.phase == phase)).mappings().first()
    return None if row is None else _live_phase(row)


def _live_phase(row: Mapping[Any, Any]) -> LivePhase:
    return LivePhase(row["id"], row["model"], row["version"], row["run_id"], row["phase"], row["canary_percent"],
                     row["mirror_percent"], row["started_at"], row["updated_at"], row["decision"],
                     dict(row["figures"] or {}), row["summary"] or "", dict(row["window"] or {}))


_MONITOR_FIELDS = ("model", "version", "run_id", "window_since", "window_until", "requests", "labelled", "decision",
                   "drifted", "accuracy_dropped", "streak", "report")


def _monitor_run(row: Mapping[Any, Any]) -> MonitorRun:
    return MonitorRun(row["id"], row["model"], row["version"], row["run_id"], row["at"], row["window_since"],
                      float(row["window_until"]), int(row["requests"]), int(row["labelled"]), row["decision"],
                      bool(row["drifted"]), bool(row["accuracy_dropped"]), int(row["streak"]),
                      dict(row["figures"] or {}), row["report"], row["summary"] or "")


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


def _read_lock(conn: Connection, model: str, reentered: bool = False, for_update: bool = False) -> LockInfo | None:
    query = sa.select(locks).where(locks.c.model == model)
    row = conn.execute(query.with_for_update() if for_update else query).mappings().first()
    if row is None:
        return None
    return LockInfo(row["model"], row["owner"], row["acquired_at"], row["expires_at"], reentered,
                    Holder.from_dict(row["holder"]))


def _describe_holder(holder: LockInfo | None) -> str:
    return "nobody" if holder is None else holder.describe()


def _lock_timeout_message(model: str, owner: str, timeout_s: float, holder: LockInfo | None, why: str) -> str:
    return (
        f"{owner!r} waited {timeout_s:g}s for the lock on {model!r}, held by {_describe_holder(holder)}"
        + (f" ({why})" if why and holder is not None else "")
        + "; wait for that release or rollback to finish. A holder that died is taken over at once when this host "
        "or Airflow can tell; `pipeline recover <model>` frees it by hand, and `pipeline rollback` preempts a release"
    )
