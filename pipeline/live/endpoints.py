"""Where live traffic enters, and how its split between stable and canary is changed.

The serving profile's ``traffic:`` section says where the production endpoint (the proxy), the capture service
and Prometheus listen::

    traffic:
      router: nginx            # nginx (embedded, compose) | gateway_api (Kubernetes HTTPRoute/GRPCRoute weights)
      host: 127.0.0.1
      rest_port: 8501          # the production endpoint: TF Serving's ports, so the seeds' clients work unchanged
      grpc_port: 8500
      capture_port: 8701       # the capture service (mirror + feedback)
      prometheus_port: 9490
      monitor_mirror_percent: 20  # mirrored to capture while no canary is live: production monitoring's window

Light: pydantic and the profile only; no servers are touched here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError, NotFound
from pipeline.serving.profiles import describe_errors, load_profile

PRODUCTION_INSTANCE = "production"
CANARY_INSTANCE = "canary"


class TrafficConfig(BaseModel):
    """The profile's ``traffic:`` section (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    router: Literal["nginx", "nginx_watched", "gateway_api"] = "nginx"
    host: str = "127.0.0.1"
    rest_port: int = Field(8501, ge=1, le=65535)
    grpc_port: int = Field(8500, ge=1, le=65535)
    capture_host: str | None = None  # where the capture service listens (default: host)
    capture_port: int = Field(8701, ge=1, le=65535)
    prometheus_host: str | None = None  # where Prometheus listens (default: host)
    prometheus_port: int = Field(9490, ge=1, le=65535)
    # The share of live requests mirrored to the capture service while no live canary runs, so production
    # monitoring (drift, live accuracy) has a window to judge; a canary phase sets its own share.
    monitor_mirror_percent: float = Field(0.0, ge=0, le=100)
    # nginx_watched only: the runtime directory shared with the proxy container, at the same path in both.
    proxy_dir: str | None = None
    # gateway_api only: the routes whose backend weights and mirror filter the pipeline patches.
    namespace: str = "mlops"
    http_route: str = "tfserving-production"
    grpc_route: str = "tfserving-production-grpc"


@dataclass(frozen=True)
class LiveEndpoints:
    """Where clients, the capture service and Prometheus answer."""

    rest_url: str  # the production endpoint's REST API, e.g. http://127.0.0.1:8501
    grpc_target: str  # its gRPC API, e.g. 127.0.0.1:8500
    capture_url: str  # the capture service: mirror target and POST /feedback/<model>
    prometheus_url: str


@dataclass(frozen=True)
class TrafficSplit:
    """How live traffic is split: percent of requests served by the canary, percent mirrored to capture."""

    canary_percent: float = 0.0
    mirror_percent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("canary_percent", "mirror_percent"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise ValueError(f"{name} must be within 0-100, got {value}")

    def describe(self) -> str:
        return f"canary {self.canary_percent:g} %, mirror {self.mirror_percent:g} %"


class TrafficRouter(Protocol):
    """Changes the live split; the one way the pipeline moves user traffic between stable and canary."""

    def current_split(self) -> TrafficSplit:
        """The split in effect now (0/0 when no canary is routed)."""
        ...

    def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
        """Put ``split`` in effect and return once new requests follow it; fails no client request."""
        ...


def traffic_config(profile: str | None = None) -> TrafficConfig:
    """The serving profile's ``traffic:`` section.

    Raises:
        NotFound: the profile has no ``traffic:`` section (no live traffic path is configured).
        ConfigError: the section is invalid.
    """
    loaded = load_profile(profile)
    if loaded.traffic is None:
        raise NotFound(f"serving profile {loaded.name!r} has no traffic: section (no production endpoint, "
                       "proxy or capture service is configured)")
    try:
        return TrafficConfig.model_validate(loaded.traffic)
    except ValidationError as exc:
        raise ConfigError(f"serving profile {loaded.name!r}: {describe_errors(exc, 'traffic')}") from None


def idle_split(config: TrafficConfig | None = None) -> TrafficSplit:
    """The split while no live canary runs: nothing to the canary, ``monitor_mirror_percent`` to capture (nothing
    mirrored where the profile has no ``traffic:`` section)."""
    if config is None:
        try:
            config = traffic_config()
        except NotFound:
            return TrafficSplit(0.0, 0.0)
    return TrafficSplit(0.0, config.monitor_mirror_percent)


def live_endpoints(profile: str | None = None) -> LiveEndpoints:
    """The production endpoint, capture service and Prometheus of the profile (configured, maybe not running)."""
    config = traffic_config(profile)
    capture_host = config.capture_host or config.host
    return LiveEndpoints(
        rest_url=f"http://{config.host}:{config.rest_port}",
        grpc_target=f"{config.host}:{config.grpc_port}",
        capture_url=f"http://{capture_host}:{config.capture_port}",
        prometheus_url=f"http://{config.prometheus_host or config.host}:{config.prometheus_port}",
    )
