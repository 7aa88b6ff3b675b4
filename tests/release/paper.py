"""Paper servers: serving instances whose models.config is the whole truth (no process, no TensorFlow).

A change through them runs every line of the release code (registry, the two-phase change, models.config) and
"serves" at once, so tests of what the release records (asset events, notes) take a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ModelConfig
from pipeline.live.endpoints import CANARY_INSTANCE, TrafficSplit
from pipeline.release.context import PRODUCTION, STAGING, Release
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.settings import Paths
from pipeline.wire import version_dirs as vd


class PaperBackend(ServingBackend):
    """A serving instance whose models.config is all there is: a change is written and "served" at once."""

    def __init__(self, name: str, config_path: Path) -> None:
        self.name = name
        self._config_path = config_path

    @property
    def config_path(self) -> Path:
        return self._config_path

    def start(self, timeout_s: float = 60.0) -> Endpoint:
        return self.endpoint()

    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", 1, 1)

    def stop(self) -> None:
        pass

    def is_running(self) -> bool:
        return True

    def push_config(self, config, timeout_s: float) -> None:
        pass

    def wait_until_served(self, config, timeout_s: float, removed=None) -> None:
        pass


@dataclass
class PaperRouter:
    """The live split, remembered."""

    splits: list[TrafficSplit] = field(default_factory=list)

    def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
        self.splits.append(split)


def paper_release(config: ModelConfig, paths: Paths, accuracy: Mapping[int, float]) -> Release:
    """A release of ``config``'s model on paper servers, versions ``accuracy``'s keys on disk (a stand-in
    saved_model.pb each) and registered ``exported`` with that accuracy."""
    release = Release(config, paths=paths)
    for instance in (STAGING, PRODUCTION, CANARY_INSTANCE):
        release._backends[instance] = PaperBackend(instance, paths.serving_dir / instance / "models.config")
    for version, value in accuracy.items():
        directory = release.version_dir(version)
        directory.mkdir(parents=True)
        (directory / vd.SAVED_MODEL_FILE).write_bytes(b"paper")
        release.registry.register_version(config.name, version, {"airflow_run_id": f"train-{version}",
                                                                  "metrics": {"accuracy": value}})
    return release
