"""The one interface every TF Serving backend implements, and the one way any of them changes what it serves."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.serving.served import config_mismatches, rest_status_getter, wait_until_served

if TYPE_CHECKING:  # the protos load on first use: listing profiles and backends stays light
    from pipeline.wire.model_config import ModelServerConfig

_EMPTY_CONFIG = "model_config_list {\n}\n"


@dataclass(frozen=True)
class Endpoint:
    """Where a running TF Serving answers."""

    host: str
    rest_port: int
    grpc_port: int

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class ServingBackend(abc.ABC):
    """Starts, reaches and stops one TF Serving instance (staging or production).

    The instance serves the models listed in its ``models.config``. :meth:`apply_config` is the only way to
    change that: it writes the file atomically (so a restart or a polling server sees the same truth), pushes
    the config to the running server (gRPC ``HandleReloadConfigRequest`` by default; a ConfigMap update on
    Kubernetes) and returns once the server serves exactly that (:mod:`pipeline.serving.served`). Reading what
    an instance serves (:meth:`read_config`) never starts or touches a server.
    """

    name: str  # "staging" or "production"

    @property
    @abc.abstractmethod
    def config_path(self) -> Path:
        """The models.config this instance reads (on the local filesystem)."""

    @abc.abstractmethod
    def start(self, timeout_s: float = 60.0) -> Endpoint:
        """Start (or attach to) the instance and wait until it answers; idempotent."""

    @abc.abstractmethod
    def endpoint(self) -> Endpoint:
        """Where the instance answers; raises if it is not running."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the instance and everything it started; idempotent."""

    @abc.abstractmethod
    def is_running(self) -> bool:
        """Whether the instance answers now."""

    def read_config(self) -> ModelServerConfig:
        """What ``models.config`` says the instance serves (an empty config before the first write)."""
        from pipeline.wire.model_config import ModelServerConfig, parse_config

        try:
            return parse_config(self.config_path.read_text())
        except FileNotFoundError:
            return ModelServerConfig()

    def ensure_config_file(self) -> None:
        """Write an empty ``models.config`` if there is none (TF Serving needs the file to start)."""
        from pipeline.wire.model_config import parse_config, write_config

        if not self.config_path.exists():
            write_config(self.config_path, parse_config(_EMPTY_CONFIG))

    def apply_config(self, config: ModelServerConfig, timeout_s: float = 60.0) -> None:
        """Write ``config``, push it to the running instance, and return once the instance serves exactly it.

        Raises:
            ServingError: the server refused the config, or a version in it failed to load.
            DeadlineExceeded: not served within ``timeout_s`` (the message says what still differed).
        """
        from pipeline.wire.model_config import write_config

        started = time.monotonic()
        dropped = {m.name for m in self.read_config().model_config_list.config} - {
            m.name for m in config.model_config_list.config}
        write_config(self.config_path, config)
        self.push_config(config, timeout_s)
        remaining = max(timeout_s - (time.monotonic() - started), 0.1) + self.propagation_allowance_s()
        self.wait_until_served(config, remaining, removed=dropped)

    def wait_until_served(self, config: ModelServerConfig, timeout_s: float, removed: set[str] | None = None) -> None:
        """Poll the instance until it serves exactly ``config`` (and none of the ``removed`` models)."""
        wait_until_served(lambda: self.mismatches(config, removed or set()), timeout_s,
                          f"TF Serving {self.name!r}", hint=self.served_hint())

    def push_config(self, config: ModelServerConfig, timeout_s: float) -> None:
        """Hand ``config`` to the running server now: TF Serving's gRPC ``HandleReloadConfigRequest``."""
        from pipeline.serving.client import ServingClient

        with ServingClient.for_endpoint(self.endpoint(), timeout_s=timeout_s) as client:
            client.reload_config(config, deadline_s=timeout_s)

    def mismatches(self, config: ModelServerConfig, removed: set[str]) -> list[str]:
        """What the instance still serves differently from ``config`` (one server, through its REST API)."""
        return config_mismatches(rest_status_getter(self.endpoint().rest_url), config, removed)

    def served_hint(self) -> str:
        """What to check when the instance does not serve a config in time."""
        return "Check the server's log for load errors."

    def propagation_allowance_s(self) -> float:
        """Extra time a pushed config may take to reach the server (a mounted ConfigMap: the kubelet's sync)."""
        return 0.0
