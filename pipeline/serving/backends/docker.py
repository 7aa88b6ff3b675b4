"""TF Serving in a docker container: one we start (``manage: true``) or a compose service (``manage: false``).

A managed instance runs the pinned ``tensorflow/serving`` image with the host's models dir and config
dir bind-mounted *at the same absolute paths*, so the ``base_path`` values the pipeline writes into
``models.config`` mean the same thing inside the container. An attached instance is a service of
``docker-compose.yml``; compose mounts the shared volumes at the same paths in Airflow and both servers.

Either way a config change goes the way of every backend (:meth:`ServingBackend.apply_config`): the file is
written, sent through gRPC ``HandleReloadConfigRequest``, and the REST model status watched until the server
serves exactly that. The file stays the truth a restarted (or polling) server reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.containers import require_pinned_image
from pipeline.errors import NotFound, SourceUnavailable
from pipeline.serving.backends import validate_spec
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.settings import Paths
from pipeline.util.polling import poll_until

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

log = logging.getLogger(__name__)

# A real, pinned TF Serving release (CPU image). Same tag in docker-compose.yml and k8s/.
_DEFAULT_IMAGE = "tensorflow/serving:2.19.0"
_CONTAINER_REST_PORT = 8501
_CONTAINER_GRPC_PORT = 8500
_DEFAULT_POLL_WAIT_S = 30
_DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"
_PROBE_TIMEOUT_S = 2.0
_POLL_INTERVAL_S = 0.5
_LOG_TAIL_LINES = 30



class DockerSpec(BaseModel):
    """How to run or reach one TF Serving container (a profile's ``instances.<name>`` block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["docker"] = "docker"
    manage: bool = True  # false: attach to a container someone else (docker-compose) runs
    image: str = _DEFAULT_IMAGE
    container_name: str | None = None  # default: pipeline-tfserving-<instance>
    host: str = "127.0.0.1"  # where this process reaches it: 127.0.0.1 (published ports) or a service name
    # bridge: the engine's default network, ports published on `host`. host: the host's network, the server
    # listening on rest_port/grpc_port itself (an engine without a bridge, e.g. `dockerd --bridge=none`).
    network: Literal["bridge", "host"] = "bridge"
    rest_port: int = Field(8501, gt=0, lt=65536)
    grpc_port: int = Field(8500, gt=0, lt=65536)
    config_path: str | None = None  # default: <serving_dir>/<instance>/models.config
    poll_wait_s: int = Field(_DEFAULT_POLL_WAIT_S, ge=0)  # --model_config_file_poll_wait_seconds
    docker_url: str | None = None  # default: $DOCKER_HOST or the local socket
    extra_args: tuple[str, ...] = ()

    @field_validator("image")
    @classmethod
    def _pinned(cls, image: str) -> str:
        return require_pinned_image(image)


def connect_docker(docker_url: str | None = None) -> docker.DockerClient:
    """A docker client whose engine answered a ping.

    Raises:
        SourceUnavailable: no engine answers at ``docker_url`` / ``$DOCKER_HOST`` / the local socket.
    """
    import docker

    target = docker_url or os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_SOCKET
    try:
        client = docker.DockerClient(base_url=target)
        client.ping()
    except docker.errors.DockerException as exc:
        raise SourceUnavailable(
            f"no Docker engine answers at {target} ({exc}); start Docker or point DOCKER_HOST at one"
        ) from None
    return client


class DockerBackend(ServingBackend):
    """A TF Serving instance in a docker container (see the module docstring)."""

    def __init__(self, name: str, spec: dict[str, Any], paths: Paths) -> None:
        """Validate ``spec`` (see :class:`DockerSpec`); connects to nothing yet."""
        self.name = name
        self.spec = validate_spec(DockerSpec, name, spec)
        self.paths = paths
        self._config_path = Path(self.spec.config_path or paths.serving_dir / name / "models.config")

    @property
    def config_path(self) -> Path:
        return self._config_path

    @property
    def container_name(self) -> str:
        """The container's name (managed) or the compose service it attaches to."""
        return self.spec.container_name or f"pipeline-tfserving-{self.name}"

    def _endpoint(self) -> Endpoint:
        return Endpoint(self.spec.host, self.spec.rest_port, self.spec.grpc_port)

    def start(self, timeout_s: float = 60.0) -> Endpoint:
        """Start the container (managed) or check the compose service answers, then wait until it serves."""
        if self.spec.manage:
            self._ensure_container()
        self._wait_until_answering(timeout_s)
        return self._endpoint()

    def endpoint(self) -> Endpoint:
        if not self.is_running():
            raise NotFound(
                f"TF Serving {self.name!r} does not answer at {self._endpoint().rest_url}; "
                + ("call start()" if self.spec.manage else "is its compose service up? (docker compose ps)")
            )
        return self._endpoint()

    def stop(self) -> None:
        """Stop and remove the managed container; an attached compose service is left alone."""
        if not self.spec.manage:
            log.info("%s is compose-managed; not stopping it (docker compose stop)", self.container_name)
            return
        import docker

        client = connect_docker(self.spec.docker_url)
        try:
            container = client.containers.get(self.container_name)
        except docker.errors.NotFound:
            return
        container.remove(force=True)
        log.info("removed container %s", self.container_name)

    def is_running(self) -> bool:
        from pipeline.serving.client import ServingClient

        with ServingClient.for_endpoint(self._endpoint()) as client:
            return client.is_ready(timeout_s=_PROBE_TIMEOUT_S)

    def _ensure_container(self) -> Container:
        import docker

        client = connect_docker(self.spec.docker_url)
        try:
            container = client.containers.get(self.container_name)
        except docker.errors.NotFound:
            container = None
        if container is not None and container.status == "running":
            return container
        if container is not None:  # exited or created: its flags may be stale, start afresh
            container.remove(force=True)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.paths.models_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_config_file()
        return self._run_container(client)

    def _run_container(self, client: docker.DockerClient) -> Container:
        models = str(self.paths.models_dir)
        config_dir = str(self.config_path.parent)
        log.info("starting %s from %s", self.container_name, self.spec.image)
        return client.containers.run(
            self.spec.image,
            entrypoint=["tensorflow_model_server"],
            command=self.server_args(),
            name=self.container_name,
            detach=True,
            # Same absolute paths inside: base_path values in models.config need no rewriting.
            volumes={models: {"bind": models, "mode": "ro"}, config_dir: {"bind": config_dir, "mode": "ro"}},
            **self._network(),
            labels={"app.kubernetes.io/part-of": "mlops-pipeline", "pipeline/instance": self.name},
            # No capabilities, no privilege escalation, a read-only root (it only reads the models and its config),
            # scratch space in memory; it runs as the owner of the files it reads (root only if that is root).
            user=f"{os.getuid()}:{os.getgid()}",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={"/tmp": "rw,noexec,nosuid,size=64m"},
            restart_policy={"Name": "unless-stopped"},  # a crashed server comes back, as under supervisord
        )

    def _network(self) -> dict[str, Any]:
        """The container's network arguments: published ports on ``host``, or the host's own network."""
        if self.spec.network == "host":
            return {"network_mode": "host"}
        return {"ports": {
            f"{_CONTAINER_REST_PORT}/tcp": (self.spec.host, self.spec.rest_port),
            f"{_CONTAINER_GRPC_PORT}/tcp": (self.spec.host, self.spec.grpc_port),
        }}

    def server_args(self) -> list[str]:
        """``tensorflow_model_server`` flags of a managed container."""
        on_host = self.spec.network == "host"  # no port mapping: the server listens on the spec's ports
        return [
            f"--port={self.spec.grpc_port if on_host else _CONTAINER_GRPC_PORT}",
            f"--rest_api_port={self.spec.rest_port if on_host else _CONTAINER_REST_PORT}",
            f"--model_config_file={self.config_path}",
            f"--model_config_file_poll_wait_seconds={self.spec.poll_wait_s}",
            # Production names a canary version in the same reload that first loads it.
            "--allow_version_labels_for_unavailable_models=true",
            *self.spec.extra_args,
        ]

    def _wait_until_answering(self, timeout_s: float) -> None:
        """Wait until both ports answer.

        Raises:
            SourceUnavailable: the managed container exited (at once, with the end of its log).
            DeadlineExceeded: no answer within ``timeout_s``.
        """

        def check() -> tuple[bool | None, str]:
            if self.is_running():
                return True, "answering"
            if self.spec.manage:  # a container that exited will never answer: say so now, with its log
                return None, f"container {self._container_status()}, not answering"
            return None, "not answering"

        poll_until(check, timeout_s, f"TF Serving {self.name!r} did not answer at {self._endpoint().rest_url}",
                   interval_s=_POLL_INTERVAL_S, hint=f"See `docker logs {self.container_name}`")

    def _container_status(self) -> str:
        """The managed container's status (e.g. ``running``, ``created``).

        Raises:
            SourceUnavailable: it exited; the message carries the end of its log.
        """
        client = connect_docker(self.spec.docker_url)
        container = client.containers.get(self.container_name)
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=_LOG_TAIL_LINES).decode(errors="replace")
            raise SourceUnavailable(f"container {self.container_name} exited; its log ends:\n{tail}")
        return container.status
