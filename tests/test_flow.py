"""The release flow as data: its order, short circuits, the restore teardown, and failure handling."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import flow, tasks
from pipeline.flow import RELEASE_STEPS, RESTORE, new_run_id, run_release

_ORDER = ["check_conf", "reconcile", "prepare_data", "validate_data", "train", "evaluate", "export", "has_new_version",
          "deploy_staging", "validate_staging", "unless_dry_run", "promote_canary", "canary_check",
          "shadow", "canary_5pct", "canary_25pct", "canary_50pct", "finalize"]
_PHASES = {"shadow": "shadow", "canary_5pct": "5%", "canary_25pct": "25%", "canary_50pct": "50%"}
# Each step's task function in pipeline.tasks, and what a fake of it returns.
_FAKES: dict[str, tuple[str, Any]] = {
    "check_conf": ("check_conf", {"model": "m"}),
    "reconcile": ("reconcile", {"model": "m", "reconciled": True, "actions": []}),
    "prepare_data": ("prepare_data", {"snapshot": "/snap"}),
    "validate_data": ("validate_data", {"success": True}),
    "train": ("train", {"run_dir": "/run"}),
    "evaluate": ("evaluate", {"status": "BLESSED"}),
    "export": ("export", {"version": 7, "release": True}),
    "has_new_version": ("has_new_version", True),
    "deploy_staging": ("deploy_staging", {"version": 7}),
    "validate_staging": ("validate_staging", {"status": "BLESSED"}),
    "unless_dry_run": ("should_promote", True),
    "promote_canary": ("promote_canary", {"version": 7}),
    "canary_check": ("canary_check", {"status": "BLESSED"}),
    **{task_id: ("live_phase", {"done": True}) for task_id in _PHASES},
    "finalize": ("finalize", {"stable": 7}),
    "restore_production": ("restore_production", {"restored": False}),
}


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, tuple]]:
    """Replace every task function with a recorder that returns its fake result."""
    seen: list[tuple[str, tuple]] = []
    for function, result in _FAKES.values():
        def fake(*args: Any, _name: str = function, _result: Any = result) -> Any:
            seen.append((_name, args))
            return _result
        monkeypatch.setattr(tasks, function, fake)
    monkeypatch.setattr(tasks, "record_task_failure", lambda *args: seen.append(("record_task_failure", args)) or "x")
    monkeypatch.setattr(flow, "steps_for_model", lambda model: RELEASE_STEPS)
    return seen


def test_the_order_is_the_dags():
    assert [step.task_id for step in RELEASE_STEPS] == _ORDER
    for step in RELEASE_STEPS:  # every step reads only steps that come before it
        assert set(step.needs) <= set(_ORDER[:_ORDER.index(step.task_id)]), step.task_id
    assert set(RESTORE.needs) == {"deploy_staging", "validate_staging", "promote_canary", "canary_check", "finalize",
                                  *_PHASES}
    assert all(step.waits == (step.task_id in _PHASES) for step in RELEASE_STEPS)


def test_the_live_phases_follow_the_models_canary_steps():
    from pipeline.config import LiveCanaryConfig

    steps = flow.release_steps(LiveCanaryConfig(steps=(10, 60)))
    ids = [step.task_id for step in steps]
    assert ids[ids.index("canary_check") + 1:] == ["shadow", "canary_10pct", "canary_60pct", "finalize"]
    assert dict((s.task_id, s.needs) for s in steps)["finalize"] == ("export", "canary_60pct")
    assert {"shadow", "canary_10pct", "canary_60pct"} <= set(flow.restore_step(steps).needs)


def test_a_waiting_phase_is_called_until_it_is_done(calls, monkeypatch):
    looks: list[str] = []

    def live_phase(model: str, version: int, run_id: str, phase: str) -> dict:
        looks.append(phase)
        return {"done": looks.count(phase) >= 3}

    monkeypatch.setattr(tasks, "live_phase", live_phase)
    run_release("m", {}, run_id="r-wait")
    assert looks == [phase for phase in _PHASES.values() for _ in range(3)]


def test_a_release_calls_every_task_with_what_the_earlier_ones_returned(calls):
    results = run_release("m", {"epochs": 2}, run_id="r1")
    assert [name for name, _ in calls] == [_FAKES[t][0] for t in [*_ORDER, "restore_production"]]
    args = dict(calls)
    assert args["validate_data"] == ("m", {"epochs": 2}, "/snap")
    assert args["export"] == ("m", {"epochs": 2}, "/run", "/snap", "r1")
    assert args["finalize"] == ("m", 7, "r1")
    assert args["restore_production"] == ("m", 7, "r1")
    assert results["finalize"] == {"stable": 7} and results["run_id"] == "r1"


def test_an_unchanged_model_stops_after_export_and_touches_no_server(calls, monkeypatch):
    monkeypatch.setattr(tasks, "has_new_version", lambda exported: False)
    results = run_release("m", {}, run_id="r2")
    names = [name for name, _ in calls]
    assert "deploy_staging" not in names and "restore_production" not in names
    assert results["has_new_version"] is False


def test_a_dry_run_stops_after_staging_and_still_restores(calls, monkeypatch):
    monkeypatch.setattr(tasks, "should_promote", lambda conf: False)
    run_release("m", {"dry_run": True}, run_id="r3")
    names = [name for name, _ in calls]
    assert "promote_canary" not in names and names[-1] == "restore_production"


def test_a_failure_past_staging_is_recorded_then_production_restored(calls, monkeypatch):
    def canary_fails(*args: Any) -> Any:
        raise RuntimeError("canary: NOT_BLESSED")

    monkeypatch.setattr(tasks, "canary_check", canary_fails)
    with pytest.raises(RuntimeError, match="NOT_BLESSED"):
        run_release("m", {}, run_id="r4")
    names = [name for name, _ in calls]
    assert names[-2:] == ["record_task_failure", "restore_production"]
    assert dict(calls)["record_task_failure"] == ("m", "r4", "canary_check", "canary: NOT_BLESSED")


def test_a_failing_restore_does_not_hide_the_first_failure(calls, monkeypatch):
    def fails(*args: Any) -> Any:
        raise RuntimeError(f"{args[0]} broke")

    monkeypatch.setattr(tasks, "deploy_staging", fails)
    monkeypatch.setattr(tasks, "restore_production", lambda *args: (_ for _ in ()).throw(OSError("restore broke")))
    with pytest.raises(RuntimeError, match="m broke"):
        run_release("m", {}, run_id="r5")


def test_a_failure_before_staging_needs_no_restore(calls, monkeypatch):
    monkeypatch.setattr(tasks, "train", lambda *args: (_ for _ in ()).throw(ValueError("no data")))
    with pytest.raises(ValueError):
        run_release("m", {}, run_id="r6")
    assert "restore_production" not in [name for name, _ in calls]


def test_run_ids_are_unique_within_a_second():
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith("manual__") for i in ids)
    assert flow.new_run_id("cli").startswith("cli__")


def test_run_ids_made_in_the_same_instant_in_many_processes_are_unique():
    import multiprocessing

    from pipeline.util.ids import unique_run_id

    pool = multiprocessing.get_context("fork").Pool(4)
    try:
        ids = pool.map(unique_run_id, ["manual"] * 400)
    finally:  # close + join: the workers exit on their own (terminate's SIGTERM may meet an inherited handler)
        pool.close()
        pool.join()
    assert len(set(ids)) == 400


def test_the_second_step_reconciles_production_before_anything_else(calls):
    run_release("m", {}, run_id="r7")
    names = [name for name, _ in calls]
    assert names[:3] == ["check_conf", "reconcile", "prepare_data"]
    assert dict(calls)["reconcile"] == ("m", "r7")
