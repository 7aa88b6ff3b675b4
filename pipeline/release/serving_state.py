"""Change what a TF Serving instance serves for one model, without ever dropping a request.

TF Serving only lets a version label point at a version that is AVAILABLE (unless a flag says
otherwise), and unloads versions that leave the ``specific`` policy. So a change goes in two phases:

1. serve the union of old and new versions, old labels kept: the new versions load beside the old;
2. once they are AVAILABLE, serve exactly the new versions with the new labels.

Each phase rewrites the instance's ``models.config`` atomically (so a restart or a polling server
sees the same truth) and applies it through the backend at once (gRPC reload, or a ConfigMap update).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from pipeline.serving import model_config as mc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedState:
    """The versions one instance pins for a model and the labels naming them."""

    versions: tuple[int, ...]
    labels: dict[str, int]

    def label(self, name: str) -> int | None:
        return self.labels.get(name)


def read_served_state(config_path: Path, model: str) -> ServedState:
    """What ``models.config`` says an instance serves for ``model`` (empty when absent)."""
    if not config_path.is_file():
        return ServedState((), {})
    entry = next((m for m in mc.read_config(config_path).model_config_list.config if m.name == model), None)
    if entry is None:
        return ServedState((), {})
    pinned, labels = mc.versions_and_labels(entry)
    return ServedState(tuple(pinned or ()), labels)


def _desired_config(config_path: Path, model: str, base_path: Path, versions: list[int], labels: dict[str, int]):
    current = mc.read_config(config_path) if config_path.is_file() else ModelServerConfig()
    if not any(m.name == model for m in current.model_config_list.config):
        current.model_config_list.config.add().CopyFrom(
            mc.single_model_config(model, base_path).model_config_list.config[0])
    return mc.set_model_versions(current, model, versions, labels)


def without_model(config_path: Path, model: str) -> ModelServerConfig:
    """The instance's config with ``model`` removed (TF Serving then unloads all its versions)."""
    config = mc.read_config(config_path)
    kept = [m for m in config.model_config_list.config if m.name != model]
    del config.model_config_list.config[:]
    config.model_config_list.config.extend(kept)
    return config


def _apply(backend, client, model: str, base_path: Path, versions: list[int], labels: dict[str, int],
           deadline_s: float, wait_for: list[int]) -> None:
    config = _desired_config(backend.config_path, model, base_path, versions, labels)
    mc.write_config(backend.config_path, config)
    backend.apply_config(timeout_s=deadline_s)
    for version in wait_for:
        client.wait_until_available(model, version, deadline_s)


def change_served_state(backend, client, model: str, base_path: Path, versions: list[int],
                        labels: dict[str, int], deadline_s: float) -> ServedState:
    """Make ``backend`` serve exactly ``versions`` of ``model`` with ``labels``, availability preserved."""
    before = read_served_state(backend.config_path, model)
    union = sorted(set(before.versions) | set(versions))
    new = sorted(set(versions) - set(before.versions))
    if new:
        kept_labels = {k: v for k, v in before.labels.items() if v in union}
        log.info("%s: loading %s beside %s", model, new, before.versions)
        _apply(backend, client, model, base_path, union, kept_labels, deadline_s, wait_for=new)
    _apply(backend, client, model, base_path, sorted(versions), labels, deadline_s, wait_for=sorted(versions))
    return ServedState(tuple(sorted(versions)), dict(labels))
