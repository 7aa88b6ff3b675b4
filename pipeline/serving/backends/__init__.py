"""How a TF Serving is started or reached: local process, docker container, kubernetes deployment.

:func:`get_backend` turns an instance of the serving profile (``configs/serving/<profile>.yaml``) into its
:class:`~pipeline.serving.backends.base.ServingBackend`. Each backend module is imported only when an instance
uses it, so the docker and kubernetes client libraries load only where they are needed. A backend class takes
``(name, spec, paths)`` and validates ``spec`` itself (:func:`validate_spec` helps).
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.settings import Paths, get_paths

__all__ = ["Endpoint", "ServingBackend", "get_backend", "make_backend", "validate_spec"]

# backend name -> "module:class", imported on first use.
_BACKENDS = {
    "local": "pipeline.serving.backends.local:LocalBackend",
    "docker": "pipeline.serving.backends.docker:DockerBackend",
    "kubernetes": "pipeline.serving.backends.kubernetes:KubernetesBackend",
}

SpecT = TypeVar("SpecT", bound=BaseModel)


def make_backend(instance_name: str, spec: dict[str, Any], paths: Paths | None = None) -> ServingBackend:
    """The backend of one instance, from its profile entry.

    Args:
        instance_name: ``staging``, ``production``, ...
        spec: the instance's entry in the profile (``backend`` plus that backend's fields).
        paths: the pipeline's directories (default: from ``$PIPELINE_HOME``).

    Raises:
        ConfigError: unknown backend, or a spec its backend rejects (the message names the field).
    """
    backend_name = spec.get("backend")
    if backend_name not in _BACKENDS:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError(f"instances.{instance_name}.backend: unknown backend {backend_name!r} (known: {known})")
    module_name, class_name = _BACKENDS[backend_name].split(":")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"instances.{instance_name}: backend {backend_name!r} is not available: {exc}") from exc
    return backend_class(instance_name, spec, paths or get_paths())


def get_backend(instance_name: str, profile: str | None = None, paths: Paths | None = None) -> ServingBackend:
    """The backend of ``instance_name`` in the serving profile (``$PIPELINE_SERVING_PROFILE`` by default).

    Raises:
        NotFound: no such profile or instance.
        ConfigError: the profile or the instance's spec is invalid.
    """
    from pipeline.serving.profiles import load_profile

    instance = load_profile(profile).instance(instance_name)
    return make_backend(instance_name, instance.spec(), paths)


def validate_spec(model: type[SpecT], instance_name: str, spec: dict[str, Any]) -> SpecT:
    """Validate a backend's spec with its pydantic model; errors name ``instances.<name>.<field>``.

    Raises:
        ConfigError: the spec is invalid.
    """
    from pipeline.serving.profiles import describe_errors

    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"invalid serving instance: {describe_errors(exc, f'instances.{instance_name}')}") from None
