"""What every release step needs: the model's config, the paths, the registry, and the serving instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ModelConfig
from pipeline.release.registry import Registry
from pipeline.settings import Paths, get_paths

if TYPE_CHECKING:
    from pipeline.serving.backends.base import ServingBackend
    from pipeline.serving.client import ServingClient

STAGING = "staging"
PRODUCTION = "production"
_DEFAULT_CLIENT_TIMEOUT_S = 10.0


@dataclass
class Release:
    """One model's release context. Backends are started (or attached to) on first use."""

    config: ModelConfig
    paths: Paths = field(default_factory=get_paths)
    registry: Registry | None = None
    _backends: dict[str, "ServingBackend"] = field(default_factory=dict, repr=False)
    _clients: dict[str, "ServingClient"] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.registry is None:
            self.registry = Registry(self.paths.registry_url)

    @property
    def model(self) -> str:
        return self.config.name

    @property
    def base_path(self) -> Path:
        return self.paths.model_base_path(self.model)

    def version_dir(self, version: int) -> Path:
        return self.base_path / str(version)

    def backend(self, instance: str) -> "ServingBackend":
        """The started backend of ``staging`` or ``production`` from the serving profile."""
        if instance not in self._backends:
            from pipeline.serving.backends import get_backend

            backend = get_backend(instance, paths=self.paths)
            backend.start(timeout_s=self.config.serving.load_deadline_s)
            self._backends[instance] = backend
        return self._backends[instance]

    def client(self, instance: str) -> "ServingClient":
        """A client for ``staging`` or ``production``."""
        if instance not in self._clients:
            from pipeline.serving.client import ServingClient

            endpoint = self.backend(instance).endpoint()
            self._clients[instance] = ServingClient.for_endpoint(endpoint, timeout_s=_DEFAULT_CLIENT_TIMEOUT_S)
        return self._clients[instance]

    def close(self) -> None:
        """Close clients (servers keep running: they outlive a task)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
