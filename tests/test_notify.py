"""Alerts through Airflow's notifiers, and the run's one-line note: what arrives, and what it names.

A real SMTP server (aiosmtpd) and a local HTTP receiver stand in for the mail relay and the chat webhook; the
connections are Airflow's (``AIRFLOW_CONN_PIPELINE_SMTP``, ``AIRFLOW_CONN_PIPELINE_WEBHOOK``). The notifiers are
called as Airflow calls a callback, with a context shaped like the task runner's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from pipeline import notify
from pipeline.notify import (
    DRIFT,
    PROBE_FAILED,
    RELEASE_FAILED,
    ROLLBACK,
    ROLLBACK_FAILED,
    ROLLBACK_OUTSIDE,
    SmtpAlertNotifier,
    WebhookNotifier,
    alert_notifiers,
    describe,
    note_and_log,
)
from pipeline.refusals import Refused
from pipeline.release.registry import Registry, State
from pipeline.settings import get_paths
from pipeline.util.net import free_port
from tests.airflow_stub import (
    AirflowApiStub,
    WebhookReceiver,
    define_connections,
    pose_as_local_stack,
    serving,
    smtp_sink,
)

BASE_URL = "https://airflow.example.com"
RUN_ID = "manual__2026-11-28T03:12:09.123456+00:00"
SHADOW_FAILED = ("live canary shadow fail: agreement 0.0 % < 95.0 % (21 paired); root cause: stable '7' -> canary "
                 "'1' on 18 of 21; rolled back (split 0 in 0.04 s): production serves stable 1")


@dataclass
class TaskInstance:
    """What the callbacks read of Airflow's RuntimeTaskInstance: ids and the run's XComs."""

    dag_id: str
    task_id: str
    run_id: str = RUN_ID
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(task_ids)


def context(dag_id: str, task_id: str, *, exception: BaseException | None = None, params: dict | None = None,
            xcoms: dict | None = None) -> dict[str, Any]:
    """A task callback's context as Airflow 3's task runner builds it (the keys the pipeline reads)."""
    ti = TaskInstance(dag_id, task_id, xcoms=xcoms or {})
    return {"ti": ti, "task_instance": ti, "run_id": RUN_ID, "params": params or {}, "exception": exception,
            "dag": None, "ds": "2026-11-28"}


@pytest.fixture
def world(tmp_path, monkeypatch) -> Registry:
    """A pipeline home whose registry has mnist v1 stable and v2 rolled back by this run; Airflow's base URL set."""
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL + "/")
    monkeypatch.delenv("AIRFLOW_CONN_PIPELINE_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_PIPELINE_WEBHOOK", raising=False)
    monkeypatch.setattr(notify, "_missing_connections", set())
    registry = Registry(get_paths().registry_url)
    for version, last in ((1, State.PROMOTED), (2, State.CANARY)):
        registry.register_version("mnist", version, {"metrics": {"accuracy": 0.98}})
        for state in (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED):
            registry.transition("mnist", version, state, run_id="setup", reason="setup")
            if state is last:
                break
    registry.record_rollback("mnist", 2, run_id=RUN_ID, reason="live canary shadow failed")
    return registry


@pytest.fixture
def receivers(world, monkeypatch) -> Iterator[tuple[Any, WebhookReceiver]]:
    with smtp_sink() as sink, serving(WebhookReceiver()) as hook:
        define_connections(monkeypatch, smtp=sink, webhook=hook)
        yield sink, hook


def run_url() -> str:
    return f"{BASE_URL}/dags/mnist_release/runs/{quote(RUN_ID, safe='')}"


def test_a_failed_release_is_mailed_and_posted_naming_model_version_reason_and_the_run(receivers):
    sink, hook = receivers
    failed = context("mnist_release", "shadow", exception=Refused(SHADOW_FAILED), xcoms={"export": {"version": 2}})
    for notifier in alert_notifiers(RELEASE_FAILED):
        notifier(failed)  # as Airflow's task runner calls each callback of the list

    (mail,) = sink.mails
    assert mail.recipients == ["oncall@example.com"] and mail.sender == "airflow@example.com"
    assert mail.subject == "mnist version 2 release failed at shadow; rolled back 2; production serves stable 1"
    assert "agreement 0.0 % &lt; 95.0 % (21 paired)" in mail.body  # the reason, escaped in the HTML body
    assert f'href="{run_url()}"' in mail.body
    (post,) = hook.requests
    assert post.method == "POST" and post.path == "/hooks/pipeline" and post.headers["x-team"] == "ml-oncall"
    sent = post.body
    assert (sent["event"], sent["model"], sent["version"], sent["stable"]) == (RELEASE_FAILED, "mnist", 2, 1)
    assert sent["reason"] == SHADOW_FAILED and sent["run_url"] == run_url() and sent["rolled_back"] == [2]
    assert sent["task_id"] == "shadow" and run_url() in sent["text"] and "version: 2" in sent["text"]


def test_an_on_call_rollback_is_announced_with_the_new_stable_and_the_reason(receivers):
    sink, hook = receivers
    done = context("model_rollback", "rollback", params={"model": "mnist", "to_version": None,
                                                         "reason": "7s answered as 1s"},
                   xcoms={"rollback": {"model": "mnist", "from": 2, "to": 1, "seconds": 0.4}})
    for notifier in alert_notifiers(ROLLBACK):
        notifier(done)

    (mail,) = sink.mails
    assert mail.subject == "mnist rolled back: stable 2 -> 1" and "7s answered as 1s" in mail.body
    sent = hook.requests[0].body
    assert (sent["model"], sent["version"], sent["previous"], sent["reason"]) == ("mnist", 1, 2, "7s answered as 1s")
    assert sent["run_url"] == f"{BASE_URL}/dags/model_rollback/runs/{quote(RUN_ID, safe='')}"


def test_a_failed_probe_names_the_version_that_failed_and_what_serves_now(receivers):
    sink, hook = receivers
    probe = context("canary_monitor", "probe_mnist", exception=Refused(
        "mnist: stable 2 failed its probe (golden: 20 of 20 predictions differ); rolled back to 1"))
    for notifier in alert_notifiers(PROBE_FAILED):
        notifier(probe)

    assert sink.mails[0].subject == "mnist production probe of version 2 failed; rolled back to 1"
    sent = hook.requests[0].body
    assert (sent["model"], sent["version"], sent["stable"]) == ("mnist", 2, 1)
    assert "20 of 20 predictions differ" in sent["reason"] and "/dags/canary_monitor/runs/" in sent["run_url"]


def test_drift_names_the_model_the_stable_version_and_the_reasons(receivers):
    sink, hook = receivers
    drift = context("canary_monitor", "drift_mnist", exception=Refused(
        "mnist stable 1: alarm (300 instances, drifted windows in a row 2/2): stroke drifted (KS 0.180, p 1e-08)"))
    for notifier in alert_notifiers(DRIFT):
        notifier(drift)

    assert sink.mails[0].subject == "mnist production drifting: stable 1 on live traffic; production serves stable 1"
    sent = hook.requests[0].body
    assert (sent["event"], sent["model"], sent["version"]) == ("drift", "mnist", 1)
    assert "stroke drifted" in sent["reason"] and sent["task_id"] == "drift_mnist"


def test_a_refused_rollback_names_the_version_asked_for(receivers):
    sink, hook = receivers
    refused = context("model_rollback", "rollback", params={"model": "mnist", "to_version": 7, "reason": "x"},
                      exception=Refused("mnist version 7 is not on disk under /models/mnist"))
    for notifier in alert_notifiers(ROLLBACK_FAILED):
        notifier(refused)
    assert sink.mails[0].subject == "mnist rollback to version 7 failed; production serves stable 1"
    assert hook.requests[0].body["reason"] == "mnist version 7 is not on disk under /models/mnist"


def test_without_connections_no_alert_is_attempted_and_that_is_logged_once(world, caplog):
    failed = context("mnist_release", "evaluate", exception=Refused("evaluate: NOT_BLESSED (accuracy 0.1 < 0.8)"))
    with caplog.at_level(logging.INFO, logger="pipeline.notify"):
        for _ in range(2):
            for notifier in alert_notifiers(RELEASE_FAILED):
                notifier(failed)
    said = [r.getMessage() for r in caplog.records]
    assert said.count("no alerts through pipeline_smtp: the Airflow connection is not defined") == 1
    assert said.count("no alerts through pipeline_webhook: the Airflow connection is not defined") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unreachable_receiver_is_one_error_line_and_never_raises(world, monkeypatch, caplog):
    dead = WebhookReceiver(port=free_port())  # nothing listens there
    define_connections(monkeypatch, webhook=dead)
    with caplog.at_level(logging.ERROR, logger="pipeline.notify"):
        WebhookNotifier(RELEASE_FAILED)(context("mnist_release", "train", exception=RuntimeError("OOM")))
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "not sent" in line.getMessage() and "pipeline_webhook" in line.getMessage() and line.exc_info is None


def test_smtp_recipients_come_from_the_connection_and_a_list_works_too(world, monkeypatch):
    with smtp_sink() as sink:
        define_connections(monkeypatch, smtp=sink, recipients="a@example.com, b@example.com")
        SmtpAlertNotifier(RELEASE_FAILED)(context("mnist_release", "train", exception=RuntimeError("OOM")))
    assert sink.mails[0].recipients == ["a@example.com", "b@example.com"]
    assert sink.mails[0].subject == "mnist release failed at train; rolled back 2; production serves stable 1"


def test_the_note_is_one_line_on_the_run_and_a_later_failure_of_the_run_is_added_after_it(world, monkeypatch):
    with serving(AirflowApiStub()) as api:
        pose_as_local_stack(get_paths().home, api, monkeypatch)
        first = note_and_log(context("mnist_release", "shadow", exception=Refused(SHADOW_FAILED + "\n(details)")),
                             RELEASE_FAILED)
        note = api.notes[("mnist_release", RUN_ID)]
        assert note == first.note == f"shadow failed: {SHADOW_FAILED} (details)"
        assert "\n" not in note

        note_and_log(context("mnist_release", "restore_production", exception=RuntimeError("nginx reload failed")),
                     RELEASE_FAILED)
        later = api.notes[("mnist_release", RUN_ID)]
        assert later.startswith(note) and later.endswith(
            "then restore_production failed: nginx reload failed; production serves stable 1")
        patch = next(r for r in api.requests if r.method == "PATCH")
        assert patch.query == {"update_mask": ["note"]} and set(patch.body) == {"note"}


def test_a_note_never_exceeds_what_airflow_accepts(world):
    alert = describe(context("mnist_release", "validate_data", exception=Refused("x" * 5000)), RELEASE_FAILED)
    assert len(alert.note) == 1000 and alert.note.endswith("…")


def test_a_rollback_note_says_what_is_stable_now_and_why(world):
    alert = describe(context("model_rollback", "rollback", params={"model": "mnist", "reason": "bad 7s"},
                             xcoms={"rollback": {"from": 2, "to": 1}}), ROLLBACK)
    assert alert.note == "stable 2 -> 1: bad 7s"


def test_rollbacks_made_outside_airflow_are_alerted_one_each_by_production_changes(receivers):
    sink, hook = receivers
    found = [{"model": "mnist", "environment": "production", "version": 1, "run_id": None, "origin": "shell",
              "reason": "on-call rollback (CLI): stable 2 -> 1", "change": "rollback"},
             {"model": "spam", "environment": "production", "version": 4, "run_id": "cli-release-7",
              "origin": "shell", "reason": "live canary 5 rolled back (shadow failed)", "change": "live_canary_rollback"}]
    done = context("production_changes", "alert_rollbacks_made_outside_airflow",
                   xcoms={"alert_rollbacks_made_outside_airflow": found})
    for notifier in alert_notifiers(ROLLBACK_OUTSIDE):
        notifier(done)

    assert [m.subject for m in sink.mails] == ["mnist rolled back outside Airflow; production serves stable 1",
                                              "spam rolled back outside Airflow; production serves stable 4"]
    sent = [r.body for r in hook.requests]
    assert [(b["model"], b["version"], b["stable"]) for b in sent] == [("mnist", 1, 1), ("spam", 4, 4)]
    assert sent[0]["reason"] == "on-call rollback (CLI): stable 2 -> 1" and sent[1]["run_id"] == "cli-release-7"
    assert sent[0]["run_url"] == f"{BASE_URL}/dags/production_changes/runs/{quote(RUN_ID, safe='')}"


def test_production_changes_with_nothing_made_outside_airflow_alert_nothing(receivers):
    sink, hook = receivers
    for notifier in alert_notifiers(ROLLBACK_OUTSIDE):
        notifier(context("production_changes", "alert_rollbacks_made_outside_airflow",
                         xcoms={"alert_rollbacks_made_outside_airflow": []}))
    assert sink.mails == [] and hook.requests == []


def test_a_task_that_failed_without_an_exception_says_so_and_where_to_look(world):
    alert = describe(context("canary_monitor", "probe_mnist"), PROBE_FAILED)  # killed, or never started
    assert "without an error of its own" in alert.reason and "see its log" in alert.reason
    assert alert.note.startswith("probe_mnist failed: the task ended without an error of its own")
