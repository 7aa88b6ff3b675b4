"""The one way the pipeline moves live traffic: a :class:`~pipeline.live.endpoints.TrafficRouter` per profile.

On the embedded and compose profiles the router is the nginx proxy (:mod:`pipeline.live.proxy`); on Kubernetes it
patches the Gateway API routes' weights (:mod:`pipeline.live.gateway_api`). Both keep every client request
answered through a change.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import NotFound
from pipeline.live.endpoints import TrafficConfig, TrafficRouter, TrafficSplit, traffic_config
from pipeline.live.proxy import NginxProxy
from pipeline.settings import Paths, get_paths


def proxy_runtime_dir(paths: Paths) -> Path:
    """Where the embedded stack's nginx keeps its config, logs and state: ``$PIPELINE_HOME/live/proxy``."""
    return paths.home / "live" / "proxy"


class NginxRouter:
    """Changes the running nginx proxy's split (a reload; in-flight requests finish on the old workers)."""

    def __init__(self, proxy: NginxProxy):
        self.proxy = proxy

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
    """
    config = config or traffic_config()
    if config.router == "gateway_api":
        from pipeline.live.gateway_api import GatewayApiRouter

        return GatewayApiRouter(config)
    return NginxRouter(NginxProxy(proxy_runtime_dir(paths or get_paths())))
