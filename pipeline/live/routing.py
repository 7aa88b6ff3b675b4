"""The one way the pipeline moves live traffic: a :class:`~pipeline.live.endpoints.TrafficRouter` per profile.

On the embedded profile the router is the nginx proxy this process runs (:mod:`pipeline.live.proxy`); on compose
it rewrites the config of the nginx in the ``proxy`` container, which reloads on the change
(:mod:`pipeline.live.watched_proxy`); on Kubernetes it patches the Gateway API routes' weights
(:mod:`pipeline.live.gateway_api`). All keep every client request answered through a change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from pipeline.errors import ConfigError, NotFound
from pipeline.live.endpoints import CANARY_INSTANCE, TrafficConfig, TrafficRouter, TrafficSplit, traffic_config
from pipeline.live.proxy import NginxProxy, UpstreamSpec
from pipeline.live.watched_proxy import WatchedNginxRouter
from pipeline.serving.profiles import load_profile
from pipeline.settings import Paths, get_paths


@runtime_checkable
class HasAccessLog(Protocol):
    """A router whose proxy writes the JSON access log the live analysis reads (nginx, embedded or compose)."""

    @property
    def access_log_path(self) -> Path: ...


def proxy_runtime_dir(paths: Paths) -> Path:
    """Where the embedded stack's nginx keeps its config, logs and state: ``$PIPELINE_HOME/live/proxy``."""
    return paths.home / "live" / "proxy"


class NginxRouter:
    """Changes the running nginx proxy's split (a reload; in-flight requests finish on the old workers)."""

    def __init__(self, proxy: NginxProxy):
        self.proxy = proxy

    @property
    def access_log_path(self) -> Path:
        return self.proxy.access_log_path

    def current_split(self) -> TrafficSplit:
        spec = self.proxy.spec()
        return TrafficSplit(spec.canary_percent, spec.mirror_percent)

    def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
        spec = self.proxy.spec()
        if (spec.canary_percent, spec.mirror_percent) == (split.canary_percent, split.mirror_percent):
            return
        if split.canary_percent > 0 and spec.canary is None:
            raise NotFound("the proxy has no canary upstream; restart it with `pipeline up`")
        self.proxy.apply(spec.model_copy(update={"canary_percent": split.canary_percent,
                                                 "mirror_percent": split.mirror_percent}), timeout_s)


def router_for(paths: Paths | None = None, config: TrafficConfig | None = None) -> TrafficRouter:
    """The profile's router.

    Raises:
        NotFound: the profile has no ``traffic:`` section.
        ConfigError: ``nginx_watched`` without ``proxy_dir``.
    """
    config = config or traffic_config()
    if config.router == "gateway_api":
        from pipeline.live.gateway_api import GatewayApiRouter

        return GatewayApiRouter(config)
    if config.router == "nginx_watched":
        return watched_router(config)
    return NginxRouter(NginxProxy(proxy_runtime_dir(paths or get_paths())))


def watched_router(config: TrafficConfig) -> WatchedNginxRouter:
    """The compose router: the proxy's health on its REST port, the profile's canary and capture as targets.

    Raises:
        ConfigError: the section has no ``proxy_dir``.
    """
    if not config.proxy_dir:
        raise ConfigError("traffic: router nginx_watched needs proxy_dir, the runtime directory shared with the "
                          "proxy container (the same path in both)")
    capture = f"http://{config.capture_host or config.host}:{config.capture_port}"
    return WatchedNginxRouter(Path(config.proxy_dir), f"http://{config.host}:{config.rest_port}/_proxy/health",
                              canary=_profile_canary(), mirror_url=capture)


def _profile_canary() -> UpstreamSpec | None:
    """The profile's canary instance as an upstream, None when it has none with a host and ports."""
    try:
        spec = load_profile().instance(CANARY_INSTANCE).spec()
    except NotFound:
        return None
    if not all(spec.get(key) for key in ("host", "rest_port", "grpc_port")):
        return None
    return UpstreamSpec(rest=f"{spec['host']}:{spec['rest_port']}", grpc=f"{spec['host']}:{spec['grpc_port']}")
