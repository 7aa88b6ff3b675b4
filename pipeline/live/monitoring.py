"""Prometheus for the stack: what it scrapes, how it and the nginx exporter run, and one way to ask it.

Prometheus and the exporter are Debian's packages (``apt-get install prometheus prometheus-nginx-exporter``), run
as programs of :class:`~pipeline.util.supervisor.Supervisor`. Prometheus scrapes three jobs:

``tfserving``
    every TF Serving instance's ``/monitoring/prometheus/metrics`` on its REST port (TF Serving's
    ``PrometheusExporter::kPrometheusPath``; the embedded server serves it with ``--monitoring_config_file``), one
    target per instance, labelled ``instance_name`` (``staging``, ``production``, ``canary``).
``capture``
    the capture service's ``/metrics`` (:mod:`pipeline.live.capture`: mirrored, dropped, feedback counts).
``proxy``
    the nginx exporter, which turns the proxy's ``stub_status`` page (:data:`STUB_STATUS_PATH` on the proxy's REST
    port, loopback clients only) into ``nginx_*`` metrics.

A job without targets is left out. :func:`query` asks Prometheus' HTTP API for an instant vector, e.g.
``query(url, 'up{job="capture"}')``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline.errors import ConfigError, NotFound, PipelineError, SourceUnavailable
from pipeline.util.supervisor import Program

PROMETHEUS_BINARY = "prometheus"
PROMETHEUS_INSTALL_HINT = "apt-get install prometheus"
NGINX_EXPORTER_BINARY = "prometheus-nginx-exporter"
NGINX_EXPORTER_INSTALL_HINT = "apt-get install prometheus-nginx-exporter"
PROMETHEUS_PROGRAM = "prometheus"
NGINX_EXPORTER_PROGRAM = "nginx-exporter"
TFSERVING_METRICS_PATH = "/monitoring/prometheus/metrics"
CAPTURE_METRICS_PATH = "/metrics"
STUB_STATUS_PATH = "/_proxy/stub_status"  # in configs/proxy/nginx.conf.template's REST server
INSTANCE_LABEL = "instance_name"
RETENTION = "2d"  # the stack's metrics serve the live canary and a look around, not history

_FALLBACK_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")  # /usr/sbin is not on every user's PATH
_MAX_SCRAPE_TIMEOUT_MS = 10_000
# Until the proxy answers, the exporter retries this often, then exits (and supervisord starts it again).
_EXPORTER_RETRIES = 30
_EXPORTER_RETRY_INTERVAL = "1s"
_ADDRESS = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})")


@dataclass(frozen=True)
class ScrapeTargets:
    """Where the stack's metrics are, each as ``host:port``.

    Attributes:
        tfserving: each TF Serving instance's REST API, by instance name (``staging``, ``production``, ``canary``).
        capture: the capture service; None when it does not run.
        nginx_exporter: the nginx exporter; None when it does not run.

    Raises:
        ConfigError: an address is not ``host:port``.
    """

    tfserving: Mapping[str, str] = field(default_factory=dict)
    capture: str | None = None
    nginx_exporter: str | None = None

    def __post_init__(self) -> None:
        for what, address in [*(("tfserving " + name, url) for name, url in self.tfserving.items()),
                              ("capture", self.capture), ("nginx_exporter", self.nginx_exporter)]:
            if address is not None:
                _check_address(what, address)
        if any(not name for name in self.tfserving):
            raise ConfigError("tfserving: an instance name is empty")


def render_prometheus_config(targets: ScrapeTargets, scrape_interval_s: float = 5) -> str:
    """Prometheus' config (YAML) scraping ``targets`` every ``scrape_interval_s``.

    Raises:
        ConfigError: the interval is under a millisecond.
    """
    interval_ms = round(scrape_interval_s * 1000)
    if interval_ms < 1:
        raise ConfigError(f"scrape_interval_s must be at least 0.001, got {scrape_interval_s}")
    jobs: list[dict[str, Any]] = []
    if targets.tfserving:
        jobs.append(_job("tfserving", TFSERVING_METRICS_PATH, [
            {"targets": [address], "labels": {INSTANCE_LABEL: name}}
            for name, address in sorted(targets.tfserving.items())]))
    if targets.capture:
        jobs.append(_job("capture", CAPTURE_METRICS_PATH, [{"targets": [targets.capture]}]))
    if targets.nginx_exporter:
        jobs.append(_job("proxy", "/metrics", [{"targets": [targets.nginx_exporter]}]))
    document = {
        "global": {
            "scrape_interval": _duration(interval_ms),
            "scrape_timeout": _duration(min(interval_ms, _MAX_SCRAPE_TIMEOUT_MS)),  # may not exceed the interval
            "evaluation_interval": _duration(interval_ms),
        },
        "scrape_configs": jobs,
    }
    return "# Written by pipeline.live.monitoring: do not edit.\n" + yaml.safe_dump(document, sort_keys=False)


def prometheus_program(runtime_dir: Path, config_path: Path, port: int, host: str = "127.0.0.1") -> Program:
    """Prometheus as a supervised program: ``config_path``, its data in ``<runtime_dir>/tsdb`` (kept
    :data:`RETENTION`), answering on ``host:port``.

    Raises:
        NotFound: prometheus is not installed (the message says how to install it).
    """
    runtime_dir = Path(runtime_dir).resolve()
    return Program(name=PROMETHEUS_PROGRAM, command=(
        find_binary(PROMETHEUS_BINARY, PROMETHEUS_INSTALL_HINT),
        f"--config.file={Path(config_path).resolve()}",
        f"--storage.tsdb.path={runtime_dir / 'tsdb'}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={_host_port(host, port)}",
    ), cwd=runtime_dir)


def nginx_exporter_program(stub_status_url: str, port: int, host: str = "127.0.0.1") -> Program:
    """The nginx exporter as a supervised program: it reads ``stub_status_url`` (the proxy's
    :data:`STUB_STATUS_PATH`) at each scrape and answers ``/metrics`` on ``host:port``.

    Debian's build (0.11) takes Go-style single-dash flags. It waits for the proxy when it starts before it.

    Raises:
        NotFound: the exporter is not installed (the message says how to install it).
    """
    return Program(name=NGINX_EXPORTER_PROGRAM, command=(
        find_binary(NGINX_EXPORTER_BINARY, NGINX_EXPORTER_INSTALL_HINT),
        f"-nginx.scrape-uri={stub_status_url}",
        f"-web.listen-address={_host_port(host, port)}",
        f"-nginx.retries={_EXPORTER_RETRIES}",
        f"-nginx.retry-interval={_EXPORTER_RETRY_INTERVAL}",
    ))


def stub_status_url(host: str, rest_port: int) -> str:
    """The proxy's ``stub_status`` page, for the exporter (which must reach it from loopback)."""
    return f"http://{_host_port(host, rest_port)}{STUB_STATUS_PATH}"


def find_binary(name: str, install_hint: str) -> str:
    """The path of an installed binary: on PATH, else in /usr/bin, /usr/sbin or /usr/local/bin.

    Raises:
        NotFound: it is nowhere there; the message names ``install_hint`` (e.g. ``apt-get install prometheus``).
    """
    found = shutil.which(name)
    if found:
        return found
    for directory in _FALLBACK_DIRS:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise NotFound(f"{name} not found (PATH, {', '.join(_FALLBACK_DIRS)}): install it with `{install_hint}`")


def query(prometheus_url: str, promql: str, timeout_s: float = 5) -> list[dict[str, Any]]:
    """An instant query: the result vector, one ``{"metric": {labels}, "value": [time, "value"]}`` per series.

    Raises:
        SourceUnavailable: Prometheus did not answer.
        PipelineError: it answered an error (bad PromQL, a failed evaluation), or a result that is not a vector.
    """
    url = f"{prometheus_url.rstrip('/')}/api/v1/query"
    try:
        response = requests.get(url, params={"query": promql}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise SourceUnavailable(f"Prometheus at {prometheus_url} did not answer: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        raise PipelineError(f"Prometheus at {prometheus_url} answered {response.status_code} without JSON: "
                            f"{response.text[:200]!r}") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        details = answer if not isinstance(answer, dict) else f"{answer.get('errorType')}: {answer.get('error')}"
        raise PipelineError(f"Prometheus query {promql!r} failed ({response.status_code}): {details}")
    data = answer.get("data") or {}
    if data.get("resultType") != "vector":
        raise PipelineError(f"Prometheus query {promql!r} gave a {data.get('resultType')}, not an instant vector")
    return list(data.get("result") or [])


def _job(name: str, metrics_path: str, static_configs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_name": name, "metrics_path": metrics_path, "static_configs": static_configs}


def _duration(milliseconds: int) -> str:
    """A Prometheus duration: whole seconds as ``5s``, anything else in ``ms``."""
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _check_address(what: str, address: str) -> None:
    match = _ADDRESS.fullmatch(address)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ConfigError(f"{what}: expected host:port (e.g. 127.0.0.1:8501), got {address!r}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
