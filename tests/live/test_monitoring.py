"""Prometheus for the stack: the rendered scrape config (no binaries), then a real Prometheus under a real
supervisord scraping a prometheus_client server, and the real nginx exporter reading the proxy's stub_status."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server

from pipeline.errors import ConfigError, NotFound, PipelineError, SourceUnavailable
from pipeline.live import monitoring
from pipeline.live.monitoring import (
    NGINX_EXPORTER_BINARY,
    PROMETHEUS_BINARY,
    ScrapeTargets,
    find_binary,
    nginx_exporter_program,
    prometheus_program,
    query,
    render_prometheus_config,
    stub_status_url,
)
from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec, find_nginx
from pipeline.util.files import write_atomically
from pipeline.util.net import free_port, free_ports
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import Supervisor

_DEADLINE_S = 120.0  # Prometheus starts in seconds and scrapes every second here, but the 2 shared cores may be busy
_HTTP_TIMEOUT_S = 10.0


def binary_or_skip(name: str, package: str) -> str:
    try:
        return find_binary(name, f"apt-get install {package}")
    except NotFound:
        pytest.skip(f"{name} not installed: apt-get install {package}")


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(tmp_path / "supervisor")
    yield supervisor
    supervisor.shutdown()


# ---- the config and the programs (no binaries needed) ---------------------------------------------------------


def test_the_rendered_config_scrapes_every_target(tmp_path: Path) -> None:
    targets = ScrapeTargets(tfserving={"production": "127.0.0.1:8601", "canary": "127.0.0.1:8611",
                                       "staging": "localhost:8501"},
                            capture="127.0.0.1:8701", nginx_exporter="127.0.0.1:8714")
    document = yaml.safe_load(render_prometheus_config(targets, scrape_interval_s=2.5))
    assert document["global"] == {"scrape_interval": "2500ms", "scrape_timeout": "2500ms",
                                  "evaluation_interval": "2500ms"}
    jobs = {job["job_name"]: job for job in document["scrape_configs"]}
    assert set(jobs) == {"tfserving", "capture", "proxy"}
    assert jobs["tfserving"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["tfserving"]["static_configs"] == [
        {"targets": ["127.0.0.1:8611"], "labels": {"instance_name": "canary"}},
        {"targets": ["127.0.0.1:8601"], "labels": {"instance_name": "production"}},
        {"targets": ["localhost:8501"], "labels": {"instance_name": "staging"}},
    ]
    assert (jobs["capture"]["metrics_path"], jobs["capture"]["static_configs"]) == (
        "/metrics", [{"targets": ["127.0.0.1:8701"]}])
    assert jobs["proxy"]["static_configs"] == [{"targets": ["127.0.0.1:8714"]}]

    only_capture = yaml.safe_load(render_prometheus_config(ScrapeTargets(capture="127.0.0.1:1"), 60))
    assert [job["job_name"] for job in only_capture["scrape_configs"]] == ["capture"]
    assert only_capture["global"]["scrape_interval"] == "60s"
    assert only_capture["global"]["scrape_timeout"] == "10s"  # never more than the interval, here less
    for bad in ({"capture": "http://127.0.0.1:8701"}, {"nginx_exporter": "127.0.0.1"},
                {"tfserving": {"production": "127.0.0.1:99999"}}, {"tfserving": {"": "127.0.0.1:1"}}):
        with pytest.raises(ConfigError):
            ScrapeTargets(**bad)
    with pytest.raises(ConfigError, match="scrape_interval_s"):
        render_prometheus_config(targets, scrape_interval_s=0)


def test_the_programs_carry_the_debian_binaries_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitoring, "find_binary", lambda name, hint: f"/usr/bin/{name}")
    program = prometheus_program(tmp_path / "prom", tmp_path / "prom" / "prometheus.yml", 9090)
    root = tmp_path.resolve() / "prom"
    assert program.name == "prometheus" and program.command == (
        "/usr/bin/prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
        "--storage.tsdb.retention.time=2d", "--web.listen-address=127.0.0.1:9090")
    exporter = nginx_exporter_program(stub_status_url("::1", 8501), 9113, host="::1")
    assert exporter.name == "nginx-exporter"
    assert exporter.command[1:3] == ("-nginx.scrape-uri=http://[::1]:8501/_proxy/stub_status",
                                     "-web.listen-address=[::1]:9113")


def test_a_missing_binary_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(monitoring.shutil, "which", lambda name: None)
    monkeypatch.setattr(monitoring, "_FALLBACK_DIRS", (str(tmp_path),))
    with pytest.raises(NotFound, match="apt-get install prometheus`"):
        prometheus_program(tmp_path, tmp_path / "prometheus.yml", 9090)
    with pytest.raises(NotFound, match="apt-get install prometheus-nginx-exporter"):
        nginx_exporter_program("http://127.0.0.1:1/_proxy/stub_status", 9113)


# ---- real servers ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prometheus_under_supervisor_scrapes_the_capture_job(supervisor: Supervisor, tmp_path: Path) -> None:
    binary_or_skip(PROMETHEUS_BINARY, "prometheus")
    registry = CollectorRegistry()
    Counter("pipeline_test_events", "Events the test counted.", registry=registry).inc(3)
    metrics_port, prometheus_port = free_ports(2)
    server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    try:
        runtime = tmp_path / "prometheus"
        config = write_atomically(runtime / "prometheus.yml", render_prometheus_config(
            ScrapeTargets(capture=f"127.0.0.1:{metrics_port}"), scrape_interval_s=1))
        supervisor.run(prometheus_program(runtime, config, prometheus_port), _DEADLINE_S)
        url = f"http://127.0.0.1:{prometheus_port}"

        def scraped(promql: str) -> tuple[list[dict[str, Any]] | None, str]:
            try:
                result = query(url, promql, timeout_s=_HTTP_TIMEOUT_S)
            except SourceUnavailable as exc:  # still starting
                return None, str(exc)
            return (result or None), f"{promql} -> {result}"

        # Polled until 1: a scrape may time out on a busy machine (up 0), the next one succeeds.
        [up] = poll_until(lambda: scraped('up{job="capture"} == 1'), _DEADLINE_S, "capture target not up",
                          interval_s=0.5, hint=f"see {supervisor.log_path('prometheus')}")
        assert up["metric"]["instance"] == f"127.0.0.1:{metrics_port}"
        assert query(url, 'up{job="tfserving"}', timeout_s=_HTTP_TIMEOUT_S) == []  # no such job configured
        [counted] = poll_until(lambda: scraped("pipeline_test_events_total"), _DEADLINE_S, "counter not scraped")
        assert counted["value"][1] == "3"
        assert (runtime / "tsdb").is_dir()
        with pytest.raises(PipelineError, match="bad_data"):
            query(url, "up{", timeout_s=_HTTP_TIMEOUT_S)
        with pytest.raises(PipelineError, match="not an instant vector"):
            query(url, "1 + 1", timeout_s=_HTTP_TIMEOUT_S)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=_HTTP_TIMEOUT_S)


@pytest.mark.slow
def test_the_nginx_exporter_reads_the_proxys_stub_status(supervisor: Supervisor, tmp_path: Path) -> None:
    binary_or_skip(NGINX_EXPORTER_BINARY, "prometheus-nginx-exporter")
    try:
        find_nginx()
    except SourceUnavailable:
        pytest.skip("nginx not installed: apt-get install nginx-light")
    dead = [f"127.0.0.1:{port}" for port in free_ports(2)]  # nothing answers there: stub_status needs no upstream
    proxy = NginxProxy(tmp_path / "proxy")
    endpoint = proxy.start(ProxySpec(stable=UpstreamSpec(rest=dead[0], grpc=dead[1])), timeout_s=_DEADLINE_S)
    try:
        status_url = stub_status_url("127.0.0.1", endpoint.rest_port)
        page = requests.get(status_url, timeout=_HTTP_TIMEOUT_S)
        assert page.status_code == 200 and page.text.startswith("Active connections:")
        exporter_port = free_port()
        supervisor.run(nginx_exporter_program(status_url, exporter_port), _DEADLINE_S)

        def exported() -> tuple[str | None, str]:
            try:
                text = requests.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=_HTTP_TIMEOUT_S).text
            except requests.RequestException as exc:
                return None, str(exc)
            return (text if re.search(r"^nginx_up 1$", text, re.MULTILINE) else None), text[-300:]

        text = poll_until(exported, _DEADLINE_S, "the exporter does not report nginx up", interval_s=0.5,
                          hint=f"see {supervisor.log_path('nginx-exporter')}")
        requests_served = re.search(r"^nginx_http_requests_total (\d+)", text, re.MULTILINE)
        assert requests_served is not None and int(requests_served.group(1)) >= 1  # at least our own GET
    finally:
        proxy.stop()
