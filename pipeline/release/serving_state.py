"""Change what a TF Serving instance serves for one model, without ever dropping a request.

TF Serving only lets a version label point at a version that is AVAILABLE (unless a flag says
otherwise), and unloads versions that leave the ``specific`` policy. So a change goes in two phases:

1. serve the union of old and new versions, old labels kept: the new versions load beside the old;
2. once they are AVAILABLE, serve exactly the new versions with the new labels.

Each phase goes through the backend's one path (:meth:`ServingBackend.apply_config`: write ``models.config``
atomically, push it to the server, wait until it serves exactly that). This is the only code that changes what
a server serves; reading the served state (:func:`served_state`) never starts or touches a server.

Before anything changes, every version to be served is checked against the content hash the registry recorded
at export (:func:`pipeline.export.content_sha256`): a version whose files changed since is refused
(:class:`VersionTampered`) and nothing changes. A version registered before hashes were recorded is served, with
one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import NotFound, PipelineError
from pipeline.export import CONTENT_HASH_KEY, content_sha256
from pipeline.release.registry import Registry
from pipeline.serving.backends.base import ServingBackend
from pipeline.wire import model_config as mc
from pipeline.wire.version_dirs import version_dir

log = logging.getLogger(__name__)

_warned_unhashed: set[tuple[str, int]] = set()  # one warning per version and process


class VersionTampered(PipelineError):
    """A version's files are not the ones exported (their content hash differs from the registry's record)."""


@dataclass(frozen=True)
class ServedState:
    """The versions one instance pins for a model and the labels naming them."""

    versions: tuple[int, ...]
    labels: dict[str, int]

    def label(self, name: str) -> int | None:
        return self.labels.get(name)


def served_state(backend: ServingBackend, model: str) -> ServedState:
    """What the instance's ``models.config`` says it serves for ``model`` (empty when absent)."""
    return _state_in(backend.read_config(), model)


def _state_in(config: mc.ModelServerConfig, model: str) -> ServedState:
    entry = next((m for m in config.model_config_list.config if m.name == model), None)
    if entry is None:
        return ServedState((), {})
    pinned, labels = mc.versions_and_labels(entry)
    return ServedState(tuple(pinned or ()), labels)


def _with_model(config: mc.ModelServerConfig, model: str, base_path: Path, versions: Sequence[int],
                labels: Mapping[str, int]) -> mc.ModelServerConfig:
    """``config`` with ``model`` pinned to ``versions`` and named by ``labels`` (added when absent)."""
    if not any(m.name == model for m in config.model_config_list.config):
        added = mc.ModelServerConfig()
        added.CopyFrom(config)
        added.model_config_list.config.add().CopyFrom(mc.single_model_config(model, base_path).model_config_list.config[0])
        config = added
    return mc.set_model_versions(config, model, versions, labels)


def _without_model(config: mc.ModelServerConfig, model: str) -> mc.ModelServerConfig:
    """``config`` with ``model`` removed (TF Serving then unloads all its versions)."""
    kept = mc.ModelServerConfig()
    kept.model_config_list.config.extend(m for m in config.model_config_list.config if m.name != model)
    return kept


def change_served_state(backend: ServingBackend, model: str, base_path: Path, versions: Sequence[int],
                        labels: Mapping[str, int], deadline_s: float, *, registry: Registry) -> ServedState:
    """Make ``backend`` serve exactly ``versions`` of ``model`` with ``labels``, availability preserved.

    No versions (and no labels) removes the model from the instance. Every version is first checked against
    the content hash ``registry`` recorded for it (:func:`verify_content`). The instance is started first if it
    is not running (the one place that may start a server). When the change fails (a version does not load, the
    server refuses the config, a deadline passes), the instance is put back on the config it served before and
    the error is raised.

    Raises:
        VersionTampered: a version's files changed since its export; nothing was changed.
    """
    if labels and not versions:
        raise ValueError(f"labels {dict(labels)} need versions to point at")
    verify_content(registry, model, base_path, versions)
    backend.start(timeout_s=deadline_s)
    previous = backend.read_config()
    try:
        _change(backend, previous, model, base_path, versions, labels, deadline_s)
    except PipelineError:
        _restore(backend, previous, deadline_s)
        raise
    return ServedState(tuple(sorted(versions)), dict(labels))


def _change(backend: ServingBackend, current: mc.ModelServerConfig, model: str, base_path: Path,
            versions: Sequence[int], labels: Mapping[str, int], deadline_s: float) -> None:
    before = _state_in(current, model)
    if not versions:
        log.info("%s: removing the model from %s (was %s)", model, backend.name, before.versions)
        backend.apply_config(_without_model(current, model), deadline_s)
        return
    union = sorted(set(before.versions) | set(versions))
    if new := sorted(set(versions) - set(before.versions)):
        kept_labels = {k: v for k, v in before.labels.items() if v in union}
        log.info("%s: loading %s beside %s on %s", model, new, before.versions, backend.name)
        current = _with_model(current, model, base_path, union, kept_labels)
        backend.apply_config(current, deadline_s)
    backend.apply_config(_with_model(current, model, base_path, sorted(versions), labels), deadline_s)


def _restore(backend: ServingBackend, previous: mc.ModelServerConfig, deadline_s: float) -> None:
    """Serve ``previous`` again after a failed change, so that a version that failed to load is not left pinned
    (it would fail every later change of the instance, for every model). Best effort: the first error wins."""
    try:
        backend.apply_config(previous, deadline_s)
    except PipelineError:
        log.exception("%s: could not restore the config served before the failed change", backend.name)


def verify_content(registry: Registry, model: str, base_path: Path, versions: Sequence[int]) -> None:
    """Check that each version's directory still has the content hash recorded when it was exported.

    A version without a recorded hash (registered before hashes were, or not registered) is accepted with one
    warning per process.

    Raises:
        VersionTampered: a version's files differ from the exported ones, or its directory is gone.
    """
    for version in versions:
        try:
            recorded = registry.get_version(model, version).extra.get(CONTENT_HASH_KEY)
        except NotFound:
            recorded = None
        if not recorded:
            if (model, version) not in _warned_unhashed:
                _warned_unhashed.add((model, version))
                log.warning("%s version %s has no content hash in the registry (exported before hashes were "
                            "recorded): served unchecked", model, version)
            continue
        path = version_dir(base_path, version)
        try:
            actual = content_sha256(path)
        except NotFound:
            raise VersionTampered(f"{model} version {version}: its directory {path} is gone; refusing to serve it") \
                from None
        if actual != recorded:
            raise VersionTampered(
                f"{model} version {version} was modified after its export: the files under {path} have content "
                f"sha256 {actual[:16]}..., the registry recorded {str(recorded)[:16]}... at export. Refusing to "
                "serve it; nothing was changed. Restore the exported files, or export the model again")
