"""What a training container runs, for DockerOperator and KubernetesPodOperator.

When a model's config says training runs in a container, the DAG hands these values to the operator
instead of calling ``pipeline.steps`` in the Airflow worker. The container runs the same CLI the
worker would (``python -m pipeline train ...``) from the pipeline image the ``Dockerfile`` builds, on
the same pipeline home (snapshots in, runs out), so the next task finds its output where it expects.

The registry's URL (it may hold a database password) never enters a container's environment or its spec:
where one is configured it is mounted as a secret file, read-only, at ``CONTAINER_REGISTRY_URL_FILE``, and the
container gets only that path (``$PIPELINE_REGISTRY_URL_FILE``, which :mod:`pipeline.settings` reads). Docker:
``$PIPELINE_DOCKER_REGISTRY_SECRET`` is the host path of a file holding the URL (e.g. a compose secret's file),
bind-mounted; Kubernetes: ``$PIPELINE_K8S_REGISTRY_SECRET`` names a Secret whose key ``url`` holds it, mounted as a
volume. Without either, no registry reaches the container (training does not use it).

Importable without tensorflow or the docker/kubernetes clients; those are imported when called.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import ConfigError
from pipeline.settings import REGISTRY_URL_FILE_ENV, REPO_ROOT

if TYPE_CHECKING:
    from docker.types import Mount
    from kubernetes.client import V1Pod

# The image the Dockerfile builds (`docker build -t mlops-pipeline:0.1.0 .`); $PIPELINE_IMAGE overrides.
_DEFAULT_IMAGE = "mlops-pipeline:0.1.0"
# Where the pipeline home and the models live inside every container (compose, k8s, training).
CONTAINER_PIPELINE_HOME = "/opt/pipeline/var"
CONTAINER_MODELS_DIR = f"{CONTAINER_PIPELINE_HOME}/models"
# Named volumes docker-compose.yml declares with a fixed `name:`, so containers the docker engine starts
# outside compose (DockerOperator) can mount the very same volumes.
_DEFAULT_HOME_VOLUME = "mlops-pipeline-home"
_DEFAULT_MODELS_VOLUME = "mlops-models"
_DEFAULT_POD_TEMPLATE = REPO_ROOT / "k8s" / "training-pod.yaml"
# The registry URL as a secret file inside the container (a Kubernetes Secret volume mounts its keys as files).
_CONTAINER_SECRET_DIR = "/run/secrets/pipeline-registry"
_SECRET_KEY = "url"
CONTAINER_REGISTRY_URL_FILE = f"{_CONTAINER_SECRET_DIR}/{_SECRET_KEY}"
DOCKER_REGISTRY_SECRET_ENV = "PIPELINE_DOCKER_REGISTRY_SECRET"
# In a DAG: the snapshot the prepare_data task made and validate_data passed, rendered by Airflow at run time, so
# the container trains on exactly what the data gate let through (never on a snapshot prepared again).
VALIDATED_SNAPSHOT = "{{ ti.xcom_pull(task_ids='prepare_data')['sha256'] }}"
K8S_REGISTRY_SECRET_ENV = "PIPELINE_K8S_REGISTRY_SECRET"


def pipeline_image() -> str:
    """The pipeline image training containers run (``$PIPELINE_IMAGE``, default ``mlops-pipeline:0.1.0``).

    Raises:
        ConfigError: the image has no tag or the tag is ``latest`` (a release must be reproducible).
    """
    image = os.environ.get("PIPELINE_IMAGE") or _DEFAULT_IMAGE
    try:
        return require_pinned_image(image)
    except ValueError as exc:
        raise ConfigError(f"PIPELINE_IMAGE: {exc}") from None


def require_pinned_image(image: str) -> str:
    """``image`` if it carries a tag other than ``latest`` or a digest; otherwise a ValueError."""
    if "@sha256:" in image:
        return image
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag in ("", "latest"):
        raise ValueError(f"image {image!r} must be pinned to a tag (not 'latest') or a digest")
    return image


def train_command(model: str, snapshot_sha: str | None = None, fault: str | None = None) -> list[str]:
    """The command a training container runs: ``python -m pipeline train <model> [...] --json``.

    Args:
        model: Model name (``configs/models/<model>.yaml``).
        snapshot_sha: Train on the snapshot ``data/<model>/<sha>/`` of the shared pipeline home; without it
            the container prepares (or reuses) the snapshot of the current source.
        fault: A fault to inject (``label_shift``), where the model's config allows it.
    """
    command = ["python", "-m", "pipeline", "train", model]
    if snapshot_sha:
        if snapshot_sha != VALIDATED_SNAPSHOT and not re.fullmatch(r"[0-9a-f]{8,64}", snapshot_sha):
            raise ConfigError(f"snapshot_sha {snapshot_sha!r} is not a hex digest")
        command += ["--snapshot", f"{CONTAINER_PIPELINE_HOME}/data/{model}/{snapshot_sha}"]
    if fault:
        command += ["--fault", fault]
    return command + ["--json"]  # the last lines of the log are the run's JSON, for the DAG to read


def container_environment(registry_secret: bool = False) -> dict[str, str]:
    """Environment a training container needs to find its config and its pipeline home; with
    ``registry_secret``, where the mounted registry URL file is (never the URL)."""
    env = {
        "PIPELINE_HOME": CONTAINER_PIPELINE_HOME,
        "PIPELINE_CONFIG_DIR": "/opt/pipeline/configs",
        # Training is CPU-bound and shares the host; keep TF's own thread pools from oversubscribing it.
        "TF_CPP_MIN_LOG_LEVEL": "1",
    }
    if registry_secret:
        env[REGISTRY_URL_FILE_ENV] = CONTAINER_REGISTRY_URL_FILE
    return env


def docker_registry_secret() -> Mount | None:
    """The read-only bind mount of ``$PIPELINE_DOCKER_REGISTRY_SECRET`` (a host file holding the registry URL) at
    ``CONTAINER_REGISTRY_URL_FILE``; None when it is not set.

    Raises:
        ConfigError: the path is not absolute (the docker engine resolves it on the host).
    """
    from docker.types import Mount

    source = os.environ.get(DOCKER_REGISTRY_SECRET_ENV)
    if not source:
        return None
    if not source.startswith("/"):
        raise ConfigError(f"${DOCKER_REGISTRY_SECRET_ENV}: {source!r} must be the absolute host path of the file "
                          "holding the registry URL")
    return Mount(target=CONTAINER_REGISTRY_URL_FILE, source=source, type="bind", read_only=True)


def docker_mounts() -> list[Mount]:
    """Mounts of the pipeline home and the models for a training container started by DockerOperator.

    ``$PIPELINE_DOCKER_HOME_VOLUME`` / ``$PIPELINE_DOCKER_MODELS_VOLUME`` name the sources: a named
    volume (the compose defaults) or an absolute host path (bind mount, for a plain docker host).
    """
    from docker.types import Mount

    sources = (
        (os.environ.get("PIPELINE_DOCKER_HOME_VOLUME") or _DEFAULT_HOME_VOLUME, CONTAINER_PIPELINE_HOME),
        (os.environ.get("PIPELINE_DOCKER_MODELS_VOLUME") or _DEFAULT_MODELS_VOLUME, CONTAINER_MODELS_DIR),
    )
    return [
        Mount(target=target, source=source, type="bind" if source.startswith("/") else "volume")
        for source, target in sources
    ]


def docker_operator_kwargs(model: str, snapshot_sha: str | None = None, fault: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``DockerOperator`` that train ``model`` in the pipeline image."""
    secret = docker_registry_secret()
    return {
        "image": pipeline_image(),
        "command": train_command(model, snapshot_sha, fault),
        "environment": container_environment(registry_secret=secret is not None),
        "mounts": docker_mounts() + ([secret] if secret else []),
        "mount_tmp_dir": False,  # the tmp bind needs a host path the worker container doesn't have
        "auto_remove": "success",
        "docker_url": os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock",
        # Training reads and writes the shared home only: no network unless $PIPELINE_DOCKER_NETWORK names one.
        "network_mode": os.environ.get("PIPELINE_DOCKER_NETWORK") or "none",
    }


def pod_template_file() -> Path:
    """The training Pod template (``$PIPELINE_POD_TEMPLATE`` or ``k8s/training-pod.yaml``).

    Raises:
        ConfigError: the file does not exist.
    """
    path = Path(os.environ.get("PIPELINE_POD_TEMPLATE") or _DEFAULT_POD_TEMPLATE)
    if not path.is_file():
        raise ConfigError(f"training pod template {path} does not exist; set PIPELINE_POD_TEMPLATE")
    return path


def load_pod_template(path: str | Path | None = None) -> V1Pod:
    """The training Pod template as the kubernetes client's ``V1Pod`` (validated on the way)."""
    from kubernetes.client import ApiClient

    source = Path(path) if path else pod_template_file()
    data = yaml.safe_load(source.read_text())
    if not isinstance(data, dict) or data.get("kind") != "Pod":
        raise ConfigError(f"{source}: expected a single Pod manifest")
    # The client's own deserializer: the same field names and types the API server accepts.
    return ApiClient()._ApiClient__deserialize(data, "V1Pod")


def kubernetes_pod_operator_kwargs(
    model: str, snapshot_sha: str | None = None, fault: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``KubernetesPodOperator`` that train ``model`` from the Pod template.

    The template carries volumes, resources and security context; these arguments set what changes per run.
    """
    template = load_pod_template()
    secrets = kubernetes_registry_secrets()
    return {
        "pod_template_file": str(pod_template_file()),
        "namespace": template.metadata.namespace or "mlops",
        "image": pipeline_image(),
        "cmds": train_command(model, snapshot_sha, fault)[:1],
        "arguments": train_command(model, snapshot_sha, fault)[1:],
        "env_vars": container_environment(registry_secret=bool(secrets)),
        "secrets": secrets,
        "labels": {"app.kubernetes.io/part-of": "mlops-pipeline", "pipeline/model": model},
        "get_logs": True,
        "on_finish_action": "delete_succeeded_pod",
    }


def kubernetes_registry_secrets() -> list[Any]:
    """The Secret ``$PIPELINE_K8S_REGISTRY_SECRET`` (its key ``url``) as a read-only volume whose file is
    ``CONTAINER_REGISTRY_URL_FILE``, for ``KubernetesPodOperator(secrets=...)``; empty when it is not set."""
    name = os.environ.get(K8S_REGISTRY_SECRET_ENV)
    if not name:
        return []
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import V1KeyToPath

    return [Secret("volume", _CONTAINER_SECRET_DIR, name, items=[V1KeyToPath(key=_SECRET_KEY, path=_SECRET_KEY)])]
