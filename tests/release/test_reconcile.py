"""Reconcile: a canary a dead release left serving is rolled back and recorded; a live release is left alone.

On paper servers (:mod:`tests.release.paper`): every line of the release code runs (registry, the two-phase change,
models.config), no process or TensorFlow, so each test takes a second. The dead release is a child process that took
the lock and exited without releasing it (as a SIGKILL leaves it).
"""

from __future__ import annotations

import pytest

from pipeline.live.endpoints import CANARY_INSTANCE, TrafficSplit
from pipeline.release import live_canary
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.reconcile import reconcile
from pipeline.release.registry import State
from pipeline.release.serving_state import change_served_state
from pipeline.settings import get_paths
from tests.release.core_world import core_model_config, write_embedded_profile
from tests.release.crashed import lock_of_a_dead_release
from tests.release.paper import PaperRouter, paper_release

MODEL = "mnist"


@pytest.fixture
def release(tmp_path, monkeypatch) -> Release:
    """Versions 1..3 on disk and registered, on paper servers; no Airflow to ask."""
    write_embedded_profile(tmp_path / "configs")
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    for name in ("PIPELINE_SERVING_PROFILE", "PIPELINE_REGISTRY_URL", "PIPELINE_AIRFLOW_API_URL",
                 "AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    return paper_release(core_model_config(MODEL), get_paths(tmp_path / "home"), {1: 0.91, 2: 0.95, 3: 0.97})


def move(release: Release, version: int, *states: State) -> None:
    for state in states:
        release.registry.transition(MODEL, version, state, run_id="setup", reason="test setup")


def crashed_during_canary_check(release: Release, owner: str = "manual__crashed") -> int:
    """Stable 1; release of 2 promoted to canary on production, then killed: lock held by a dead process."""
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    move(release, 2, State.STAGED, State.VALIDATED, State.CANARY)
    change_production(release, [1, 2], {STABLE: 1, CANARY: 2})
    return lock_of_a_dead_release(release.paths.registry_url, MODEL, owner)


def test_a_canary_left_by_a_dead_release_is_rolled_back_and_recorded(release, caplog):
    pid = crashed_during_canary_check(release)

    result = reconcile(release, "manual__next", reason="release manual__next")

    assert result["reconciled"] and f"pid {pid} is gone" in result["lock"]
    assert result["actions"][0] == "production: canary 2 rolled back, stable 1"
    assert production_state(release).labels == {STABLE: 1} and production_state(release).versions == (1,)
    assert release.registry.get_version(MODEL, 2).state is State.ROLLED_BACK
    rolled = release.registry.history(MODEL, limit=1)[0]
    assert rolled.run_id == "manual__next" and "leftover canary of a release that no longer runs" in rolled.reason
    assert release.registry.lock_holder(MODEL) is None  # the dead release's lock taken over, then freed
    [event] = release.registry.events(MODEL, "reconcile")
    assert "canary 2 rolled back" in event.reason
    assert f"from 'manual__crashed' (release pid {pid}" in caplog.text  # who held it, logged


def test_a_live_release_is_left_alone(release):
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    move(release, 2, State.STAGED, State.VALIDATED, State.CANARY)
    change_production(release, [1, 2], {STABLE: 1, CANARY: 2})
    release.registry.acquire_lock(MODEL, "manual__running")  # this process: alive

    result = reconcile(release, "canary_monitor__1", reason="canary_monitor")

    assert not result["reconciled"] and "pid" in result["skipped"] and "still runs" in result["skipped"]
    assert production_state(release).labels == {STABLE: 1, CANARY: 2}
    assert release.registry.get_version(MODEL, 2).state is State.CANARY
    assert release.registry.lock_holder(MODEL).owner == "manual__running"


def test_force_preempts_even_a_live_release(release):
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    move(release, 2, State.STAGED, State.VALIDATED, State.CANARY)
    change_production(release, [1, 2], {STABLE: 1, CANARY: 2})
    release.registry.acquire_lock(MODEL, "manual__stuck")

    result = reconcile(release, "recover__1", reason="pipeline recover", force=True)

    assert result["reconciled"] and production_state(release).labels == {STABLE: 1}
    assert release.registry.preemption(MODEL, "manual__stuck").by_owner == "recover__1"


def test_nothing_to_reconcile_changes_nothing(release):
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    change_production(release, [1], {STABLE: 1})
    history = release.registry.history(MODEL)

    result = reconcile(release, "manual__next")

    assert result == {"model": MODEL, "reconciled": True, "actions": [], "lock": None}
    assert release.registry.history(MODEL) == history and release.registry.events(MODEL) == []


def test_a_live_canary_left_on_the_canary_instance_is_rolled_back_split_first(release, monkeypatch):
    router = PaperRouter()
    monkeypatch.setattr(live_canary, "router", lambda _release: router)
    monkeypatch.setattr(live_canary, "live_path_configured", lambda _release: True)
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    change_production(release, [1], {STABLE: 1})
    move(release, 2, State.STAGED, State.VALIDATED, State.CANARY)
    change_served_state(release.backend(CANARY_INSTANCE), MODEL, release.base_path, [1, 2], {STABLE: 1, CANARY: 2}, 10,
                        registry=release.registry)
    router.set_split(TrafficSplit(25, 0), 1)  # the 25 % phase was running when the release died
    lock_of_a_dead_release(release.paths.registry_url, MODEL, "manual__live")

    result = reconcile(release, "manual__next")

    assert result["actions"][0] == "canary instance: live canary 2 rolled back (split 0), stable 1"
    assert router.splits[-1] == TrafficSplit(0, 0)
    assert live_canary.canary_state(release).versions == ()
    assert release.registry.get_version(MODEL, 2).state is State.ROLLED_BACK
    assert production_state(release).labels == {STABLE: 1}


def test_a_registry_canary_nothing_serves_is_recorded_rolled_back(release):
    move(release, 1, State.STAGED, State.VALIDATED, State.PROMOTED)
    change_production(release, [1], {STABLE: 1})
    move(release, 2, State.STAGED, State.VALIDATED, State.CANARY)  # killed between the registry and the server

    result = reconcile(release, "manual__next")

    assert "registry: version 2 was canary with nothing serving it" in result["actions"][0]
    assert release.registry.get_version(MODEL, 2).state is State.ROLLED_BACK


def test_the_first_release_s_leftover_canary_leaves_production_empty(release):
    move(release, 1, State.STAGED, State.VALIDATED, State.CANARY)
    change_production(release, [1], {CANARY: 1})
    lock_of_a_dead_release(release.paths.registry_url, MODEL, "manual__first")

    reconcile(release, "manual__next")

    assert production_state(release).versions == () and release.registry.stable_version(MODEL) is None
