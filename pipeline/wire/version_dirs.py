"""The on-disk contract of a model base path: ``<base>/<N>/`` version directories, as TF Serving reads them.

TF Serving loads any numeric directory it sees, complete or not, so a version is written under a hidden,
non-numeric temp name in the same directory (``.tmp-export-<uuid>``) and then renamed to the next integer.
Versions only grow: a high-water mark (``.last_version``) survives deleting old versions, and it is read and
advanced under a lock of the base path so that concurrent exports get distinct numbers.

One version directory::

    saved_model.pb, variables/, assets/
    assets.extra/tf_serving_warmup_requests   TFRecord of PredictionLog (TF Serving replays it on load)
    assets.extra/metadata.json                model, run id, data snapshot, metrics, code version, signatures
    assets.extra/golden.json                  test inputs, true labels, the offline model's predictions

Export, retention and the embedded server's disk scan all read the base path through this module. Stdlib only.

A version is a directory named by a decimal number from 0 to 2**63 - 1 (TF Serving reads the name with
``safe_strto64``; the registry stores an int64), in ASCII digits and without leading zeros. Anything else is not a
version and is ignored everywhere: ``²`` (which ``str.isdigit()`` takes), ``007``, a 20-digit name. A version
that would come after 2**63 - 1 is refused with a clear error (:class:`pipeline.errors.ConfigError`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, NotFound
from pipeline.util.files import file_lock, fsync_dir, write_atomically

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-export-"
LAST_VERSION_FILE = ".last_version"
LOCK_FILE = ".export.lock"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "metadata.json"
GOLDEN_FILE = "golden.json"
SAVED_MODEL_FILE = "saved_model.pb"
MAX_VERSION = 2**63 - 1  # int64: TF Serving's and the registry's
# ASCII digits only (str.isdigit() takes '²'), no leading zero (the directory of version 7 is "7"), <= 19 digits.
_VERSION_NAME = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)
_DEFAULT_STALE_TMP_AGE_S = 3600.0


def parse_version(name: str) -> int | None:
    """The version a directory entry's name stands for, or None when it is not a version (see the module doc)."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


def is_version_name(name: str) -> bool:
    """Whether a directory entry's name is a version number TF Serving would load."""
    return parse_version(name) is not None


def scan_versions(base_path: str | Path) -> list[int] | None:
    """The version directories under ``base_path``, ascending; None when the base path does not exist.

    Raises:
        OSError: the base path could not be read (e.g. EMFILE): the caller keeps what it has.
    """
    try:
        entries = list(os.scandir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions = []
    for entry in entries:
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            versions.append(version)
    return sorted(versions)


def list_versions(base_path: str | Path) -> list[int]:
    """The version directories under ``base_path``, ascending (none when it is missing)."""
    return scan_versions(base_path) or []


def version_dir(base_path: str | Path, version: int) -> Path:
    """``<base_path>/<version>``."""
    return Path(base_path) / str(version)


def has_saved_model(path: str | Path) -> bool:
    """Whether a version directory holds a SavedModel."""
    return (Path(path) / SAVED_MODEL_FILE).is_file()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path.parent.parent} has no {what} ({path.name}); was it made by pipeline.export?") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``assets.extra/metadata.json`` of a version directory."""
    return _read_json(Path(path) / ASSETS_EXTRA / METADATA_FILE, "metadata")


def read_golden(path: str | Path) -> dict[str, Any]:
    """The ``assets.extra/golden.json`` of a version directory (inputs, labels, offline predictions)."""
    return _read_json(Path(path) / ASSETS_EXTRA / GOLDEN_FILE, "golden set")


def find_version_of_run(base_path: str | Path, run_id: str) -> int | None:
    """The version exported from training run ``run_id``, or None."""
    for version in list_versions(base_path):
        meta_path = version_dir(base_path, version) / ASSETS_EXTRA / METADATA_FILE
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if json.loads(meta_path.read_text()).get("run_id") == run_id:
                return version
    return None


def remove_stale_temp_dirs(base_path: str | Path, max_age_s: float = _DEFAULT_STALE_TMP_AGE_S) -> list[Path]:
    """Delete temp dirs of crashed exports older than ``max_age_s``; younger ones may be in progress."""
    removed = []
    for path in Path(base_path).glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.info("removed %d stale export temp dir(s) under %s", len(removed), base_path)
    return removed


@contextlib.contextmanager
def base_path_lock(base_path: str | Path) -> Iterator[None]:
    """Exclusive lock of a model base path across processes (released when the process dies)."""
    with file_lock(Path(base_path) / LOCK_FILE):
        yield


def read_high_water(base_path: str | Path) -> int:
    """The highest version ever published under ``base_path`` (0 before the first, or if the mark is not one)."""
    with contextlib.suppress(FileNotFoundError, ValueError, UnicodeDecodeError):
        return parse_version((Path(base_path) / LAST_VERSION_FILE).read_text().strip()) or 0
    return 0


def publish(base_path: str | Path, tmp_dir: Path, run_id: str) -> tuple[int, bool]:
    """Rename a complete temp dir to the next version, under the lock; ``(version, created)``.

    A version of the same run published meanwhile (a concurrent export) wins: ``created`` is then False and
    ``tmp_dir`` is left for the caller to remove.

    Raises:
        ConfigError: the next version would be past :data:`MAX_VERSION` (a version directory that high exists).
    """
    base = Path(base_path)
    with base_path_lock(base):
        existing = find_version_of_run(base, run_id)
        if existing is not None:
            return existing, False
        highest = max([read_high_water(base), *list_versions(base)])
        if highest >= MAX_VERSION:
            raise ConfigError(f"{base} has version {highest}, the largest TF Serving and the registry can number; "
                              "no version can follow it. Move that directory (and .last_version) aside")
        version = highest + 1
        os.rename(tmp_dir, version_dir(base, version))
        write_atomically(base / LAST_VERSION_FILE, f"{version}\n")
        fsync_dir(base)
    return version, True
