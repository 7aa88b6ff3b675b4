"""The one interface every TF Serving backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path


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

    The instance serves the models listed in its ``models.config``. Promotion and rollback rewrite that
    file (atomically) and then call :meth:`apply_config` so the change takes effect now, not at the next
    poll: the local and docker backends reload through gRPC ``HandleReloadConfigRequest``; the
    kubernetes one updates the ConfigMap and lets the pods' config polling (or a rollout) pick it up.
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
    def apply_config(self, timeout_s: float = 60.0) -> None:
        """Make the instance serve what ``config_path`` now says, and return once it does."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the instance and everything it started; idempotent."""

    @abc.abstractmethod
    def is_running(self) -> bool:
        """Whether the instance answers now."""
