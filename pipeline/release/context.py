"""What every release step needs: the model's config, the paths, the registry, and the serving instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import ModelConfig
from pipeline.data.dataset import Snapshot
from pipeline.models import pixel_scale_of, to_model_inputs
from pipeline.release.registry import Registry
from pipeline.serving.backends import ServingBackend, get_backend
from pipeline.serving.client import ServingClient
from pipeline.settings import Paths, get_paths
from pipeline.wire.version_dirs import read_metadata, version_dir

STAGING = "staging"
PRODUCTION = "production"
_DEFAULT_CLIENT_TIMEOUT_S = 10.0


@dataclass
class Release:
    """One model's release context.

    Backends are built on first use but never started here: only a change of what a server serves
    (:func:`pipeline.release.serving_state.change_served_state`) starts one. A client needs its server running.
    """

    config: ModelConfig
    paths: Paths = field(default_factory=get_paths)
    registry: Registry = None  # type: ignore[assignment]  # set in __post_init__ from the paths
    _backends: dict[str, ServingBackend] = field(default_factory=dict, repr=False)
    _clients: dict[str, ServingClient] = field(default_factory=dict, repr=False)
    _samples: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.registry is None:  # guarded: lost while released versions are on disk, it is refused, not recreated
            self.registry = Registry(self.paths.registry_url, models_dir=self.paths.models_dir)

    @property
    def model(self) -> str:
        return self.config.name

    @property
    def base_path(self) -> Path:
        return self.paths.model_base_path(self.model)

    def version_dir(self, version: int) -> Path:
        return version_dir(self.base_path, version)

    def verdict_path(self, version: int, gate: str) -> Path:
        """Where a gate's verdict on ``version`` is written: ``serving/verdicts/<model>/<N>/<gate>.json``."""
        return self.paths.serving_dir / "verdicts" / self.model / str(version) / f"{gate}.json"

    def backend(self, instance: str) -> ServingBackend:
        """The backend of ``staging`` or ``production`` from the serving profile (not started)."""
        if instance not in self._backends:
            self._backends[instance] = get_backend(instance, paths=self.paths)
        return self._backends[instance]

    def client(self, instance: str) -> ServingClient:
        """A client for ``staging`` or ``production``.

        Raises:
            NotFound: the instance is not running.
        """
        if instance not in self._clients:
            endpoint = self.backend(instance).endpoint()
            self._clients[instance] = ServingClient.for_endpoint(endpoint, timeout_s=_DEFAULT_CLIENT_TIMEOUT_S)
        return self._clients[instance]

    def held_out_sample(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``serving.sample_size`` test examples of the snapshot ``version`` was trained on, as inputs.

        Read once per context: every probe of a gate judges the version on the same examples.
        """
        if version not in self._samples:
            self._samples[version] = self._read_held_out_sample(version)
        return self._samples[version]

    def _read_held_out_sample(self, version: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample in the input convention ``version``'s metadata records: the one it was trained and judged on."""
        metadata = read_metadata(self.version_dir(version))
        test = Snapshot.open(self.paths.data_dir / self.model / metadata["data_snapshot_sha256"]).split("test")
        sample = test.subset(np.arange(min(self.config.serving.sample_size, len(test))))
        return to_model_inputs(sample, pixel_scale_of(metadata)), sample.y

    def close(self) -> None:
        """Close clients (servers keep running: they outlive a task)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
