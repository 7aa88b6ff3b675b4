import pytest

from pipeline.monitoring.monitor import ALARM, DRIFT, NO_VERDICT, OK, run_monitor
from pipeline.monitoring.report import REPORT_FILES
from tests.monitoring.world import MODEL, MonitorWorld, monitor_world

pytestmark = pytest.mark.slow  # a few monitor runs each (plots, scipy), seconds apiece on two shared cores


class FakeIngest:
    """Stands in for pipeline.data.landing.ingest_live_labels (the ingest's side is tested there)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.error = error

    def __call__(self, model: str) -> dict:
        self.calls.append(model)
        if self.error is not None:
            raise self.error
        return {"appended": 120, "asset_event": True}


def _run(world: MonitorWorld, run_id: str, now: float, ingest: FakeIngest | None = None, gx: bool = False):
    return run_monitor(world.config, run_id, world.registry, world.paths, now=now, retrain=ingest or FakeIngest(),
                       expectations=gx)


def test_a_clean_window_is_ok_and_its_figures_and_report_are_written(tmp_path) -> None:
    world = monitor_world(tmp_path)
    outcome = _run(world, "run-1", world.send(300), gx=True)

    assert (outcome.run.decision, outcome.alarm, outcome.run.streak) == (OK, False, 0)
    recorded = world.registry.monitor_runs(MODEL)
    assert [r.run_id for r in recorded] == ["run-1"] and recorded[0].version == 1
    assert (recorded[0].requests, recorded[0].labelled) == (300, 300)
    verdict = recorded[0].figures["verdict"]
    assert {f["name"] for f in verdict["features"]} >= {"ink", "stroke", "centroid_x"}
    assert verdict["accuracy"]["accuracy"] == 1.0 and verdict["accuracy"]["expected"] == 0.97
    expectations = recorded[0].figures["expectations"]
    assert expectations and all(e["success"] for e in expectations), expectations
    report = world.paths.home / recorded[0].report
    assert report.name == "index.html" and "production monitor" in report.read_text()
    assert all((report.parent / name).stat().st_size > 0 for name in REPORT_FILES)


def test_sustained_drift_alarms_once_and_asks_the_ingest_for_a_retrain_while_it_lasts(tmp_path) -> None:
    world = monitor_world(tmp_path, retrain_on_drift=True)
    ingest = FakeIngest()
    _run(world, "clean", world.send(300), ingest)
    first = _run(world, "shift-1", world.send(300, shift="thicken"), ingest)
    second = _run(world, "shift-2", world.send(300, shift="thicken"), ingest)
    third = _run(world, "shift-3", world.send(300, shift="thicken"), ingest)

    assert (first.run.decision, first.alarm, first.run.streak) == (DRIFT, False, 1)
    assert (second.run.decision, second.alarm, second.run.streak) == (ALARM, True, 2)
    assert (third.run.decision, third.alarm, third.run.streak) == (DRIFT, False, 3)  # alerted once, not every run
    assert any("stroke drifted" in r or "ink drifted" in r for r in second.reasons), second.reasons
    assert ingest.calls == [MODEL, MODEL]  # the alarm's run and every drifted run after it
    assert world.registry.monitor_runs(MODEL, limit=1)[0].figures["retrain"] == {
        "called": True, "result": {"appended": 120, "asset_event": True}}
    clean = _run(world, "clean-again", world.send(300), ingest)
    assert (clean.run.decision, clean.run.streak) == (OK, 0) and len(ingest.calls) == 2


def test_without_retrain_on_drift_the_ingest_is_never_called(tmp_path) -> None:
    world = monitor_world(tmp_path, retrain_on_drift=False)  # the shipped MNIST config turns it on
    ingest = FakeIngest()
    for run in range(3):
        outcome = _run(world, f"shift-{run}", world.send(300, shift="translate"), ingest)
    assert outcome.run.streak == 3 and ingest.calls == []
    assert "retrain" not in world.registry.monitor_runs(MODEL, limit=1)[0].figures


def test_a_live_accuracy_drop_alarms_at_once_and_a_failing_ingest_is_recorded(tmp_path) -> None:
    world = monitor_world(tmp_path, retrain_on_drift=True)
    ingest = FakeIngest(error=RuntimeError("landing is down"))
    outcome = _run(world, "wrong", world.send(300, wrong_share=0.2), ingest)

    assert outcome.alarm and outcome.run.decision == ALARM and outcome.run.accuracy_dropped
    assert any(r.startswith("live accuracy 0.") for r in outcome.reasons), outcome.reasons
    assert outcome.retrain == {"called": True, "error": "RuntimeError: landing is down"}
    again = _run(world, "wrong-2", world.send(300, wrong_share=0.2, seed=99), ingest)
    assert not again.alarm and again.run.accuracy_dropped  # the same drop is not alerted twice


def test_a_window_too_small_gets_no_verdict_and_keeps_the_streak(tmp_path) -> None:
    world = monitor_world(tmp_path)
    _run(world, "shift", world.send(300, shift="thicken"))
    small = _run(world, "small", world.send(20, shift="thicken"))
    assert (small.run.decision, small.run.streak, small.alarm) == (NO_VERDICT, 1, False)
    after = _run(world, "shift-again", world.send(300, shift="thicken"))
    assert after.alarm and after.run.streak == 2


def test_each_run_reads_only_what_was_captured_since_the_last(tmp_path) -> None:
    world = monitor_world(tmp_path)
    _run(world, "a", world.send(150))
    second = _run(world, "b", world.send(120))
    assert second.run.requests == 120 and second.run.window_since == world.registry.monitor_runs(MODEL)[1].window_until


def test_nothing_stable_is_no_verdict_not_an_error(tmp_path) -> None:
    world = monitor_world(tmp_path)
    world.registry.record_rollback(MODEL, 1, run_id="x", reason="test")
    outcome = _run(world, "none", world.send(150))
    assert outcome.run.decision == NO_VERDICT and "nothing stable" in outcome.run.summary


def test_the_window_size_comes_from_the_config(tmp_path) -> None:
    world = monitor_world(tmp_path, window_requests=200, min_requests=150)
    outcome = _run(world, "cfg", world.send(300))
    assert outcome.run.requests == 200 and outcome.run.decision == OK


def test_the_cli_and_the_dag_task_run_it_and_an_alarm_is_an_error_with_the_reasons(tmp_path, monkeypatch,
                                                                                     capsys) -> None:
    from pipeline import tasks
    from pipeline.cli import main
    from pipeline.monitoring import monitor
    from pipeline.monitoring.monitor import DriftAlarm
    from pipeline.release.context import Release
    from pipeline.release.status import format_status, model_status

    world = monitor_world(tmp_path)
    monkeypatch.setattr(monitor, "_clock", lambda: world.clock + 60)  # each run comes a minute after the traffic
    monkeypatch.setenv("PIPELINE_HOME", str(world.paths.home))
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    world.send(300)
    assert main(["monitor", MODEL, "--no-gx"]) == 0
    out = capsys.readouterr().out
    assert f"{MODEL} stable 1: ok" in out and "report: " in out

    world.send(300, shift="translate")
    assert tasks.monitor_drift(MODEL, "scheduled-1")["decision"] == DRIFT
    world.send(300, shift="translate")
    with pytest.raises(DriftAlarm, match=r"mnist stable 1: alarm .*centroid_[xy] drifted"):
        tasks.monitor_drift(MODEL, "scheduled-2")
    world.send(300, shift="translate")
    assert main(["monitor", MODEL, "--no-gx", "--json"]) == 0  # still drifting, alerted already: not again

    text = format_status(model_status(Release(world.config)))
    assert "  monitor     " in text and " drift (streak 3)" in text and "max KS" in text
    assert "reports/mnist/monitor/" in text


def test_sustained_drift_hands_the_labelled_live_requests_to_the_real_ingest(tmp_path) -> None:
    """Wired for real: the alarm's run appends the labelled, shifted live digits as a new data version (no Airflow
    here, so it is kept for the next release run rather than announced)."""
    world = monitor_world(tmp_path, retrain_on_drift=True)
    config = world.config.with_overrides({"data.retrain_min_new_examples": 100})  # two windows bring more
    run_monitor(config, "shift-1", world.registry, world.paths, now=world.send(300, shift="thicken"),
                expectations=False)
    alarm = run_monitor(config, "shift-2", world.registry, world.paths, now=world.send(300, shift="thicken"),
                        expectations=False)
    assert alarm.alarm and alarm.retrain["called"] is True, alarm.retrain
    result = alarm.retrain["result"]
    assert result["new_examples"] > 0 and not result["refused"], result
    assert (world.paths.data_dir / MODEL / "versions" / f"{result['data_version']}.json").is_file()
    assert result["announced"] is False and "Airflow" in result["reason"]
