"""What a server's admin requests act on: model status, config reloads and the metrics page.

One process (TF Serving's way) answers them from its own state: :class:`LocalAdmin`. With
``--serving_processes`` above 1, the processes that share the ports answer them for all of them
(:mod:`pipeline.embedded_server.processes`): a reload reaches every process, and the metrics page sums them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pipeline.embedded_server import api

if TYPE_CHECKING:
    from pipeline.embedded_server.manager import ModelManager
    from pipeline.embedded_server.metrics import ServerMetrics


class Admin(Protocol):
    def model_status(self, request: Any) -> Any:
        """A ``GetModelStatusResponse`` for a ``GetModelStatusRequest``."""

    def reload_config(self, config: Any) -> None:
        """Serve ``config`` (a ``ModelServerConfig``) from now on; its versions are loaded when this returns."""

    def metrics_page(self) -> bytes:
        """The Prometheus page (only called when monitoring is on)."""


class LocalAdmin:
    """This process's own state: what a single TF Serving process answers."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics | None = None):
        self.manager = manager
        self.metrics = metrics

    def model_status(self, request: Any) -> Any:
        return api.get_model_status(self.manager, request)

    def reload_config(self, config: Any) -> None:
        self.manager.apply_config(config)

    def metrics_page(self) -> bytes:
        return self.metrics.render() if self.metrics is not None else b""
