"""The live traffic path of the embedded stack: canary instance, nginx proxy, capture service, Prometheus.

Started by ``pipeline up`` (and so by ``make demo``) when the serving profile has a ``traffic:`` section, stopped
by ``pipeline down``. The proxy is nginx from Debian's package, run by :class:`~pipeline.live.proxy.NginxProxy`;
it, the capture service, Prometheus and the nginx exporter run under the stack's one supervisord
(:func:`pipeline.util.supervisor.stack_supervisor`, beside the servers and Airflow), restarted when they die; their
files lie under ``$PIPELINE_HOME/live/``. Every step attaches to what already runs, so ``up`` twice is harmless,
and a proxy that runs keeps its split (a live canary in progress is not reset by an ``up``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import list_models
from pipeline.errors import NotFound, PipelineError
from pipeline.live.endpoints import (
    CANARY_INSTANCE,
    PRODUCTION_INSTANCE,
    TrafficConfig,
    idle_split,
    live_endpoints,
    traffic_config,
)
from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec
from pipeline.live.routing import proxy_runtime_dir
from pipeline.serving.backends import get_backend
from pipeline.settings import Paths
from pipeline.util.files import write_atomically
from pipeline.util.net import free_port, port_in_use
from pipeline.util.signals import stop_on_signals
from pipeline.util.supervisor import RUNNING, Program, Supervisor, python_env, stack_supervisor

log = logging.getLogger(__name__)

CAPTURE = "capture"
# Capture workers in the stack: each capture is one or two loopback round trips (canary, then stable), and with every
# request mirrored (the embedded profile's monitor_mirror_percent 100) one worker fell seconds behind at 60
# requests/s on 2 busy cores, so labels overtook their requests.
CAPTURE_WORKERS = 2
_NGINX_EXPORTER_PORT_OFFSET = 13  # the exporter listens next to the capture service (8701 -> 8714)


def live_dir(paths: Paths) -> Path:
    return paths.home / "live"


def supervisor(paths: Paths) -> Supervisor:
    """The stack's supervisord (servers, proxy, capture service, Prometheus, nginx exporter, Airflow)."""
    return stack_supervisor(paths.home)


def live_path_in_profile() -> TrafficConfig | None:
    """The profile's traffic section, or None when the profile has no live traffic path."""
    try:
        return traffic_config()
    except NotFound:
        return None


def start_live_path(paths: Paths) -> dict[str, str]:
    """Start (or attach to) the canary instance, capture service, proxy and Prometheus; returns where they answer."""
    config = traffic_config()
    endpoints = live_endpoints()
    production = get_backend(PRODUCTION_INSTANCE, paths=paths).start()
    canary = get_backend(CANARY_INSTANCE, paths=paths).start()
    services = supervisor(paths)
    services.ensure_running()
    services.run(capture_program(config, canary.rest_url, stable_url=production.rest_url))
    proxy = NginxProxy(proxy_runtime_dir(paths), supervisor=services)
    spec = ProxySpec(host=config.host, rest_port=config.rest_port, grpc_port=config.grpc_port,
                     stable=UpstreamSpec.of(production), canary=UpstreamSpec.of(canary),
                     mirror_url=endpoints.capture_url, mirror_percent=idle_split(config).mirror_percent)
    if proxy.is_running():  # keep the split in effect: a live canary may be running
        running = proxy.spec()
        spec = spec.model_copy(update={"canary_percent": running.canary_percent,
                                       "mirror_percent": running.mirror_percent})
    proxy.start(spec)
    where = {"production_endpoint_rest": endpoints.rest_url, "production_endpoint_grpc": endpoints.grpc_target,
             "capture": endpoints.capture_url, "canary_rest": canary.rest_url}
    try:
        where["prometheus"] = _start_prometheus(paths, config, services, production.rest_url, canary.rest_url)
    except NotFound as exc:  # metrics are an aid, not a gate: say what is missing and go on
        log.warning("Prometheus not started: %s", exc)
        where["prometheus"] = f"not started ({exc})"
    return where


def capture_program(config: TrafficConfig, serving_url: str, models: Sequence[str] | None = None,
                    stable_url: str | None = None) -> Program:
    """The capture service as a supervised program (``pipeline capture-serve``)."""
    command = [sys.executable, "-m", "pipeline", "capture-serve", "--host", config.capture_host or config.host,
               "--port", str(config.capture_port), "--serving-url", serving_url, "--workers", str(CAPTURE_WORKERS)]
    if stable_url is not None:
        command += ["--stable-url", stable_url]
    for model in models or ():
        command += ["--model", model]
    return Program(name=CAPTURE, command=tuple(command), env=python_env())


def _start_prometheus(paths: Paths, config: TrafficConfig, services: Supervisor, production_rest: str,
                      canary_rest: str) -> str:
    from pipeline.live.monitoring import (
        NGINX_EXPORTER_PROGRAM,
        ScrapeTargets,
        nginx_exporter_program,
        prometheus_program,
        render_prometheus_config,
        stub_status_url,
    )

    exporter_port = config.capture_port + _NGINX_EXPORTER_PORT_OFFSET
    if services.status(NGINX_EXPORTER_PROGRAM) != RUNNING and port_in_use(config.host, exporter_port):
        # Taken by another process (on a busy machine, even a client's ephemeral port): only our Prometheus
        # scrapes the exporter, and its config is written below, so any free port serves.
        exporter_port = free_port(config.host)
    services.run(nginx_exporter_program(stub_status_url(config.host, config.rest_port), exporter_port,
                                        host=config.host))
    instances = {PRODUCTION_INSTANCE: production_rest, CANARY_INSTANCE: canary_rest}
    try:
        instances["staging"] = get_backend("staging", paths=paths).endpoint().rest_url
    except PipelineError:
        pass  # staging is not running: nothing to scrape there
    targets = ScrapeTargets(tfserving={name: url.removeprefix("http://") for name, url in instances.items()},
                            capture=f"{config.capture_host or config.host}:{config.capture_port}",
                            nginx_exporter=f"{config.host}:{exporter_port}")
    runtime = live_dir(paths) / "prometheus"
    config_path = runtime / "prometheus.yml"
    write_atomically(config_path, render_prometheus_config(targets).encode())
    services.run(prometheus_program(runtime, config_path, config.prometheus_port, host=config.host))
    return f"http://{config.host}:{config.prometheus_port}"


def stop_live_path(paths: Paths) -> None:
    """Stop the proxy, the capture service, Prometheus, the exporter and the canary instance (the servers and
    Airflow, under the same supervisord, are stopped on their own)."""
    from pipeline.live.monitoring import NGINX_EXPORTER_PROGRAM, PROMETHEUS_PROGRAM

    services = supervisor(paths)

    def stop_services() -> None:
        services.remove(CAPTURE, PROMETHEUS_PROGRAM, NGINX_EXPORTER_PROGRAM)
        services.shutdown_if_idle()

    errors: list[str] = []
    for stop in (lambda: NginxProxy(proxy_runtime_dir(paths), supervisor=services).stop(), stop_services,
                 lambda: get_backend(CANARY_INSTANCE, paths=paths).stop()):
        try:
            stop()
        except NotFound:
            continue
        except PipelineError as exc:
            errors.append(str(exc))
    if errors:
        raise PipelineError("; ".join(errors))


def serve_capture(host: str, port: int, serving_url: str, models: Sequence[str] = (),
                  stable_url: str | None = None, workers: int = 1) -> None:
    """Run the capture service in the foreground until SIGTERM or SIGINT (``pipeline capture-serve``)."""
    from pipeline.live.capture import CaptureOptions, CaptureService

    service = CaptureService(serving_url, list(models) or list_models(), host=host, port=port,
                             options=CaptureOptions(workers=workers), stable_url=stable_url).start()
    log.info("capture service on %s:%s for %s, asking %s", host, service.port, service.models, serving_url)
    with stop_on_signals() as stop:
        stop.wait()
    service.stop()
