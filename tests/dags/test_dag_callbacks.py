"""The DAGs' callbacks and served assets as wired: what each task declares, and what its callbacks do when Airflow
calls them (each callable of the list, in order, with the task's context) against local stand-ins for Airflow's
API, the mail relay and the webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipeline.notify import DRIFT, PROBE_FAILED, RELEASE_FAILED, ROLLBACK, SmtpAlertNotifier, WebhookNotifier
from pipeline.refusals import Refused
from tests.airflow_stub import (
    AirflowApiStub,
    WebhookReceiver,
    define_connections,
    pose_as_local_stack,
    serving,
    smtp_sink,
)

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
RUN_ID = "manual__2026-11-28T03:12:09+00:00"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


class TaskInstance:
    def __init__(self, dag_id: str, task_id: str, xcoms: dict[str, Any] | None = None) -> None:
        self.dag_id, self.task_id, self.run_id, self._xcoms = dag_id, task_id, RUN_ID, xcoms or {}

    def xcom_pull(self, task_ids: str | None = None, **_: Any) -> Any:
        return self._xcoms.get(task_ids)


def call_like_airflow(callbacks: list, context: dict[str, Any]) -> None:
    for callback in callbacks:  # the task runner calls each in order, whatever the one before did
        callback(context)


def names(assets) -> list[str]:
    return sorted(asset.name for asset in assets)


def test_every_release_task_notes_and_alerts_its_failure_and_refusals_do_not_retry(dagbag):
    from airflow.sdk.definitions.retry_policy import RetryAction

    dag = dagbag.dags["mnist_release"]
    for task in dag.tasks:
        callbacks = task.on_failure_callback
        assert callbacks[0].__name__ == "_on_failure", task.task_id
        notifiers = {(type(n), n.event) for n in callbacks[1:]}
        assert notifiers == {(SmtpAlertNotifier, RELEASE_FAILED), (WebhookNotifier, RELEASE_FAILED)}, task.task_id
        assert task.retry_policy.evaluate(Refused("no"), 1, 2).action is RetryAction.FAIL, task.task_id
    assert dag.get_task("validate_data").retries == 1  # other errors still get the idempotent tasks' retry


def test_the_served_assets_are_declared_by_the_tasks_that_read_what_is_served(dagbag):
    release = dagbag.dags["mnist_release"]
    assert names(release.get_task("validate_staging").inlets) == ["mnist_staging"]
    assert names(release.get_task("evaluate").inlets) == ["mnist_production"]
    assert names(dagbag.dags["model_rollback"].get_task("rollback").inlets) == ["mnist_production", "spam_production"]
    monitor = dagbag.dags["canary_monitor"]
    assert names(monitor.get_task("probe_mnist").inlets) == ["mnist_production"]
    production = release.get_task("evaluate").inlets[0]
    assert production.uri == "pipeline://serving/production/mnist" and production.group == "serving"


def test_rollback_and_probe_callbacks_are_wired(dagbag):
    rollback = dagbag.dags["model_rollback"].get_task("rollback")
    assert rollback.on_success_callback[0].__name__ == "_on_success"
    assert {n.event for n in rollback.on_success_callback[1:]} == {ROLLBACK}
    assert rollback.on_failure_callback[0].__name__ == "_on_failure"
    probe = dagbag.dags["canary_monitor"].get_task("probe_spam")
    assert {n.event for n in probe.on_failure_callback[1:]} == {PROBE_FAILED}
    drift = dagbag.dags["canary_monitor"].get_task("drift_spam")
    assert drift.on_failure_callback[0].__name__ == "_on_drift"
    assert {n.event for n in drift.on_failure_callback[1:]} == {DRIFT}
    assert names(drift.inlets) == ["spam_production"]


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.test:8080")
    from pipeline import notify

    monkeypatch.setattr(notify, "_missing_connections", set())
    with serving(AirflowApiStub()) as api, smtp_sink() as sink, serving(WebhookReceiver()) as hook:
        pose_as_local_stack(tmp_path / "home", api, monkeypatch)
        define_connections(monkeypatch, smtp=sink, webhook=hook)
        yield api, sink, hook


def test_a_failed_release_task_is_recorded_noted_mailed_and_posted(dagbag, stand_ins):
    from pipeline.release.registry import Registry
    from pipeline.settings import get_paths

    api, sink, hook = stand_ins
    dag = dagbag.dags["mnist_release"]
    reason = "evaluate: NOT_BLESSED (accuracy 0.1012 is below the floor 0.9700)"
    context = {"dag": dag, "ti": TaskInstance("mnist_release", "evaluate"), "run_id": RUN_ID, "params": {},
               "exception": Refused(reason)}
    call_like_airflow(dag.get_task("evaluate").on_failure_callback, context)

    (failure,) = Registry(get_paths().registry_url).failures("mnist")
    assert (failure.run_id, failure.task_id, failure.reason) == (RUN_ID, "evaluate", reason)
    assert api.notes[("mnist_release", RUN_ID)] == f"{reason}; production serves nothing"
    url = f"http://airflow.test:8080/dags/mnist_release/runs/{quote(RUN_ID, safe='')}"
    assert sink.mails[0].subject == "mnist release failed at evaluate; production serves nothing"
    assert reason in sink.mails[0].body and url in sink.mails[0].body
    assert hook.requests[0].body["run_url"] == url and hook.requests[0].body["reason"] == reason


def test_an_on_call_rollback_notes_the_new_stable_and_alerts(dagbag, stand_ins):
    api, sink, hook = stand_ins
    task = dagbag.dags["model_rollback"].get_task("rollback")
    context = {"ti": TaskInstance("model_rollback", "rollback", {"rollback": {"from": 3, "to": 2}}),
               "run_id": RUN_ID, "params": {"model": "mnist", "to_version": 2, "reason": "3 answers 7 as 1"}}
    call_like_airflow(task.on_success_callback, context)

    assert api.notes[("model_rollback", RUN_ID)] == "stable 3 -> 2: 3 answers 7 as 1"
    assert sink.mails[0].subject == "mnist rolled back: stable 3 -> 2"
    assert hook.requests[0].body["version"] == 2
