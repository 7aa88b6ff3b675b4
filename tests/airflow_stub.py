"""Small local servers standing in for what the pipeline talks to when it tells people: Airflow's public REST API
(assets, asset events, DAG run notes, ``/auth/token``), a webhook receiver, and helpers to point the pipeline at them.

Each serves on loopback on a free port (``pipeline.util.net.free_ports``) in a thread of the test process and
records every request it got, so tests assert on what arrived, not on what was meant to be sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.util.net import free_port

_TOKEN = "stub-token"
_RUN_PATH = re.compile(r"^/api/v2/dags/(?P<dag>[^/]+)/dagRuns/(?P<run>[^/]+)$")


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class AirflowApiStub:
    """Airflow's API as far as the pipeline uses it. ``assets``: (name, uri) -> id of the assets it knows."""

    password: str = "s3cret"
    assets: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    run_states: dict[tuple[str, str], str] = field(default_factory=dict)  # (dag_id, run_id) -> state; else running
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def know_asset(self, name: str, uri: str) -> int:
        self.assets[(name, uri)] = len(self.assets) + 1
        return self.assets[(name, uri)]

    def events_of(self, name: str) -> list[dict[str, Any]]:
        ids = {asset_id for (asset_name, _), asset_id in self.assets.items() if asset_name == name}
        return [event["extra"] for event in self.events if event["asset_id"] in ids]

    def handle(self, got: Received) -> tuple[int, Any]:
        if got.path == "/auth/token" and got.method == "POST":
            if got.body == {"username": "admin", "password": self.password}:
                return 201, {"access_token": _TOKEN}
            return 401, {"detail": "Invalid credentials"}
        if got.headers.get("authorization") != f"Bearer {_TOKEN}":
            return 401, {"detail": "Not authenticated"}
        if got.path == "/api/v2/assets" and got.method == "GET":
            pattern = got.query.get("name_pattern", [""])[0]
            found = [{"id": i, "name": n, "uri": u} for (n, u), i in self.assets.items() if pattern in n]
            return 200, {"assets": found, "total_entries": len(found)}
        if got.path == "/api/v2/assets/events" and got.method == "POST":
            if got.body.get("asset_id") not in self.assets.values():
                return 404, {"detail": f"Asset with ID: `{got.body.get('asset_id')}` was not found"}
            event = {"id": len(self.events) + 1, "asset_id": got.body["asset_id"],
                     "extra": {**got.body.get("extra", {}), "from_rest_api": True}}
            self.events.append(event)
            return 200, event
        if match := _RUN_PATH.match(got.path):
            key = (unquote(match["dag"]), unquote(match["run"]))
            if got.method == "PATCH":
                self.notes[key] = got.body["note"]
            return 200, {"dag_id": key[0], "dag_run_id": key[1], "note": self.notes.get(key),
                         "state": self.run_states.get(key, "running")}
        return 404, {"detail": "no such route in the stub"}


@dataclass
class WebhookReceiver:
    """Records every POST it gets (path, headers, JSON body) and answers 200."""

    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def handle(self, got: Received) -> tuple[int, Any]:
        return 200, {"ok": True}


def _handler(owner: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            got = Received(self.command, parts.path, parse_qs(parts.query),
                           {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None)
            owner.requests.append(got)
            status, answer = owner.handle(got)
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    return Handler


@contextmanager
def serving(owner: AirflowApiStub | WebhookReceiver) -> Iterator[Any]:
    """Serve ``owner`` on a free loopback port until the block ends."""
    owner.port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", owner.port), _handler(owner))
    thread = threading.Thread(target=server.serve_forever, name="stub-http", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pose_as_local_stack(home: Path, api: AirflowApiStub, monkeypatch: Any) -> None:
    """Make ``home`` look like a running local stack whose API is ``api``: its generated admin password, its port."""
    airflow_home = home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    (airflow_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": api.password}))
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__PORT", str(api.port))


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    body: str


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts."""

    mails: list[Mail] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.content, policy=policy.default)
        parts = [part.get_content() for part in message.walk() if part.get_content_maintype() == "text"]
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), str(message["Subject"]), "\n".join(parts)))
        return "250 Message accepted for delivery"


@contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    """Run an SMTP server on a free loopback port until the block ends."""
    from aiosmtpd.controller import Controller

    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def define_connections(monkeypatch: Any, smtp: SmtpSink | None = None, webhook: WebhookReceiver | None = None,
                       recipients: str = "oncall@example.com") -> None:
    """Define the pipeline's alert connections as Airflow reads them from the environment (``AIRFLOW_CONN_*``)."""
    if smtp is not None:
        monkeypatch.setenv("AIRFLOW_CONN_PIPELINE_SMTP", json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port,
            "extra": {"from_email": "airflow@example.com", "to": recipients, "disable_tls": True, "disable_ssl": True,
                      "timeout": 10, "retry_limit": 1}}))
    if webhook is not None:
        monkeypatch.setenv("AIRFLOW_CONN_PIPELINE_WEBHOOK", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": webhook.port, "schema": "http",
            "extra": {"endpoint": "/hooks/pipeline", "headers": {"X-Team": "ml-oncall"}}}))
