"""On-call rollback always wins over a release in progress, and the monitor reconciles first.

On paper servers (:mod:`tests.release.paper`), with the small world's model configs (``release_world``) so that the
release's own task functions (:mod:`pipeline.tasks`) run against the same home, registry and models.config files.
"""

from __future__ import annotations

import time

import pytest

from pipeline import tasks
from pipeline.errors import Preempted
from pipeline.gates import Verdict
from pipeline.release import rollback as rollback_module
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.registry import State
from pipeline.release.rollback import rollback
from pipeline.settings import get_paths
from pipeline.steps import resolve_config
from tests.release.crashed import lock_of_a_dead_release
from tests.release.paper import paper_release

MODEL = "mnist"


@pytest.fixture
def release(release_world, monkeypatch) -> Release:
    """Stable 2 (1 superseded, still loaded), a release of 3 in canary on production."""
    for name in ("PIPELINE_AIRFLOW_API_URL", "AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    paper = paper_release(resolve_config(MODEL), get_paths(), {1: 0.91, 2: 0.95, 3: 0.97})
    for version in (1, 2):
        move(paper, version, State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
    move(paper, 3, State.STAGED, State.VALIDATED, State.CANARY)
    change_production(paper, [1, 2, 3], {STABLE: 2, CANARY: 3})
    return paper


def move(release: Release, version: int, *states: State) -> None:
    for state in states:
        release.registry.transition(MODEL, version, state, run_id="setup", reason="test setup")


def test_on_call_rollback_preempts_a_running_release_which_then_stops(release):
    release.registry.acquire_lock(MODEL, "manual__release")  # alive: this very process holds it
    started = time.monotonic()

    result = rollback(release, reason="on-call: p95 too high")

    assert time.monotonic() - started < 30  # at once, not after a 90 s wait (generous: 2 busy cores)
    assert (result["from"], result["to"], result["dropped_canary"]) == (2, 1, 3)
    assert production_state(release).labels == {STABLE: 1} and CANARY not in production_state(release).labels
    preempted = release.registry.preemption(MODEL, "manual__release")
    assert preempted.by_owner.startswith("rollback__") and preempted.reason == "on-call: p95 too high"
    config_text = release.backend("production").config_path.read_text()
    # The release's next steps notice and stop without touching a server.
    for step in (lambda: tasks.canary_check(MODEL, 3, "manual__release"),
                 lambda: tasks.finalize(MODEL, 3, "manual__release"),
                 lambda: tasks.live_phase(MODEL, 3, "manual__release", "shadow")):
        with pytest.raises(Preempted, match="release 'manual__release' was preempted by 'rollback__.*on-call: p95"):
            step()
    assert release.backend("production").config_path.read_text() == config_text
    assert release.registry.stable_version(MODEL) == 1
    assert release.registry.get_version(MODEL, 3).state is State.ROLLED_BACK


def test_the_preempted_release_s_teardown_changes_nothing_and_frees_what_it_held(release):
    release.registry.acquire_lock(MODEL, "manual__release")
    rollback(release, reason="on-call")

    restored = tasks.restore_production(MODEL, 3, "manual__release")

    assert restored["restored"] is False  # the rollback already took its canary off
    assert production_state(release).labels == {STABLE: 1}
    assert release.registry.lock_holder(MODEL) is None


def test_a_killed_release_s_lock_is_taken_over_without_waiting(release, caplog):
    pid = lock_of_a_dead_release(release.paths.registry_url, MODEL, "manual__killed")
    started = time.monotonic()

    result = rollback(release, reason="on-call after a crash")

    assert time.monotonic() - started < 30 and result["to"] == 1
    assert f"its holder is dead (pid {pid} is gone)" in caplog.text
    assert release.registry.preemption(MODEL, "manual__killed") is None  # a dead holder is taken over, not preempted


def test_rollback_owners_are_unique(release):
    rollback(release)
    owners = {t.run_id for t in release.registry.history(MODEL, limit=2)}
    assert len(owners) == 1 and next(iter(owners)).startswith("rollback__")


def test_the_monitor_reconciles_a_dead_release_s_canary_before_probing(release, monkeypatch):
    lock_of_a_dead_release(release.paths.registry_url, MODEL, "manual__killed")
    monkeypatch.setattr(rollback_module, "probe_stable", lambda _release: Verdict("monitor", True, [], {"stable": 2}))

    result = rollback_module.monitor(release, run_id="canary_monitor__1")

    assert result["healthy"] and result["reconciled"][0] == "production: canary 3 rolled back, stable 2"
    assert production_state(release).labels == {STABLE: 2}
    assert release.registry.get_version(MODEL, 3).state is State.ROLLED_BACK
    assert release.registry.stable_version(MODEL) == 2  # the stable version is untouched


def test_a_rerun_after_a_crash_rolls_the_leftover_canary_back_before_saying_nothing_new(release, monkeypatch):
    from pipeline import steps
    from pipeline.flow import run_release

    lock_of_a_dead_release(release.paths.registry_url, MODEL, "manual__killed")  # killed during canary_check of 3
    monkeypatch.setattr(tasks, "Release", lambda config: release)  # the paper servers
    for name, result in (("prepare_data", {"snapshot": "/snap"}), ("validate_data", {"success": True}),
                         ("train", {"run_dir": "/run"}), ("evaluate", {"blessed": True})):
        monkeypatch.setattr(tasks, name, lambda *args, _result=result: _result)
    # Training is deterministic: the rerun's export is the version the killed run exported.
    monkeypatch.setattr(steps, "export", lambda *args, **kwargs: {"version": 3, "path": "/m/3", "created": False})

    results = run_release(MODEL, {}, run_id="manual__rerun")

    assert results["reconcile"]["actions"][0] == "production: canary 3 rolled back, stable 2"
    assert results["export"]["release"] is False and results["has_new_version"] is False  # "nothing new to release"
    assert production_state(release).labels == {STABLE: 2}  # ... and no canary left on production
    assert release.registry.get_version(MODEL, 3).state is State.ROLLED_BACK
    assert release.registry.lock_holder(MODEL) is None
