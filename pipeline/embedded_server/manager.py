"""Which versions of which models are loaded, as TF Serving's ServerCore + AspiredVersionsManager decide it.

Lifecycle of one version (``ModelVersionStatus.State``)::

    START ──▶ LOADING ──▶ AVAILABLE ──▶ UNLOADING ──▶ END
                 └── load or warmup fails ──────────▶ END (status carries the error)

* Versions are the numeric subdirectories of a model's base path; anything else (``.tmp-export-*``) is ignored.
* The version policy picks the aspired versions among those on disk: ``latest { num_versions }`` (default 1),
  ``all {}``, ``specific { versions }``.
* Availability preserving: aspired versions load first; versions no longer aspired are unloaded only once an
  aspired version is AVAILABLE (or nothing is aspired any more). A failed load leaves the old version serving.
* A failed load is retried ``max_num_load_retries`` times, ``load_retry_interval_s`` apart (TF Serving's
  ``--max_num_load_retries``/``--load_retry_interval_micros``), at the next file-system poll after the interval:
  a version seen half-copied loads once the copy completes. In between it reports END with the last error, so a
  reload answers the failure at once instead of after all the retries.
* Labels map to versions. Unless ``allow_version_labels_for_unavailable_models``, a config whose label points at a
  version that is not AVAILABLE *now* is refused as a whole with TF Serving's FAILED_PRECONDITION.

Requests never take a lock: they read ``_routes``, an immutable snapshot replaced after every state change, and
keep the ``Servable`` they got alive until they finish, so an unload never breaks a request in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.embedded_server.servable import WARMUP_FILE, Servable
from pipeline.errors import ConfigError
from pipeline.wire.model_config import check_base_path, check_model_name
from pipeline.wire.status import ServingError, failed_precondition, from_exception, invalid_argument, not_found
from pipeline.wire.version_dirs import scan_versions

if TYPE_CHECKING:
    from pipeline.embedded_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionState:
    """What GetModelStatus reports for one version."""

    version: int
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = field(default=None, repr=False)
    retry_allowed: bool = False  # a failed version is retried only after it stopped being aspired once...
    retries_left: int = 0  # ... or while load retries are left, each once retry_at (time.monotonic()) has passed
    retry_at: float = 0.0


@dataclass(frozen=True)
class _Route:
    """Immutable routing table of one model, read by requests without locks."""

    available: dict[int, Servable]
    labels: dict[str, int]

    @property
    def latest(self) -> Servable | None:
        return self.available[max(self.available)] if self.available else None


def aspired_versions(model_config: Any, on_disk: list[int]) -> set[int]:
    """The versions the model's version policy wants, among those on disk."""
    policy = model_config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(on_disk)
    if kind == "specific":
        return set(policy.specific.versions) & set(on_disk)
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions > 0 else 1
    return set(on_disk[-count:])


def check_server_config(config: Any) -> None:
    """Refuse what TF Serving refuses, plus names and paths that try to escape.

    Raises:
        ServingError: INVALID_ARGUMENT.
    """
    if config.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("ModelServerConfig with custom_model_config is not supported")
    seen = set()
    for model in config.model_config_list.config:
        try:
            check_model_name(model.name)
            check_base_path(model.base_path, require_absolute=False)
        except ConfigError as exc:
            raise invalid_argument(str(exc)) from None
        if model.name in seen:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        if model.model_platform not in ("", "tensorflow"):
            raise invalid_argument(f"Model {model.name} has platform {model.model_platform}, only tensorflow "
                                   "is supported")
        seen.add(model.name)


class ModelManager:
    """Loads, serves and unloads model versions following a ``ModelServerConfig`` and the file system."""

    def __init__(self, *, allow_version_labels_for_unavailable_models: bool = False,
                 loader: Callable[[str, int, Path], Servable] = Servable.load,
                 metrics: ServerMetrics | None = None, max_num_load_retries: int = 0,
                 load_retry_interval_s: float = 60.0):
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._loader = loader
        self._max_load_retries = max_num_load_retries
        self._load_retry_interval_s = load_retry_interval_s
        self.metrics = metrics  # where load attempts and warmups are recorded; None records nothing
        self._change_lock = threading.RLock()  # one config change or poll at a time; loads run under it
        self._state_lock = threading.Lock()  # guards _versions for status readers
        self._models: dict[str, Any] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._versions: dict[str, dict[int, VersionState]] = {}
        self._routes: dict[str, _Route] = {}
        self._config: Any = None

    # ------------------------------------------------------------ requests

    def get_servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a ModelSpec names: a version, a label, or the latest AVAILABLE version.

        Raises:
            ServingError: NOT_FOUND ``Servable not found for request: ...``; INVALID_ARGUMENT for an unknown label.
        """
        route = self._routes.get(name)
        if label:
            if route is None or label not in route.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = route.labels[label]
        if version is None:
            servable = route.latest if route else None
            if servable is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servable
        servable = route.available.get(version) if route else None
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionState]:
        """Copies of the version states of ``name`` (highest version first), as GetModelStatus reports them.

        Raises:
            ServingError: NOT_FOUND with TF Serving's texts; INVALID_ARGUMENT for an unknown label.
        """
        if label:
            labels = self._labels.get(name, {})
            if label not in labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = labels[label]
        with self._state_lock:
            versions = {v: replace(s, servable=None) for v, s in self._versions.get(name, {}).items()}
        if version is not None:
            if version not in versions:
                raise not_found(f"Could not find version {version} of model {name}")
            return [versions[version]]
        if not versions:
            raise not_found(f"Could not find any versions of model {name}")
        return [versions[v] for v in sorted(versions, reverse=True)]

    @property
    def config(self) -> Any:
        """The ModelServerConfig in effect (None before the first one)."""
        return self._config

    # ------------------------------------------------------------ changes

    def apply_config(self, config: Any) -> None:
        """Serve exactly what ``config`` lists; return once its aspired versions are loaded (or failed).

        Raises:
            ServingError: the config is refused (nothing changed), or a version failed to load (the config is in
                effect; the failed version is END with its error and older versions keep serving).
        """
        check_server_config(config)
        with self._change_lock:
            models = {m.name: m for m in config.model_config_list.config}
            labels = {name: dict(m.version_labels) for name, m in models.items()}
            if not self._allow_unavailable_labels:
                self._check_labels_available(labels)
            for removed in set(self._models) - set(models):
                self._unload_all(removed)
            self._models, self._labels, self._config = models, labels, config
            self._publish_routes()
            errors = [e for name in models for e in self._reconcile(name)]
        if errors:
            raise errors[0]

    def poll_file_system(self) -> None:
        """Load new versions and unload retired ones for every model, from what is on disk now."""
        with self._change_lock:
            for name in list(self._models):
                for error in self._reconcile(name):
                    log.error("%s", error.message)

    def close(self) -> None:
        """Unload everything."""
        with self._change_lock:
            for name in list(self._models):
                self._unload_all(name)
            self._models, self._labels = {}, {}
            self._publish_routes()

    def _check_labels_available(self, labels: dict[str, dict[str, int]]) -> None:
        for name, model_labels in labels.items():
            available = self._routes.get(name, _Route({}, {})).available
            for _label, version in sorted(model_labels.items()):
                if version not in available:
                    raise failed_precondition(f"Request to assign label to version {version} of model {name}, "
                                              "which is not currently available for inference")

    def _reconcile(self, name: str) -> list[ServingError]:
        """Load the aspired versions of one model, then unload the others; the load errors."""
        model = self._models[name]
        on_disk = scan_versions(model.base_path)
        if on_disk is None:
            log.warning("Could not find base path %s for servable %s; keeping what is loaded", model.base_path, name)
            return []
        aspired = aspired_versions(model, on_disk)
        errors = []
        for version in sorted(aspired, reverse=True):
            error = self._maybe_load(name, version, Path(model.base_path) / str(version))
            if error is not None:
                errors.append(error)
        self._retire(name, aspired)
        return errors

    def _maybe_load(self, name: str, version: int, path: Path) -> ServingError | None:
        entry = self._versions.get(name, {}).get(version)
        retrying = False
        if entry is not None:
            if entry.state in (LOADING, AVAILABLE):
                return None
            if entry.error_code != "OK" and not entry.retry_allowed:
                if entry.retries_left <= 0 or time.monotonic() < entry.retry_at:
                    return None
                retrying = True
        retries_left = entry.retries_left - 1 if retrying and entry is not None else self._max_load_retries
        self._set_state(name, version, START)
        self._set_state(name, version, LOADING)
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        try:
            servable = self._load(name, version, path)
            warmed = self._warmup(servable)
        except Exception as exc:  # a broken version must never take the server down
            error = from_exception(exc)
            message = f"Loading servable: {{name: {name} version: {version}}} failed: {error}"
            retry = (f"; retrying in {self._load_retry_interval_s:g}s ({retries_left} "
                     f"{'retry' if retries_left == 1 else 'retries'} left)" if retries_left > 0 else "")
            log.error("%s%s", message, retry)
            self._set_state(name, version, END, error.code, error.message)
            failed = self._versions[name][version]
            failed.retries_left, failed.retry_at = retries_left, time.monotonic() + self._load_retry_interval_s
            return ServingError(error.code, message)
        self._set_state(name, version, AVAILABLE, servable=servable)
        log.info("Successfully loaded servable version {name: %s version: %d} (%d warmup records)",
                 name, version, warmed)
        return None

    def _load(self, name: str, version: int, path: Path) -> Servable:
        """The loader, counted as TF's SavedModel loader counts its attempts (and times its successes)."""
        if self.metrics is None:
            return self._loader(name, version, path)
        start = time.perf_counter()
        try:
            servable = self._loader(name, version, path)
        except Exception:
            self.metrics.load_attempted(str(path), False, time.perf_counter() - start)
            raise
        self.metrics.load_attempted(str(path), True, time.perf_counter() - start)
        return servable

    def _warmup(self, servable: Servable) -> int:
        """Replay the warmup records; timed, as TF Serving does, only when the version has a warmup file."""
        if self.metrics is None or not (servable.path / WARMUP_FILE).exists():
            return servable.warmup()
        start = time.perf_counter()
        try:
            warmed = servable.warmup()
        except Exception as exc:
            self.metrics.warmup_finished(str(servable.path), str(from_exception(exc)), time.perf_counter() - start)
            raise
        self.metrics.warmup_finished(str(servable.path), "OK", time.perf_counter() - start)
        return warmed

    def _retire(self, name: str, aspired: set[int]) -> None:
        versions = self._versions.get(name, {})
        for version, entry in list(versions.items()):
            if version not in aspired and entry.error_code != "OK":
                entry.retry_allowed = True
        serving_aspired = any(versions.get(v) and versions[v].state == AVAILABLE for v in aspired)
        if aspired and not serving_aspired:
            return  # availability preserving: keep the old versions until a new one serves
        for version, entry in list(versions.items()):
            if version not in aspired and entry.state == AVAILABLE:
                self._unload(name, version)

    def _unload_all(self, name: str) -> None:
        for version, entry in list(self._versions.get(name, {}).items()):
            if entry.state == AVAILABLE:
                self._unload(name, version)

    def _unload(self, name: str, version: int) -> None:
        log.info("Unloading servable version {name: %s version: %d}", name, version)
        self._set_state(name, version, UNLOADING)
        self._set_state(name, version, END)

    def _set_state(self, name: str, version: int, state: str, error_code: str = "OK", error_message: str = "",
                   servable: Servable | None = None) -> None:
        with self._state_lock:
            entry = self._versions.setdefault(name, {}).setdefault(version, VersionState(version))
            entry.state, entry.error_code, entry.error_message = state, error_code, error_message
            entry.servable = servable if state == AVAILABLE else None
            if state in (START, LOADING):
                entry.retry_allowed = False
        if state in (AVAILABLE, UNLOADING):
            self._publish_routes()

    def _publish_routes(self) -> None:
        with self._state_lock:
            routes = {}
            for name in self._models:
                available = {v: e.servable for v, e in self._versions.get(name, {}).items()
                             if e.state == AVAILABLE and e.servable is not None}
                routes[name] = _Route(available, dict(self._labels.get(name, {})))
        self._routes = routes  # one reference swap: readers see the old or the new table, never half
