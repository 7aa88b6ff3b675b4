"""Serving profiles: which TF Serving instances a deployment has and how each is started or reached.

A profile is ``configs/serving/<profile>.yaml``, chosen by ``$PIPELINE_SERVING_PROFILE`` (default
``embedded``)::

    instances:
      staging:    {backend: local, host: 127.0.0.1, rest_port: 8601, grpc_port: 8600}
      production: {backend: local, host: 127.0.0.1, rest_port: 8501, grpc_port: 8500}

This module checks the profile's shape and the backend names only; the rest of an instance entry is that
backend's spec, which the backend class validates itself (see :func:`pipeline.serving.backends.make_backend`),
so new backends plug in without touching this file. Light: no I/O at import, no TensorFlow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError, NotFound
from pipeline.settings import config_dir

PROFILE_ENV = "PIPELINE_SERVING_PROFILE"
_DEFAULT_PROFILE = "embedded"
_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

BackendName = Literal["local", "docker", "kubernetes"]


class InstanceConfig(BaseModel):
    """One instance: its backend, plus that backend's own fields (kept as they are, checked by the backend)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    backend: BackendName

    def spec(self) -> dict[str, Any]:
        """The whole entry as a plain dict (``backend`` included), as backends take it."""
        return self.model_dump()


class ServingProfile(BaseModel):
    """The serving instances of one deployment, by name (``staging``, ``production``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = _DEFAULT_PROFILE
    description: str = ""
    instances: dict[str, InstanceConfig] = Field(min_length=1)
    traffic: dict[str, Any] | None = None  # the live traffic path; checked by pipeline.live.endpoints

    def instance(self, instance_name: str) -> InstanceConfig:
        """The entry of one instance.

        Raises:
            NotFound: the profile has no such instance.
        """
        try:
            return self.instances[instance_name]
        except KeyError:
            known = ", ".join(sorted(self.instances))
            raise NotFound(
                f"serving profile {self.name!r} has no instance {instance_name!r} (has {known})"
            ) from None


def profile_name(profile: str | None = None) -> str:
    """The profile asked for, else ``$PIPELINE_SERVING_PROFILE``, else ``embedded``."""
    return profile or os.environ.get(PROFILE_ENV) or _DEFAULT_PROFILE


def profile_path(profile: str | None = None) -> Path:
    """``<config dir>/serving/<profile>.yaml``."""
    return config_dir() / "serving" / f"{profile_name(profile)}.yaml"


def parse_profile(raw: Any, name: str = _DEFAULT_PROFILE, source: str = "<dict>") -> ServingProfile:
    """Validate a mapping into a :class:`ServingProfile`; errors name each bad field.

    Raises:
        ConfigError: the mapping is not a valid profile.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    for instance_name in raw.get("instances") or {}:
        if not isinstance(instance_name, str) or not _valid_name(instance_name):
            raise ConfigError(f"{source}: instances.{instance_name}: instance names are lower-case words")
    try:
        return ServingProfile.model_validate({"name": name, **raw})
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid serving profile: {describe_errors(exc)}") from None


def load_profile(profile: str | None = None) -> ServingProfile:
    """Read and validate the serving profile (see :func:`profile_name` for which one).

    Raises:
        NotFound: no such profile file.
        ConfigError: the file is not valid YAML or not a valid profile.
    """
    name = profile_name(profile)
    path = profile_path(name)
    if not path.is_file():
        known = ", ".join(list_profiles()) or "none"
        raise NotFound(f"no serving profile {name!r} (known: {known}); add {path} or set ${PROFILE_ENV}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_profile(raw, name=name, source=str(path))


def list_profiles() -> list[str]:
    """The profiles in ``<config dir>/serving/``."""
    return sorted(path.stem for path in (config_dir() / "serving").glob("*.yaml"))


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """``"instances.staging.rest_port: Input should be ..."``: each pydantic error with its dotted field."""
    return "; ".join(
        f"{'.'.join([p for p in [prefix] if p] + [str(part) for part in err['loc']]) or '<root>'}: {err['msg']}"
        for err in exc.errors()
    )


def _valid_name(name: str) -> bool:
    return re.fullmatch(_NAME_PATTERN, name) is not None
