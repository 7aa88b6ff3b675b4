"""The release registry: lineage, the state machine, last good version, failures and locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, Preempted
from pipeline.release.lock_owner import RELEASE, ROLLBACK
from pipeline.release.registry import (
    Registry,
    RegistryConflict,
    RegistryMissing,
    RegistryUnavailable,
    State,
    locks,
    model_versions,
)

_MODEL = "mnist"
_PATH_TO_STABLE = (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
# fork: the children need no re-import of this module, and each opens its own Registry anyway.
_MP = multiprocessing.get_context("fork")


def _url(path: Path) -> str:
    return f"sqlite:///{path / 'registry.db'}"


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """The registry on SQLite and on a real PostgreSQL server (every test using it runs on both)."""
    reg = Registry(registry_url)
    yield reg
    reg.close()


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[Registry]:
    """The registry on SQLite only, for what is SQLite's own (its file, WAL mode, its lock)."""
    reg = Registry(_url(tmp_path))
    yield reg
    reg.close()


def _export(registry: Registry, version: int, model: str = _MODEL) -> None:
    registry.register_version(model, version, {"airflow_run_id": f"run-{version}"})


def _release(registry: Registry, version: int, until: State = State.PROMOTED, model: str = _MODEL) -> None:
    """Registers ``version`` and walks it along the happy path up to ``until``."""
    _export(registry, version, model)
    for state in _PATH_TO_STABLE[: _PATH_TO_STABLE.index(until) + 1]:
        registry.transition(model, version, state, run_id=f"run-{version}")


# ------------------------------------------------------------------ lineage


def test_register_stores_lineage_in_state_exported(registry: Registry) -> None:
    lineage = {
        "data_sha256": "ab" * 32,
        "airflow_run_id": "manual__1",
        "training_run_id": "train-7",
        "params": {"epochs": 3},
        "metrics": {"accuracy": 0.98},
        "export_path": "/models/mnist/1",
        "code_version": "0.1.0",
    }
    record = registry.register_version(_MODEL, 1, lineage)

    assert record.state is State.EXPORTED
    assert (record.data_sha256, record.training_run_id) == ("ab" * 32, "train-7")
    assert record.params == {"epochs": 3} and record.metrics == {"accuracy": 0.98}
    assert record.extra == {"code_version": "0.1.0"}
    assert record.created_at.tzinfo is not None
    assert registry.get_version(_MODEL, 1) == record
    [registration] = registry.history(_MODEL)
    assert (registration.from_state, registration.to_state) == (None, State.EXPORTED)
    assert registration.run_id == "manual__1"


def test_the_data_version_and_parts_a_version_was_trained_on_are_recorded(registry: Registry) -> None:
    parts = [{"sha256": "cd" * 32, "examples": 120, "added": 118, "origin": {"kind": "live", "requests": 130}}]
    record = registry.register_version(_MODEL, 1, {"airflow_run_id": "r1", "data_version": "ef" * 32,
                                                   "data_parts": parts})

    assert (record.data_version, record.data_parts, record.extra) == ("ef" * 32, parts, {})
    assert registry.get_version(_MODEL, 1) == record
    assert registry.register_version(_MODEL, 2, {"airflow_run_id": "r2"}).data_parts == []


def test_a_registry_from_before_data_versions_gets_their_columns(tmp_path: Path) -> None:
    old = Registry(_url(tmp_path))
    _export(old, 1)
    old.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:  # as a registry written before the columns existed
        db.execute("ALTER TABLE model_versions DROP COLUMN data_version")
        db.execute("ALTER TABLE model_versions DROP COLUMN data_parts")

    reopened = Registry(_url(tmp_path))
    try:
        assert reopened.get_version(_MODEL, 1).data_version is None
        reopened.register_version(_MODEL, 2, {"airflow_run_id": "run-2", "data_version": "ab" * 32})
        assert reopened.get_version(_MODEL, 2).data_version == "ab" * 32
    finally:
        reopened.close()


def test_register_is_idempotent_for_the_same_run(registry: Registry) -> None:
    first = registry.register_version(_MODEL, 1, {"airflow_run_id": "r1", "metrics": {"accuracy": 0.9}})
    again = registry.register_version(_MODEL, 1, {"airflow_run_id": "r1", "metrics": {"accuracy": 0.1}})

    assert again == first
    assert len(registry.history(_MODEL)) == 1


def test_register_same_version_from_another_run_conflicts(registry: Registry) -> None:
    registry.register_version(_MODEL, 1, {"airflow_run_id": "r1"})
    with pytest.raises(RegistryConflict, match="already registered by run 'r1'"):
        registry.register_version(_MODEL, 1, {"airflow_run_id": "r2"})


@pytest.mark.parametrize("version", [-1, "3", 2.0, True])
def test_register_refuses_a_bad_version_number(registry: Registry, version: object) -> None:
    with pytest.raises(ConfigError, match="non-negative integer"):
        registry.register_version(_MODEL, version, {})  # type: ignore[arg-type]


def test_versions_and_models_list_what_was_registered(registry: Registry) -> None:
    for version in (2, 1):
        _export(registry, version)
    _export(registry, 1, model="spam")

    assert [r.version for r in registry.versions(_MODEL)] == [1, 2]
    assert registry.models() == ["mnist", "spam"]
    assert registry.versions("absent") == []


def test_get_version_of_an_unknown_version_raises_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound, match="mnist version 9"):
        registry.get_version(_MODEL, 9)


# ------------------------------------------------------------ state machine


def test_transitions_are_recorded_newest_first(registry: Registry) -> None:
    _export(registry, 1)
    registry.transition(_MODEL, 1, "staged", run_id="r", reason="deployed to staging")
    registry.transition(_MODEL, 1, State.VALIDATED, run_id="r", reason="golden predictions match")

    history = registry.history(_MODEL)
    assert [(t.from_state, t.to_state) for t in history] == [
        (State.STAGED, State.VALIDATED),
        (State.EXPORTED, State.STAGED),
        (None, State.EXPORTED),
    ]
    assert history[0].reason == "golden predictions match" and history[0].run_id == "r"
    assert history[0].at >= history[1].at
    assert len(registry.history(_MODEL, limit=2)) == 2


def test_cannot_promote_a_rejected_version(registry: Registry) -> None:
    _release(registry, 1, until=State.VALIDATED)
    registry.transition(_MODEL, 1, State.REJECTED, reason="accuracy 0.5 < 0.9")

    with pytest.raises(RegistryConflict, match="from rejected to promoted.*may go to: retired"):
        registry.transition(_MODEL, 1, State.PROMOTED)
    assert registry.get_version(_MODEL, 1).state is State.REJECTED
    assert registry.stable_version(_MODEL) is None


@pytest.mark.parametrize(
    ("until", "target"),
    [
        (None, State.PROMOTED),  # skipping staging validation
        (None, State.CANARY),
        (State.STAGED, State.CANARY),
        (State.CANARY, State.RETIRED),  # deleting what production serves
        (State.PROMOTED, State.RETIRED),
        (State.PROMOTED, State.REJECTED),
    ],
)
def test_invalid_transitions_are_refused(registry: Registry, until: State | None, target: State) -> None:
    if until is None:
        _export(registry, 1)
    else:
        _release(registry, 1, until=until)
    before = registry.get_version(_MODEL, 1).state

    with pytest.raises(RegistryConflict, match=f"to {target.value}"):
        registry.transition(_MODEL, 1, target)
    assert registry.get_version(_MODEL, 1).state is before


def test_final_states_allow_only_retirement(registry: Registry) -> None:
    _release(registry, 1, until=State.CANARY)
    registry.transition(_MODEL, 1, State.ROLLED_BACK)
    registry.transition(_MODEL, 1, State.RETIRED)

    with pytest.raises(RegistryConflict, match="nothing \\(final state\\)"):
        registry.transition(_MODEL, 1, State.STAGED)


def test_unknown_and_internal_states_are_refused(registry: Registry) -> None:
    _export(registry, 1)
    with pytest.raises(RegistryConflict, match="unknown state 'blessed'"):
        registry.transition(_MODEL, 1, "blessed")
    with pytest.raises(RegistryConflict, match="superseded"):
        registry.transition(_MODEL, 1, State.SUPERSEDED)


def test_transition_of_an_unregistered_version_raises_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound, match="register it first"):
        registry.transition(_MODEL, 4, State.STAGED)


def test_repeating_a_transition_changes_nothing(registry: Registry) -> None:
    _release(registry, 1, until=State.STAGED)
    count = len(registry.history(_MODEL))

    record = registry.transition(_MODEL, 1, State.STAGED)  # an Airflow task retry
    assert record.state is State.STAGED
    assert len(registry.history(_MODEL)) == count


def test_promoting_supersedes_the_previous_stable(registry: Registry) -> None:
    _release(registry, 1)
    _release(registry, 2)

    assert registry.stable_version(_MODEL) == 2
    assert registry.get_version(_MODEL, 1).state is State.SUPERSEDED
    promoted = [r.version for r in registry.versions(_MODEL) if r.state is State.PROMOTED]
    assert promoted == [2]
    superseded = next(t for t in registry.history(_MODEL) if t.to_state is State.SUPERSEDED)
    assert (superseded.version, superseded.run_id) == (1, "run-2")
    assert superseded.reason == "superseded by version 2"


def test_promoting_without_canary_is_allowed(registry: Registry) -> None:
    _release(registry, 1, until=State.VALIDATED)
    registry.transition(_MODEL, 1, State.PROMOTED)
    assert registry.stable_version(_MODEL) == 1


def test_the_database_refuses_two_stable_versions(registry: Registry, registry_url: str) -> None:
    _release(registry, 1)
    _release(registry, 2, until=State.VALIDATED)
    engine = sa.create_engine(registry_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                model_versions.update().where(model_versions.c.version == 2).values(state="promoted")
            )
    finally:
        engine.dispose()


def test_only_one_canary_at_a_time(registry: Registry) -> None:
    _release(registry, 1, until=State.CANARY)
    _release(registry, 2, until=State.VALIDATED)

    with pytest.raises(RegistryConflict, match="version 1 is already in canary"):
        registry.transition(_MODEL, 2, State.CANARY)
    assert registry.canary_version(_MODEL) == 1


def test_passed_validation_means_reached_validated_once(registry: Registry) -> None:
    _release(registry, 1, until=State.VALIDATED)
    registry.transition(_MODEL, 1, State.REJECTED)
    _release(registry, 2, until=State.STAGED)

    assert registry.passed_validation(_MODEL, 1) is True
    assert registry.passed_validation(_MODEL, 2) is False
    assert registry.passed_validation(_MODEL, 3) is False


# -------------------------------------------------- last good and rollback


def test_last_good_across_promotions_and_rollbacks(registry: Registry) -> None:
    for version in (1, 2, 3):
        _release(registry, version)
    assert registry.last_good_version(_MODEL) == 3
    assert registry.last_good_version(_MODEL, before=3) == 2

    registry.record_rollback(_MODEL, 3, restore_version=2, run_id="rb-1", reason="p95 too high")
    assert registry.stable_version(_MODEL) == 2
    assert registry.get_version(_MODEL, 3).state is State.ROLLED_BACK
    assert registry.last_good_version(_MODEL) == 2
    assert registry.last_good_version(_MODEL, before=2) == 1

    _release(registry, 4)
    assert registry.last_good_version(_MODEL, before=4) == 2  # 3 was rolled back

    _release(registry, 5, until=State.VALIDATED)
    registry.transition(_MODEL, 5, State.REJECTED)
    assert registry.last_good_version(_MODEL) == 4  # rejected is never good
    assert registry.last_good_version(_MODEL, before=1) is None


def test_rolling_back_a_failed_canary_keeps_the_stable(registry: Registry) -> None:
    _release(registry, 1)
    _release(registry, 2, until=State.CANARY)

    registry.record_rollback(_MODEL, 2, run_id="canary-check", reason="canary accuracy 0.7")

    assert registry.stable_version(_MODEL) == 1
    assert registry.canary_version(_MODEL) is None
    assert registry.last_good_version(_MODEL) == 1
    assert registry.history(_MODEL, limit=1)[0].reason == "canary accuracy 0.7"


def test_a_rollback_restoring_a_bad_version_changes_nothing(registry: Registry) -> None:
    _release(registry, 1, until=State.VALIDATED)
    registry.transition(_MODEL, 1, State.REJECTED)
    _release(registry, 2)
    count = len(registry.history(_MODEL))

    with pytest.raises(RegistryConflict, match="version 1 from rejected to promoted"):
        registry.record_rollback(_MODEL, 2, restore_version=1)
    assert registry.stable_version(_MODEL) == 2  # the rolled_back move went back with the failed one
    assert len(registry.history(_MODEL)) == count


def test_retired_versions_are_no_rollback_target(registry: Registry) -> None:
    _release(registry, 1)
    _release(registry, 2)
    registry.transition(_MODEL, 1, State.RETIRED, reason="retention")

    assert registry.last_good_version(_MODEL, before=2) is None
    assert registry.protected_versions(_MODEL) == {2}


def test_protected_versions_are_stable_canary_and_last_good(registry: Registry) -> None:
    for version in (1, 2, 3):
        _release(registry, version)
    _release(registry, 4, until=State.CANARY)
    assert registry.protected_versions(_MODEL) == {2, 3, 4}


# ------------------------------------------------------------------- events


def test_record_failure_keeps_failures_newest_first(registry: Registry) -> None:
    registry.record_failure(_MODEL, "run-1", "train", "OOM")
    registry.record_failure(_MODEL, "run-2", "validate_staging", "signature mismatch")
    registry.record_failure("spam", "run-3", "train", "other model")

    failures = registry.failures(_MODEL)
    assert [(f.run_id, f.task_id, f.reason) for f in failures] == [
        ("run-2", "validate_staging", "signature mismatch"),
        ("run-1", "train", "OOM"),
    ]
    assert registry.history(_MODEL) == []  # a failure changes no version's state


# ---------------------------------------------------- construction and URLs


def test_a_postgres_url_is_accepted_without_connecting() -> None:
    reg = Registry("postgresql+psycopg://pipeline:secret@postgres:5432/registry")
    assert reg.url == "postgresql+psycopg://pipeline:***@postgres:5432/registry"


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        Registry("not a url")


def test_default_url_lives_under_pipeline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    reg = Registry()
    assert not home.exists()  # construction does no I/O

    _export(reg, 1)
    reg.close()
    assert (home / "registry.db").is_file()


def test_sqlite_runs_in_wal_mode(sqlite_registry: Registry, tmp_path: Path) -> None:
    _export(sqlite_registry, 1)
    engine = sa.create_engine(_url(tmp_path))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_import_is_light() -> None:
    code = (
        "import sys, pipeline.release.registry; "
        "heavy = [m for m in ('tensorflow', 'airflow', 'pydantic', 'yaml') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------- locks


def _hold_lock_and_log(url: str, owner: str, log: str, rounds: int) -> None:
    """Child process: takes the lock ``rounds`` times and logs entering and leaving the critical section."""
    try:
        reg = Registry(url)
        for _ in range(rounds):
            with reg.lock(_MODEL, owner, timeout_s=30):
                _append(log, f"enter {owner}")
                time.sleep(0.05)
                _append(log, f"leave {owner}")
        reg.close()
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _run_children(*children: multiprocessing.process.BaseProcess) -> None:
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0, f"{child.name} exited with {child.exitcode}"


def test_lock_excludes_another_process(registry_url: str, tmp_path: Path) -> None:
    url, log = registry_url, str(tmp_path / "critical.log")
    _run_children(
        *(_MP.Process(target=_hold_lock_and_log, args=(url, owner, log, 3)) for owner in ("a", "b"))
    )

    lines = Path(log).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("enter") and leave == enter.replace("enter", "leave")


def _acquire_and_exit(url: str, owner: str, airflow: dict[str, str] | None = None) -> None:
    """Child process: takes the lock and ends without releasing it (an Airflow task of a run, when ``airflow``
    gives its context; else a CLI release that was killed)."""
    os.environ.update(airflow or {})
    Registry(url).acquire_lock(_MODEL, owner, timeout_s=5, ttl_s=60)


def _airflow_context(monkeypatch: pytest.MonkeyPatch | None, dag: str = "mnist_release", run: str = "run-1",
                     task: str = "deploy_staging") -> dict[str, str]:
    """The context Airflow exports to a task process; set in this process too when ``monkeypatch`` is given."""
    context = {"AIRFLOW_CTX_DAG_ID": dag, "AIRFLOW_CTX_DAG_RUN_ID": run, "AIRFLOW_CTX_TASK_ID": task}
    for name, value in (context.items() if monkeypatch else ()):
        monkeypatch.setenv(name, value)
    return context


@pytest.fixture
def no_airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Airflow API to ask: no URL, and a home with no local stack."""
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID"):
        monkeypatch.delenv(name, raising=False)


def test_a_lock_is_held_across_processes_of_one_airflow_run(registry: Registry, registry_url: str, no_airflow,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # deploy_staging's task process took the run's lock and ended; later tasks of the run use it.
    _run_children(_MP.Process(target=_acquire_and_exit, args=(registry_url, "run-1", _airflow_context(None))))
    holder = registry.lock_holder(_MODEL)
    assert holder.holder is not None and holder.holder.dag_run_id == "run-1"

    with pytest.raises(DeadlineExceeded, match="held by 'run-1' .*Airflow mnist_release run run-1"):
        registry.acquire_lock(_MODEL, "run-2", timeout_s=0.3)  # its process is gone, but Airflow cannot be asked
    _airflow_context(monkeypatch, task="canary_check")
    assert registry.acquire_lock(_MODEL, "run-1", timeout_s=0).reentered is True
    assert registry.lock_holder(_MODEL).holder.task_id == "canary_check"  # the holder is the task using it now
    with registry.lock(_MODEL, "run-1", timeout_s=0):
        pass
    assert registry.lock_holder(_MODEL).owner == "run-1"  # the block ran under the run's lock, kept it
    assert registry.release_lock(_MODEL, "run-1") is True
    assert registry.acquire_lock(_MODEL, "run-2", timeout_s=0).reentered is False


def test_a_killed_cli_holder_s_lock_is_taken_over_at_once(registry: Registry, registry_url: str, no_airflow,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    child = _MP.Process(target=_acquire_and_exit, args=(registry_url, "manual__crashed"))
    _run_children(child)
    assert registry.lock_holder(_MODEL).holder.pid == child.pid

    taken = registry.acquire_lock(_MODEL, "rollback-1", timeout_s=0)
    assert (taken.owner, taken.reentered) == ("rollback-1", False)
    assert f"from 'manual__crashed' (release pid {child.pid} on" in caplog.text
    assert f"its holder is dead (pid {child.pid} is gone)" in caplog.text


def test_a_reused_pid_is_a_dead_holder(registry: Registry, no_airflow) -> None:
    registry.acquire_lock(_MODEL, "old")
    with registry._write() as conn:  # the same pid, but a process started long before this one: pid reuse
        old = registry.lock_holder(_MODEL).holder
        conn.execute(locks.update().values(holder={**old.as_dict(), "started": old.started - 3600}))

    assert registry.acquire_lock(_MODEL, "new", timeout_s=0).owner == "new"


def test_a_live_holder_keeps_its_lock(registry: Registry, no_airflow) -> None:
    registry.acquire_lock(_MODEL, "alive")  # this process: it runs
    with pytest.raises(DeadlineExceeded, match=r"held by 'alive' \(release pid \d+ on .*\(pid \d+ still runs\)"):
        registry.acquire_lock(_MODEL, "other", timeout_s=0.3)


@pytest.mark.parametrize(("state", "taken"), [("failed", True), ("success", True), ("running", False)])
def test_an_airflow_holder_is_judged_by_its_run_s_state(registry: Registry, registry_url: str, no_airflow,
                                                       monkeypatch: pytest.MonkeyPatch, state: str,
                                                       taken: bool) -> None:
    from tests.airflow_stub import AirflowApiStub, serving

    _run_children(_MP.Process(target=_acquire_and_exit, args=(registry_url, "run-1", _airflow_context(None))))
    with serving(AirflowApiStub()) as api:
        api.run_states[("mnist_release", "run-1")] = state
        monkeypatch.setenv("PIPELINE_AIRFLOW_API_URL", api.url)
        monkeypatch.setenv("PIPELINE_AIRFLOW_API_TOKEN", "stub-token")
        if taken:
            assert registry.acquire_lock(_MODEL, "run-2", timeout_s=0).owner == "run-2"
        else:
            with pytest.raises(DeadlineExceeded, match="Airflow run run-1 is running"):
                registry.acquire_lock(_MODEL, "run-2", timeout_s=0.3)
        assert any(r.path == "/api/v2/dags/mnist_release/dagRuns/run-1" for r in api.requests)


def test_two_dags_runs_sharing_a_run_id_do_not_share_a_lock(registry: Registry, no_airflow,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _airflow_context(monkeypatch, dag="mnist_release", run="scheduled__2026-01-01T00:00:00+00:00")
    registry.acquire_lock("_production_endpoint", "scheduled__2026-01-01T00:00:00+00:00")
    _airflow_context(monkeypatch, dag="spam_release", run="scheduled__2026-01-01T00:00:00+00:00")
    with pytest.raises(DeadlineExceeded):
        registry.acquire_lock("_production_endpoint", "scheduled__2026-01-01T00:00:00+00:00", timeout_s=0.3)


def test_a_rollback_preempts_a_release_which_stops_at_its_next_step(registry: Registry, no_airflow) -> None:
    registry.acquire_lock(_MODEL, "release-1", purpose=RELEASE)  # alive: this process
    taken = registry.acquire_lock(_MODEL, "rollback-1", timeout_s=0, purpose=ROLLBACK, preempt={RELEASE},
                                  reason="on-call: p95 too high")

    assert taken.owner == "rollback-1" and taken.holder.purpose == ROLLBACK
    with pytest.raises(Preempted, match="release 'release-1' was preempted by 'rollback-1' at .*on-call: p95 too "
                                        "high.*changes no server"):
        registry.refresh_lock(_MODEL, "release-1")
    assert registry.release_lock(_MODEL, "rollback-1")
    with pytest.raises(Preempted):  # still told after the rollback is done
        registry.refresh_lock(_MODEL, "release-1")


def test_a_rollback_does_not_preempt_another_rollback(registry: Registry, no_airflow) -> None:
    registry.acquire_lock(_MODEL, "rollback-1", purpose=ROLLBACK)
    with pytest.raises(DeadlineExceeded, match="held by 'rollback-1' \\(rollback pid"):
        registry.acquire_lock(_MODEL, "rollback-2", timeout_s=0.3, purpose=ROLLBACK, preempt={RELEASE})


def test_refresh_of_a_lock_never_held_says_it_was_lost(registry: Registry) -> None:
    with pytest.raises(DeadlineExceeded, match="was lost"):
        registry.refresh_lock(_MODEL, "nobody")


def test_lock_timeout_names_the_holder(registry: Registry) -> None:
    registry.acquire_lock(_MODEL, "release-42")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"held by 'release-42' \(release pid \d+ on .*\) since .* expiring"):
        registry.acquire_lock(_MODEL, "rollback-7", timeout_s=0.3)
    assert time.monotonic() - started >= 0.3


def test_an_expired_lock_is_taken_over(registry: Registry) -> None:
    registry.acquire_lock(_MODEL, "crashed", ttl_s=0.1)
    time.sleep(0.15)

    taken = registry.acquire_lock(_MODEL, "next", timeout_s=0)
    assert (taken.owner, taken.reentered) == ("next", False)
    with pytest.raises(DeadlineExceeded, match="was lost .* 'next'"):
        registry.refresh_lock(_MODEL, "crashed")
    assert registry.release_lock(_MODEL, "crashed") is False
    assert registry.lock_holder(_MODEL).owner == "next"


def test_refresh_keeps_a_long_holder_s_lock(registry: Registry) -> None:
    with registry.lock(_MODEL, "long", ttl_s=0.2) as held:
        first_expiry = held.info.expires_at
        time.sleep(0.1)
        held.refresh(ttl_s=0.5)
        assert held.info.expires_at > first_expiry
        time.sleep(0.15)  # past the first expiry, within the refreshed one
        with pytest.raises(DeadlineExceeded):
            registry.acquire_lock(_MODEL, "other", timeout_s=0)
    assert registry.lock_holder(_MODEL) is None


def test_lock_is_released_when_the_block_raises(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.lock(_MODEL, "a"):
        raise RuntimeError("task failed")
    assert registry.lock_holder(_MODEL) is None


def test_release_by_another_owner_keeps_the_lock(registry: Registry) -> None:
    registry.acquire_lock(_MODEL, "a")
    assert registry.release_lock(_MODEL, "b") is False
    assert registry.lock_holder(_MODEL).owner == "a"


def test_locks_are_per_model(registry: Registry) -> None:
    registry.acquire_lock("mnist", "a")
    assert registry.acquire_lock("spam", "b", timeout_s=0).owner == "b"


def _write_many(url: str, model: str, versions: range) -> None:
    """Child process: many small write transactions, no lock, to provoke 'database is locked'."""
    try:
        reg = Registry(url)
        for version in versions:
            _release(reg, version, until=State.VALIDATED, model=model)
            reg.record_failure(model, "r", "t", "noise")
        reg.close()
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def test_concurrent_writers_wait_instead_of_failing(registry_url: str) -> None:
    url = registry_url
    _run_children(
        _MP.Process(target=_write_many, args=(url, _MODEL, range(1, 16))),
        _MP.Process(target=_write_many, args=(url, _MODEL, range(16, 31))),
    )
    reg = Registry(url)
    assert [r.state for r in reg.versions(_MODEL)] == [State.VALIDATED] * 30
    reg.close()


def test_a_writer_waits_for_another_writer(sqlite_registry: Registry, tmp_path: Path) -> None:
    registry = sqlite_registry
    _export(registry, 1)
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write transaction
    committer = threading.Timer(0.3, other.execute, args=("COMMIT",))
    committer.start()
    try:
        started = time.monotonic()
        registry.transition(_MODEL, 1, State.STAGED)  # must wait for the busy timeout, not fail
        assert time.monotonic() - started >= 0.25
    finally:
        committer.join()
        other.close()
    assert registry.get_version(_MODEL, 1).state is State.STAGED


def test_check_transition_refuses_like_transition_without_changing_anything(registry: Registry) -> None:
    _release(registry, 1, until=State.CANARY)
    registry.transition(_MODEL, 1, State.ROLLED_BACK)
    _release(registry, 2, until=State.VALIDATED)
    count = len(registry.history(_MODEL))

    with pytest.raises(RegistryConflict, match="from rolled_back to promoted"):
        registry.check_transition(_MODEL, 1, State.PROMOTED)
    with pytest.raises(NotFound):
        registry.check_transition(_MODEL, 3, State.STAGED)
    registry.check_transition(_MODEL, 2, State.PROMOTED)
    registry.check_transition(_MODEL, 2, State.VALIDATED)  # already there: fine
    assert len(registry.history(_MODEL)) == count
    assert registry.stable_version(_MODEL) is None


def test_a_live_phase_is_started_once_and_keeps_its_window(registry: Registry) -> None:
    first = registry.start_live_phase(_MODEL, 2, "run-a", "shadow", 0.0, 20.0, {"offset": 10})
    again = registry.start_live_phase(_MODEL, 2, "run-a", "shadow", 0.0, 20.0, {"offset": 99})
    assert again == first and first.running and first.window == {"offset": 10}
    registry.update_live_phase(first.id, "pass", {"paired": {"requests": 80}}, "PASS")
    registry.start_live_phase(_MODEL, 2, "run-a", "5%", 5.0, 20.0, {"offset": 50})
    registry.start_live_phase(_MODEL, 3, "run-b", "shadow", 0.0, 20.0, {})
    phases = registry.live_phases(_MODEL, run_id="run-a")
    assert [p.phase for p in phases] == ["5%", "shadow"]  # newest first
    assert phases[1].decision == "pass" and phases[1].figures == {"paired": {"requests": 80}}
    assert phases[1].summary == "PASS" and phases[1].updated_at >= phases[1].started_at
    assert len(registry.live_phases(_MODEL)) == 3 and registry.live_phases("other") == []


# ------------------------------------------------------------------- faults


def _released_version_on_disk(models_dir: Path, model: str = _MODEL, version: int = 1,
                              run_id: str | None = "manual__r1") -> None:
    """A version dir as a release's export leaves it (its metadata names the run that registered it)."""
    directory = models_dir / model / str(version)
    (directory / "assets.extra").mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"model")
    metadata = {"model": model} | ({"airflow_run_id": run_id} if run_id else {})
    (directory / "assets.extra" / "metadata.json").write_text(json.dumps(metadata))


def test_reads_go_on_while_another_process_holds_the_write_lock(sqlite_registry: Registry, tmp_path: Path) -> None:
    _release(sqlite_registry, 1)
    sqlite_registry.close()
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a `sqlite3` shell left in a transaction
    try:
        fresh = Registry(_url(tmp_path), wait_s=0.5)  # a new process: connects and checks the schema
        assert fresh.stable_version(_MODEL) == 1 and len(fresh.history(_MODEL)) == 5
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=rf"registry {tmp_path / 'registry.db'} is locked by another "
                                                      r"process: gave up after waiting 0.5s"):
            fresh.record_failure(_MODEL, "r", "t", "noise")
        assert time.monotonic() - started < 20  # bounded (generously: 2 busy cores), not the 61 s of old
        fresh.close()
    finally:
        other.close()


def test_a_corrupt_registry_file_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is no database, just bytes " * 200)
    with pytest.raises(RegistryUnavailable, match=rf"registry {path} is not a readable registry database .*"
                                                  r"restore it from a backup"):
        Registry(_url(tmp_path)).stable_version(_MODEL)
    assert path.read_bytes().startswith(b"this is no database")  # left as it was


@pytest.mark.parametrize("emptied", [False, True], ids=["deleted", "emptied"])
def test_a_lost_registry_is_not_recreated_while_released_versions_are_on_disk(tmp_path: Path, emptied: bool) -> None:
    _released_version_on_disk(tmp_path / "models")
    path = tmp_path / "registry.db"
    if emptied:
        path.write_bytes(b"")
    reg = Registry(_url(tmp_path), models_dir=tmp_path / "models")

    with pytest.raises(RegistryMissing, match=rf"registry {path} is missing or empty, but 1 released version\(s\) "
                                              r"are on disk .*\(mnist/1\).*`pipeline registry init --adopt`"):
        reg.stable_version(_MODEL)
    assert path.exists() == emptied and (not emptied or path.stat().st_size == 0)  # nothing created


def test_an_empty_postgres_database_is_not_taken_for_a_registry_while_versions_are_released(
        postgres_url: str, tmp_path: Path) -> None:
    _released_version_on_disk(tmp_path / "models")
    with pytest.raises(RegistryMissing, match="is missing or empty"):
        Registry(postgres_url, models_dir=tmp_path / "models").versions(_MODEL)
    Registry(postgres_url).ensure_schema()  # without the home's models: an explicit init creates it


def test_a_new_registry_is_created_beside_versions_no_release_registered(tmp_path: Path) -> None:
    _released_version_on_disk(tmp_path / "models", run_id=None)  # `pipeline build` output: never registered
    reg = Registry(_url(tmp_path), models_dir=tmp_path / "models")
    assert reg.versions(_MODEL) == []
    _released_version_on_disk(tmp_path / "models", version=2)  # released from now on: the registry exists
    reg.close()
    assert Registry(_url(tmp_path), models_dir=tmp_path / "models").versions(_MODEL) == []


def test_the_default_registry_guards_the_home_s_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    _released_version_on_disk(tmp_path / "models")
    with pytest.raises(RegistryMissing):
        Registry().versions(_MODEL)
    from pipeline.settings import get_paths

    with pytest.raises(RegistryMissing):  # whoever opens the home's registry by its URL (an alert, the models pages)
        Registry(get_paths().registry_url).versions(_MODEL)
    assert not (tmp_path / "registry.db").exists()
    Registry(guard=False).ensure_schema()  # `pipeline registry init --adopt`: on purpose
    assert (tmp_path / "registry.db").is_file()


def test_a_registry_from_before_lock_holders_gains_the_column(registry_url: str) -> None:
    engine = sa.create_engine(registry_url)
    with engine.begin() as conn:  # the locks table as the first releases created it
        conn.exec_driver_sql("CREATE TABLE locks (model VARCHAR(128) PRIMARY KEY, owner VARCHAR(250) NOT NULL, "
                             "acquired_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL)")
    reg = Registry(registry_url)
    try:
        assert reg.acquire_lock(_MODEL, "a").holder is not None
        assert "holder" in {c["name"] for c in sa.inspect(engine).get_columns("locks")}
    finally:
        reg.close()
        engine.dispose()


def test_an_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    from pipeline.util.net import free_port

    reg = Registry(f"postgresql+psycopg://pipeline:s3cret@127.0.0.1:{free_port()}/registry")
    with pytest.raises(RegistryUnavailable, match=r"registry postgresql\+psycopg://pipeline:\*\*\*@127.0.0.1:\d+/"
                                                  r"registry cannot be used") as caught:
        reg.versions(_MODEL)
    assert "s3cret" not in str(caught.value)


def test_a_postgres_row_lock_wait_is_bounded(postgres_url: str) -> None:
    reg = Registry(postgres_url, wait_s=0.5)
    _export(reg, 1)
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as other, other.begin():  # another transaction in the middle of moving the model
            other.execute(sa.select(model_versions).where(model_versions.c.model == _MODEL).with_for_update())
            with pytest.raises(RegistryUnavailable, match="is locked by another process: gave up after waiting 0.5s"):
                reg.transition(_MODEL, 1, State.STAGED)
        assert reg.get_version(_MODEL, 1).state is State.EXPORTED
    finally:
        reg.close()
        engine.dispose()


def test_the_wait_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIPELINE_REGISTRY_WAIT_S", "soon")
    with pytest.raises(ConfigError, match="PIPELINE_REGISTRY_WAIT_S must be a number"):
        Registry(_url(tmp_path))


def test_a_version_up_to_int64_is_stored_and_read_back(registry: Registry) -> None:
    # Version directories may be numbered up to 2**63 - 1 (TF Serving's int64): the registry keeps them whole.
    from pipeline.wire.version_dirs import MAX_VERSION

    registry.register_version(_MODEL, MAX_VERSION, {"metrics": {"accuracy": 0.9}})
    registry.transition(_MODEL, MAX_VERSION, State.STAGED, run_id="r", reason="big")
    assert registry.get_version(_MODEL, MAX_VERSION).version == MAX_VERSION
    assert [t.version for t in registry.history(_MODEL)] == [MAX_VERSION, MAX_VERSION]


def test_monitor_runs_are_recorded_with_their_figures_newest_first(registry: Registry) -> None:
    first = registry.record_monitor_run({
        "model": _MODEL, "version": 3, "run_id": "scheduled-1", "window_since": None, "window_until": 1000.5,
        "requests": 300, "labelled": 120, "decision": "drift", "drifted": True, "accuracy_dropped": False,
        "streak": 1, "figures": {"verdict": {"features": [{"name": "ink", "statistic": 0.21}]}},
        "report": "reports/mnist/monitor/scheduled-1/index.html", "summary": "mnist stable 3: drift"})
    registry.record_monitor_run({
        "model": _MODEL, "version": 3, "run_id": "scheduled-2", "window_since": 1000.5, "window_until": 1300.0,
        "requests": 12, "labelled": 0, "decision": "no_verdict", "drifted": False, "accuracy_dropped": False,
        "streak": 1, "figures": {}, "report": None, "summary": "too few"})
    registry.record_monitor_run({
        "model": "other", "version": None, "run_id": "scheduled-1", "window_until": 1.0, "requests": 0,
        "labelled": 0, "decision": "no_verdict", "drifted": False, "accuracy_dropped": False, "streak": 0})

    runs = registry.monitor_runs(_MODEL)
    assert [r.run_id for r in runs] == ["scheduled-2", "scheduled-1"]
    assert runs[1] == first and runs[1].figures["verdict"]["features"][0]["statistic"] == 0.21
    assert (runs[0].window_since, runs[0].window_until, runs[0].report) == (1000.5, 1300.0, None)
    assert registry.monitor_runs(_MODEL, limit=1)[0].run_id == "scheduled-2"
    assert registry.monitor_runs("other")[0].version is None
