"""Model retention: delete old version directories, never one that is serving or a rollback target.

TF Serving loads every numeric directory under a model base path and unloads one that disappears, so a
directory is first renamed to a non-numeric trash name (atomic on one filesystem: the server sees the
whole version vanish at once, never half of it) and only then removed.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.release.registry import Registry, State
from pipeline.wire.version_dirs import list_versions

_log = logging.getLogger(__name__)

# Trash names start with a dot and hold a non-digit, so neither TF Serving nor a listing of versions
# takes them for a version.
_TRASH_PREFIX = ".trash-"


def plan_retention(versions_on_disk: Iterable[int], keep: int, protected: set[int]) -> list[int]:
    """The versions to delete: all but the newest ``keep``, never a protected one.

    Protected versions do not count towards ``keep``: with versions 1..10, ``keep=3`` and
    ``protected={2}``, versions 1 and 3 to 7 go.

    Args:
        versions_on_disk: Version numbers present (any order).
        keep: How many of the newest versions to keep; at least 1.
        protected: Versions never deleted (the caller passes stable, canary and the last good one).

    Returns:
        Versions to delete, oldest first.

    Raises:
        ConfigError: ``keep`` is below 1.
    """
    if keep < 1:
        raise ConfigError(f"retention keep must be at least 1, got {keep}")
    ordered = sorted(set(versions_on_disk))
    candidates = ordered[:-keep] if len(ordered) > keep else []
    return [version for version in candidates if version not in protected]


def apply_retention(
    model_base_path: str | Path,
    model: str,
    registry: Registry,
    keep: int,
    protected: set[int],
    *,
    run_id: str | None = None,
) -> list[int]:
    """Deletes the version directories :func:`plan_retention` picks and records them ``retired``.

    The registry's own stable, canary and rollback target are protected too, whatever the caller
    passes. Trash left by an interrupted earlier run is removed as well. Versions on disk that the
    registry does not know are deleted without a record.

    Args:
        model_base_path: The model's TF Serving base path (``<models_dir>/<model>``).
        model: Model name in the registry.
        registry: The release registry.
        keep: How many of the newest versions to keep; at least 1.
        protected: Versions never deleted.
        run_id: Airflow run id for the ``retired`` transitions.

    Returns:
        The deleted versions, oldest first.
    """
    base = Path(model_base_path)
    all_protected = set(protected) | registry.protected_versions(model)
    doomed = plan_retention(list_versions(base), keep, all_protected)
    known = {record.version for record in registry.versions(model)}
    for version in doomed:
        trash = _move_to_trash(base, version)
        # Gone for TF Serving from the rename on, so it is recorded before the slower removal.
        if version in known:
            reason = f"retention: keeping the newest {keep} and {sorted(all_protected)}"
            registry.transition(model, version, State.RETIRED, run_id=run_id, reason=reason)
        _remove_trash(trash)
    _purge_stale_trash(base)
    return doomed


def _move_to_trash(base: Path, version: int) -> Path:
    """Renames ``<base>/<version>`` to a unique non-numeric name on the same filesystem."""
    trash = base / f"{_TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    (base / str(version)).rename(trash)
    return trash


def _remove_trash(trash: Path) -> None:
    try:
        shutil.rmtree(trash)
    except OSError as exc:  # the version is already invisible to TF Serving; the next run retries
        _log.warning("could not remove %s (%s); it will be retried on the next retention run", trash, exc)


def _purge_stale_trash(base: Path) -> None:
    for entry in base.glob(f"{_TRASH_PREFIX}*"):
        _remove_trash(entry)
