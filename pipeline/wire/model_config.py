"""Read, write and validate TF Serving ``models.config`` files (a ``ModelServerConfig`` in protobuf text format).

Production pins versions with ``model_version_policy { specific { versions: ... } }`` and names them with
``version_labels``; this module builds and edits such configs as new protos (never in place) and writes them
atomically, so a polling server or a restart never sees half a file. Light on purpose: protobuf only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from pipeline.errors import ConfigError, NotFound
from pipeline.util.files import write_atomically

# A model name becomes a URL path segment and a directory name: no separators, no dot-dot, no spaces.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEFAULT_PLATFORM = "tensorflow"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise.

    Raises:
        ConfigError: the name is empty, has a path separator, ``..`` or characters outside ``[A-Za-z0-9_.-]``.
    """
    if not _SAFE_NAME.match(name or "") or ".." in name:
        raise ConfigError(f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
                          "starting with a letter or digit, without '..'")
    return name


def check_base_path(base_path: str, *, require_absolute: bool = True) -> str:
    """Return ``base_path`` if it cannot escape where it points to, else raise.

    Raises:
        ConfigError: the path is empty, relative (when ``require_absolute``), has a ``..`` segment or a NUL.
    """
    if not base_path or "\x00" in base_path:
        raise ConfigError(f"base_path {base_path!r} is empty or has a NUL byte")
    if ".." in PurePosixPath(base_path.replace("\\", "/")).parts:
        raise ConfigError(f"base_path {base_path!r} has a '..' segment; give the resolved absolute path")
    if require_absolute and not os.path.isabs(base_path):
        raise ConfigError(f"base_path {base_path!r} must be absolute")
    return base_path


def parse_config(text: str) -> ModelServerConfig:
    """Parse ``models.config`` text.

    Raises:
        ConfigError: the text is not a valid ``ModelServerConfig``.
    """
    config = ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"models.config does not parse as ModelServerConfig: {exc}") from None
    return config


def format_config(config: ModelServerConfig) -> str:
    """The text format of ``config``, as written to ``models.config``."""
    return text_format.MessageToString(config)


def read_config(path: str | Path) -> ModelServerConfig:
    """Read a ``models.config`` file.

    Raises:
        NotFound: the file does not exist.
        ConfigError: it does not parse.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"no models.config at {path}; write one with write_config()") from None
    return parse_config(text)


def write_config(path: str | Path, config: ModelServerConfig) -> Path:
    """Validate ``config`` and write it to ``path`` atomically (temp file in the same dir, fsync, rename).

    Returns:
        The path written.
    """
    validate_config(config)  # before touching the file: an invalid config never replaces a valid one
    return write_atomically(path, format_config(config), mode=0o600)  # as before: only the pipeline reads it


def validate_config(config: ModelServerConfig) -> None:
    """Check what TF Serving would refuse and what our release flow relies on.

    Raises:
        ConfigError: no ``model_config_list``; a name is unsafe or repeated; a base path is relative or has
            ``..``; a platform other than tensorflow; a label points at a version a ``specific`` policy does
            not pin; a version or label is invalid.
    """
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        check_model_name(model.name)
        if model.name in seen:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        check_base_path(model.base_path)
        if model.model_platform not in ("", _DEFAULT_PLATFORM):
            raise ConfigError(f"model {model.name}: platform {model.model_platform!r} is not supported")
        _validate_versions(model)


def _validate_versions(model: ModelConfig) -> None:
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "latest" and policy.latest.num_versions < 0:
        raise ConfigError(f"model {model.name}: latest.num_versions must be positive")
    pinned = set(policy.specific.versions) if kind == "specific" else None
    if pinned is not None and not pinned:
        raise ConfigError(f"model {model.name}: specific policy lists no versions")
    if pinned is not None and any(v <= 0 for v in pinned):
        raise ConfigError(f"model {model.name}: versions must be positive integers, got {sorted(pinned)}")
    for label, version in model.version_labels.items():
        if not _SAFE_LABEL.match(label):
            raise ConfigError(f"model {model.name}: label {label!r} is not allowed")
        if pinned is not None and version not in pinned:
            raise ConfigError(f"model {model.name}: label {label!r} points at version {version}, which the "
                              f"specific policy does not load (versions {sorted(pinned)})")


def single_model_config(name: str, base_path: str | Path, versions: Iterable[int] | None = None,
                        labels: Mapping[str, int] | None = None) -> ModelServerConfig:
    """A config serving one model: the latest version, or exactly ``versions`` with optional ``labels``."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = str(base_path)
    model.model_platform = _DEFAULT_PLATFORM
    _set_policy(model, versions, labels)
    validate_config(config)
    return config


def _set_policy(model: ModelConfig, versions: Iterable[int] | None, labels: Mapping[str, int] | None) -> None:
    model.ClearField("model_version_policy")
    model.ClearField("version_labels")
    if versions is None:
        model.model_version_policy.latest.num_versions = 1
    else:
        model.model_version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    for label, version in sorted((labels or {}).items()):
        model.version_labels[label] = int(version)


def get_model(config: ModelServerConfig, name: str) -> ModelConfig:
    """The ``ModelConfig`` called ``name``.

    Raises:
        NotFound: no such model in the config.
    """
    for model in config.model_config_list.config:
        if model.name == name:
            return model
    names = [m.name for m in config.model_config_list.config]
    raise NotFound(f"model {name!r} is not in models.config (models: {names})")


def set_model_versions(config: ModelServerConfig, name: str, versions: Iterable[int],
                       labels: Mapping[str, int] | None = None) -> ModelServerConfig:
    """A copy of ``config`` where model ``name`` pins exactly ``versions`` and carries exactly ``labels``.

    Raises:
        NotFound: no such model.
        ConfigError: the result does not validate (e.g. a label on a version not pinned).
    """
    new = ModelServerConfig()
    new.CopyFrom(config)
    _set_policy(get_model(new, name), versions, labels)
    validate_config(new)
    return new


def versions_and_labels(model: ModelConfig) -> tuple[list[int] | None, dict[str, int]]:
    """The pinned versions of a model (None for ``latest``/``all``) and its labels."""
    policy = model.model_version_policy
    pinned = sorted(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else None
    return pinned, dict(model.version_labels)
