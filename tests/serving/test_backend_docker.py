"""The docker backend: its spec, its checks, attach mode against a live server, and a real container.

Attach mode (``manage: false``, how the compose profile reaches its services) talks only TF Serving's REST
and gRPC APIs, so it is tested for real against the embedded TF-Serving-compatible server. The managed
container test needs a Docker engine (``@pytest.mark.docker``) and skips naming the socket it tried.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, SourceUnavailable
from pipeline.serving.backends import make_backend
from pipeline.serving.backends.docker import DockerBackend, connect_docker
from pipeline.settings import get_paths
from pipeline.util.net import free_port, free_ports
from pipeline.wire.model_config import ModelServerConfig, single_model_config, write_config

_ENGINE_START_S = 300.0  # TensorFlow's import in a fresh container, on two shared cores


def _backend(home: Path, **spec: Any) -> DockerBackend:
    return make_backend("production", {"backend": "docker", **spec}, get_paths(home))  # type: ignore[return-value]


@pytest.mark.parametrize("field, value, complaint", [
    ("image", "tensorflow/serving:latest", "pinned"),
    ("image", "tensorflow/serving", "pinned"),
    ("rest_port", 70000, "rest_port"),
    ("replicas", 2, "replicas"),  # a kubernetes field: not this backend's
])
def test_a_bad_spec_names_the_instance_and_field(tmp_path, field, value, complaint):
    with pytest.raises(ConfigError, match=rf"instances\.production\.{field}.*") as caught:
        _backend(tmp_path, **{field: value})
    assert complaint in str(caught.value)


def test_defaults_put_the_config_under_the_pipeline_home(tmp_path):
    backend = _backend(tmp_path)
    assert backend.config_path == tmp_path / "serving" / "production" / "models.config"
    assert backend.container_name == "pipeline-tfserving-production"
    args = backend.server_args()
    assert f"--model_config_file={backend.config_path}" in args
    assert "--model_config_file_poll_wait_seconds=30" in args and "--rest_api_port=8501" in args


def test_a_managed_container_runs_without_privileges(tmp_path, monkeypatch):
    import docker

    from pipeline.serving.backends import docker as docker_backend

    started: dict[str, Any] = {}

    class Containers:
        def get(self, name: str) -> Any:
            raise docker.errors.NotFound(name)

        def run(self, image: str, **kwargs: Any) -> Any:
            started.update(kwargs, image=image)
            return object()

    monkeypatch.setattr(docker_backend, "connect_docker", lambda url: type("Client", (), {"containers": Containers()}))
    _backend(tmp_path, rest_port=free_port(), grpc_port=free_port())._ensure_container()
    assert started["cap_drop"] == ["ALL"] and started["security_opt"] == ["no-new-privileges:true"]
    assert started["read_only"] is True and "/tmp" in started["tmpfs"]
    assert started["user"] == f"{os.getuid()}:{os.getgid()}"  # the owner of the models it reads
    assert started["restart_policy"] == {"Name": "unless-stopped"}
    assert {mode["mode"] for mode in started["volumes"].values()} == {"ro"}
    assert {host for host, _ in started["ports"].values()} == {"127.0.0.1"}  # published on loopback only


def test_no_engine_is_reported_naming_the_socket(tmp_path, monkeypatch):
    socket_path = tmp_path / "docker.sock"
    with pytest.raises(SourceUnavailable, match=f"unix://{socket_path}"):
        connect_docker(f"unix://{socket_path}")
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(SourceUnavailable, match="tcp://127.0.0.1"):
        _backend(tmp_path).stop()  # managed: stopping needs the engine


def test_attached_instance_that_does_not_answer(tmp_path):
    rest_port, grpc_port = free_ports(2)
    backend = _backend(tmp_path, manage=False, host="127.0.0.1", rest_port=rest_port, grpc_port=grpc_port)
    assert not backend.is_running()
    with pytest.raises(NotFound, match="compose"):
        backend.endpoint()
    with pytest.raises(DeadlineExceeded, match="did not answer"):
        backend.start(timeout_s=1)
    backend.stop()  # compose owns it: nothing to do, no engine needed


@pytest.mark.slow
def test_attach_apply_promote_and_roll_back_on_a_live_server(tmp_path, serve, make_base_path, half_plus_two_dir,
                                                             half_plus_three_dir):
    base = make_base_path("hpt", {1: half_plus_two_dir, 2: half_plus_three_dir})
    config_path = tmp_path / "serving" / "production" / "models.config"
    write_config(config_path, ModelServerConfig())
    server = serve(model_config_file=str(config_path), allow_version_labels_for_unavailable_models=True)
    backend = _backend(tmp_path, manage=False, rest_port=server.rest_port, grpc_port=server.grpc_port)

    assert backend.start(timeout_s=30).rest_port == server.rest_port and backend.is_running()
    # canary loaded and labelled: returns only once served
    backend.apply_config(single_model_config("hpt", base, [1, 2], {"stable": 1, "canary": 2}), timeout_s=60)

    # rollback: returns once version 2 is no longer AVAILABLE
    backend.apply_config(single_model_config("hpt", base, [1], {"stable": 1}), timeout_s=60)
    from pipeline.serving.client import ServingClient

    with ServingClient.for_endpoint(backend.endpoint()) as client:
        states = {s.version: s.state for s in client.model_status("hpt")}
    assert states.get(1) == "AVAILABLE" and states.get(2) != "AVAILABLE"

    with pytest.raises(DeadlineExceeded, match=r"versions \[7\] not AVAILABLE"):
        backend.apply_config(single_model_config("hpt", base, [1, 7], {"stable": 1}), timeout_s=2)


@pytest.mark.docker
@pytest.mark.slow
def test_managed_staging_and_production_containers_serve_promote_roll_back_and_go_away(
        docker_engine, local_images, tmp_path, make_base_path, half_plus_two_dir, half_plus_three_dir):
    """The server image (TF Serving's layout, the embedded server inside) started by the backend as it would start
    tensorflow/serving: one container per instance, on the host's network (the private daemon has no bridge), as
    the models' owner, read-only, no capabilities. Staging serves the candidate; production serves it under
    ``canary`` beside ``stable``, then rolls it back."""
    import numpy as np

    from pipeline.serving.client import ServingClient

    engine = docker_engine.client()
    base = make_base_path("hpt", {1: half_plus_two_dir, 2: half_plus_three_dir})  # under the backends' models dir
    x = np.array([4.0, 6.0], dtype=np.float32)  # y = x / 2 + 2 (version 1), x / 2 + 3 (version 2)

    def predict(endpoint: Any, label: str) -> list[float]:
        with ServingClient.for_endpoint(endpoint) as client:
            return client.predict("hpt", inputs=x, label=label)["y"].tolist()

    backends = {}
    for instance in ("staging", "production"):
        rest_port, grpc_port = free_ports(2)
        backends[instance] = make_backend(instance, {
            "backend": "docker", "rest_port": rest_port, "grpc_port": grpc_port, "image": local_images.tfserving,
            "network": "host", "docker_url": docker_engine.url,
            "container_name": f"pipeline-test-{instance}-{tmp_path.name}"}, get_paths(tmp_path))
    staging, production = backends["staging"], backends["production"]
    try:
        endpoints = {name: backend.start(timeout_s=_ENGINE_START_S) for name, backend in backends.items()}
        assert production.start(timeout_s=30) == endpoints["production"]  # idempotent: the container is reused
        staging.apply_config(single_model_config("hpt", base, [2], {"stable": 2}), timeout_s=120)
        production.apply_config(single_model_config("hpt", base, [1, 2], {"stable": 1, "canary": 2}), timeout_s=120)
        assert predict(endpoints["staging"], "stable") == [5.0, 6.0]
        assert (predict(endpoints["production"], "stable"), predict(endpoints["production"], "canary")) == (
            [4.0, 5.0], [5.0, 6.0])
        production.apply_config(single_model_config("hpt", base, [1], {"stable": 1}), timeout_s=120)  # rollback
        assert predict(endpoints["production"], "stable") == [4.0, 5.0]
        for backend in backends.values():
            assert engine.containers.get(backend.container_name).status == "running"
    finally:
        for backend in backends.values():
            backend.stop()
    names = {backend.container_name for backend in backends.values()}
    assert not any(backend.is_running() for backend in backends.values())
    assert not [c for c in engine.containers.list(all=True) if c.name in names]
    production.stop()  # idempotent
