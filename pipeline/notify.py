"""Tell people: a one-line note on the DAG run, and alerts through Airflow's notifiers.

The DAGs' callbacks use this module (``dags/``: ``on_failure_callback`` of every release task, of ``model_rollback``
and of ``canary_monitor``'s probes and drift tasks; ``on_success_callback`` of ``model_rollback``). The events:

``release_failed``   a task of ``<model>_release`` failed (a refused gate, a live phase that rolled back, a crash)
``rollback``         ``model_rollback`` moved production's stable version
``rollback_failed``  ``model_rollback`` was refused or failed
``probe_failed``     ``canary_monitor``'s probe of production failed (it rolled back on its own, or tried to)
``drift``            ``canary_monitor``'s drift task raised the alarm: sustained input or prediction drift, or a live
                     accuracy drop, on production's live traffic (:mod:`pipeline.monitoring`)
``rollback_outside_airflow``  production was rolled back outside Airflow (``pipeline rollback`` from a shell, the
                     automatic rollback of ``pipeline release``): ``production_changes``, which every event of a
                     production asset starts, found it among its triggering events (one alert per rollback)

:func:`describe` turns an Airflow callback context into an :class:`Alert`: model, version, what production serves
now, the reason, and the run's URL in the Airflow UI (``[api] base_url``). The same alert becomes the run's note
(:func:`write_run_note`, through Airflow's REST API) and the messages of the notifiers, each configured by an
Airflow connection and silent (logged once per process) while that connection is not defined:

- ``pipeline_smtp`` (type ``smtp``): e-mail through the SMTP provider's ``SmtpNotifier``; recipients in the
  connection's extra ``to`` (a list or comma-separated), sender in ``from_email``;
- ``pipeline_webhook`` (type ``http``): :class:`WebhookNotifier` POSTs the alert as JSON (``text`` holds a readable
  summary, so chat webhooks show it as is) to the connection's URL.

Light at import (a DAG file builds the notifiers when it is parsed): Airflow's SDK only; requests, the SMTP
provider and the registry are imported when an alert is sent.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

from pipeline.airflow_rest import one_line, set_run_note

log = logging.getLogger(__name__)

SMTP_CONN_ID = "pipeline_smtp"
WEBHOOK_CONN_ID = "pipeline_webhook"

RELEASE_FAILED = "release_failed"
ROLLBACK = "rollback"
ROLLBACK_FAILED = "rollback_failed"
PROBE_FAILED = "probe_failed"
ROLLBACK_OUTSIDE = "rollback_outside_airflow"
DRIFT = "drift"
EVENTS = (RELEASE_FAILED, ROLLBACK, ROLLBACK_FAILED, PROBE_FAILED, ROLLBACK_OUTSIDE, DRIFT)

_CONNECT_TIMEOUT_S = 5.0
_SEND_TIMEOUT_S = 15.0
_RELEASE_SUFFIX = "_release"
_PROBE_PREFIX = "probe_"
_DRIFT_PREFIX = "drift_"
# A failure callback without an exception: the task's code never raised (it was killed, timed out, or its process
# could not start or reach Airflow's API); its log says which.
_NO_EXCEPTION = "the task ended without an error of its own (killed, timed out, or it never started): see its log"
_missing_connections: set[str] = set()  # connection ids already reported missing by this process


@dataclass(frozen=True)
class Alert:
    """What happened, to which model and version, what production serves now, why, and where to look."""

    event: str
    model: str
    version: int | None
    stable: int | None
    reason: str
    dag_id: str
    run_id: str
    run_url: str
    task_id: str | None = None
    rolled_back: tuple[int, ...] = ()
    previous: int | None = None  # a rollback's stable before it

    @property
    def title(self) -> str:
        """One short line: the event, model and version (an e-mail subject)."""
        served = f"production serves {self.serving}"
        if self.event == RELEASE_FAILED:
            candidate = f" version {self.version}" if self.version is not None else ""
            rolled = f"; rolled back {_versions(self.rolled_back)}" if self.rolled_back else ""
            return f"{self.model}{candidate} release failed at {self.task_id}{rolled}; {served}"
        if self.event == ROLLBACK:
            return f"{self.model} rolled back: stable {self.previous} -> {self.version}"
        if self.event == ROLLBACK_OUTSIDE:
            return f"{self.model} rolled back outside Airflow; {served}"
        if self.event == DRIFT:
            return f"{self.model} production drifting: stable {self.version} on live traffic; {served}"
        if self.event == ROLLBACK_FAILED:
            target = f" to version {self.version}" if self.version is not None else ""
            return f"{self.model} rollback{target} failed; {served}"
        rolled = f"; rolled back to {self.stable}" if self.rolled_back else f"; {served}"
        return f"{self.model} production probe of version {self.version} failed{rolled}"

    @property
    def note(self) -> str:
        """The DAG run's note: one line, the reason first."""
        if self.event == ROLLBACK:
            return one_line(f"stable {self.previous} -> {self.version}: {self.reason}")
        named = not self.task_id or self.reason.startswith(f"{self.task_id.rsplit('.', 1)[-1]}:")  # "evaluate: NOT_…"
        where = "" if named else f"{self.task_id} failed: "
        served = "" if "stable" in self.reason else f"; production serves {self.serving}"
        return one_line(f"{where}{self.reason}{served}")

    @property
    def serving(self) -> str:
        """What production serves now, in words."""
        return f"stable {self.stable}" if self.stable is not None else "nothing"

    def text(self) -> str:
        """The readable message: title, then one field a line."""
        lines = [self.title, "", f"model: {self.model}", f"version: {_or_none(self.version)}",
                 f"production serves: {self.serving}", f"reason: {self.reason}", f"run: {self.run_url}"]
        if self.task_id:
            lines.insert(-1, f"task: {self.task_id}")
        return "\n".join(lines)

    def html(self) -> str:
        """The message as a small HTML e-mail body (every value escaped)."""
        rows = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in (("model", self.model), ("version", _or_none(self.version)),
                                    ("production serves", self.serving),
                                    ("reason", self.reason), ("task", self.task_id or "-")))
        link = f"<a href=\"{html.escape(self.run_url, quote=True)}\">{html.escape(self.run_url)}</a>"
        return f"<p><b>{html.escape(self.title)}</b></p><table>{rows}</table><p>Run: {link}</p>"

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON: every field, the title, and ``text`` (the readable message)."""
        return {**asdict(self), "rolled_back": list(self.rolled_back), "title": self.title, "text": self.text()}


def describe_all(context: Mapping[str, Any], event: str) -> list[Alert]:
    """The alerts of ``event``: one, except for rollbacks made outside Airflow (one per rollback the task found)."""
    if event != ROLLBACK_OUTSIDE:
        return [describe(context, event)]
    ti = context["ti"]
    run_id = str(context.get("run_id") or ti.run_id)
    url = run_url(ti.dag_id, run_id)
    return [Alert(ROLLBACK_OUTSIDE, str(extra.get("model")), extra.get("version"), extra.get("version"),
                  str(extra.get("reason") or "(no reason given)"), ti.dag_id, str(extra.get("run_id") or run_id), url)
            for extra in _pull(ti, ti.task_id) or []]


def describe(context: Mapping[str, Any], event: str) -> Alert:
    """The alert of ``event`` from an Airflow callback context (``ti``, ``run_id``, ``params``, ``exception``)."""
    if event not in EVENTS or event == ROLLBACK_OUTSIDE:
        raise ValueError(f"no single alert for event {event!r} (known: {list(EVENTS)}; see describe_all)")
    ti = context["ti"]
    dag_id, task_id = ti.dag_id, ti.task_id
    run_id = str(context.get("run_id") or ti.run_id)
    params = context.get("params") or {}
    model = _model_of(event, dag_id, task_id, params)
    facts = _registry_facts(model, run_id)
    exception = context.get("exception")
    reason = one_line(str(exception)) if exception is not None else ""
    version: int | None = None
    previous: int | None = None
    if event == RELEASE_FAILED:
        version = _pulled(ti, _task_named(context, "export"), "version")
    elif event == ROLLBACK:
        result = _pull(ti, task_id) or {}
        version = result.get("to", facts.stable)
        previous = result.get("from")
        reason = str(params.get("reason") or "on-call rollback")
    elif event == ROLLBACK_FAILED:
        version = params.get("to_version")
    elif event == DRIFT:  # the version watched: production's stable one
        version = facts.stable
    else:  # PROBE_FAILED: the version that failed is the one this run rolled back, else the stable one it probed
        version = facts.rolled_back[0] if facts.rolled_back else facts.stable
    return Alert(event, model, version, facts.stable, reason or _NO_EXCEPTION, dag_id, run_id,
                 run_url(dag_id, run_id), task_id if event != ROLLBACK else None, facts.rolled_back, previous)


def run_url(dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI: ``[api] base_url`` (default ``http://localhost:<[api] port>``)."""
    return f"{airflow_base_url()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def airflow_base_url() -> str:
    """Airflow's base URL from its config (``[api] base_url``, ``$AIRFLOW__API__BASE_URL``)."""
    try:
        from airflow.sdk.configuration import conf

        base = conf.get("api", "base_url", fallback=None) or ""
        port = conf.get("api", "port", fallback="8080")
    except Exception:  # noqa: BLE001 - a config that cannot be read still leaves the environment
        base = os.environ.get("AIRFLOW__API__BASE_URL", "")
        port = os.environ.get("AIRFLOW__API__PORT", "8080")
    return (base or f"http://localhost:{port}").rstrip("/")


def write_run_note(alert: Alert) -> bool:
    """Write the alert's one line as the DAG run's note (after any note the run has); True when written."""
    return set_run_note(alert.dag_id, alert.run_id, alert.note)


def note_and_log(context: Mapping[str, Any], event: str) -> Alert:
    """The common body of the DAGs' callbacks: describe the event, write the run's note, log the note."""
    alert = describe(context, event)
    if write_run_note(alert):
        log.info("note on %s %s: %s", alert.dag_id, alert.run_id, alert.note)
    return alert


# ---- notifiers ---------------------------------------------------------------------------------------------------


class _AlertNotifier(BaseNotifier):
    """A notifier of one event, configured by one Airflow connection; silent while that connection is undefined.

    A failed delivery is logged as one error line: an alert never fails the task or the other callbacks.
    """

    default_conn_id = ""

    def __init__(self, event: str, conn_id: str | None = None) -> None:
        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r} (known: {list(EVENTS)})")
        self.event = event
        self.conn_id = conn_id or self.default_conn_id

    def notify(self, context: Any) -> None:
        connection = configured_connection(self.conn_id)
        if connection is None:
            return
        try:
            for alert in describe_all(context, self.event):
                self.send(alert, connection, context)
        except Exception as exc:  # noqa: BLE001 - one line; an alert that cannot go out must not hide the failure
            log.error("%s alert through connection %s not sent: %s: %s", self.event, self.conn_id,
                      type(exc).__name__, exc)

    def send(self, alert: Alert, connection: Any, context: Any) -> None:
        raise NotImplementedError


class WebhookNotifier(_AlertNotifier):
    """POSTs the alert as JSON to the HTTP connection ``pipeline_webhook``.

    The URL: the connection's host when it is a whole URL (``https://hooks.example.com/x``), else
    ``<schema or https>://<host>[:<port>]``, then the extra's ``endpoint`` if any. ``login``/``password`` are sent
    as basic auth; the extra's ``headers`` (an object) as headers.
    """

    default_conn_id = WEBHOOK_CONN_ID

    def send(self, alert: Alert, connection: Any, context: Any) -> None:
        import requests

        extra = connection.extra_dejson or {}
        auth = (connection.login, connection.password or "") if connection.login else None
        reply = requests.post(webhook_url(connection), json=alert.payload(), auth=auth,
                              headers={str(k): str(v) for k, v in (extra.get("headers") or {}).items()},
                              timeout=(_CONNECT_TIMEOUT_S, _SEND_TIMEOUT_S))
        reply.raise_for_status()
        log.info("%s alert posted to %s (HTTP %s)", alert.event, self.conn_id, reply.status_code)


class SmtpAlertNotifier(_AlertNotifier):
    """E-mails the alert through the SMTP provider's ``SmtpNotifier`` and the SMTP connection ``pipeline_smtp``.

    Recipients: the connection's extra ``to`` (a list, or comma-separated); sender: its ``from_email``.
    """

    default_conn_id = SMTP_CONN_ID

    def send(self, alert: Alert, connection: Any, context: Any) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        extra = connection.extra_dejson or {}
        to = extra.get("to")
        recipients = [r.strip() for r in (to.split(",") if isinstance(to, str) else to or []) if r.strip()]
        if not recipients:
            raise ValueError(f"connection {self.conn_id} names no recipients (extra \"to\")")
        # notify() directly: the subject and body are the alert's text, never rendered as Jinja templates.
        SmtpNotifier(to=recipients, from_email=extra.get("from_email"), smtp_conn_id=self.conn_id,
                     subject=alert.title, html_content=alert.html()).notify(context)
        log.info("%s alert e-mailed to %s through %s", alert.event, ", ".join(recipients), self.conn_id)


def alert_notifiers(event: str) -> list[BaseNotifier]:
    """The notifiers of ``event`` for a DAG's callback list: e-mail and webhook, each on when its connection is."""
    return [SmtpAlertNotifier(event), WebhookNotifier(event)]


def configured_connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id``, or None (logged once per process) when it is not defined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if conn_id not in _missing_connections:
            _missing_connections.add(conn_id)
            log.info("no alerts through %s: the Airflow connection is not defined", conn_id)
        return None


def webhook_url(connection: Any) -> str:
    """The webhook connection's URL (see :class:`WebhookNotifier`)."""
    host = (connection.host or "").strip()
    if not host:
        raise ValueError(f"connection {connection.conn_id} has no host")
    if "://" in host:
        base = host.rstrip("/")
    else:
        port = f":{connection.port}" if connection.port else ""
        base = f"{connection.schema or 'https'}://{host}{port}"
    endpoint = str((connection.extra_dejson or {}).get("endpoint") or "")
    return f"{base}/{endpoint.lstrip('/')}" if endpoint else base


# ---- what the registry says about a run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    stable: int | None = None
    rolled_back: tuple[int, ...] = field(default_factory=tuple)  # versions this run rolled back, newest first


def _registry_facts(model: str, run_id: str) -> _Facts:
    """Production's stable version now and what this run rolled back, from the release registry (best effort)."""
    try:
        from pipeline.release.registry import Registry, State
        from pipeline.settings import get_paths

        registry = Registry(get_paths().registry_url)
        try:
            rolled = tuple(dict.fromkeys(t.version for t in registry.history(model, limit=200)
                                         if t.run_id == run_id and t.to_state is State.ROLLED_BACK))
            return _Facts(registry.stable_version(model), rolled)
        finally:
            registry.close()
    except Exception as exc:  # noqa: BLE001 - an alert without these figures is better than none
        log.warning("%s: the registry could not be read for the alert: %s", model, exc)
        return _Facts()


def _model_of(event: str, dag_id: str, task_id: str, params: Mapping[str, Any]) -> str:
    if event == RELEASE_FAILED:
        return dag_id.removesuffix(_RELEASE_SUFFIX)
    if event == PROBE_FAILED:
        return task_id.rsplit(".", 1)[-1].removeprefix(_PROBE_PREFIX)  # a task group may prefix the id
    if event == DRIFT:
        return task_id.rsplit(".", 1)[-1].removeprefix(_DRIFT_PREFIX)
    return str(params.get("model"))


def _task_named(context: Mapping[str, Any], name: str) -> str:
    """The id of the run's task ``name`` (inside a task group, ``<group>.<name>``)."""
    task_ids = getattr(context.get("dag"), "task_ids", None) or ()
    return next((t for t in task_ids if t == name or t.endswith(f".{name}")), name)


def _pull(ti: Any, task_id: str) -> Any:
    try:
        return ti.xcom_pull(task_ids=task_id)
    except Exception as exc:  # noqa: BLE001 - an XCom that cannot be read leaves the field empty
        log.warning("XCom of %s not readable for the alert: %s", task_id, exc)
        return None


def _pulled(ti: Any, task_id: str, key: str) -> Any:
    value = _pull(ti, task_id)
    return value.get(key) if isinstance(value, Mapping) else None


def _versions(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in versions)


def _or_none(value: object) -> str:
    return "none" if value is None else str(value)
