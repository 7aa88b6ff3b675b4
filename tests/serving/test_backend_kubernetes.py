"""The kubernetes backend: its spec, no-cluster errors, apply_config against a fake API, and a real cluster.

The fake API stands in for the API server only: it keeps the ConfigMap and the Deployment, and "projects"
the patched ConfigMap into the file a live (embedded, TF-Serving-compatible) server polls, as the kubelet
does; the backend then has to see the change through that server's REST status, as it sees a pod's through
the API server's pod proxy. A real cluster is used where a kubeconfig loads (``@pytest.mark.k8s``).
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, SourceUnavailable
from pipeline.serving.backends import kubernetes as k8s_backend
from pipeline.serving.backends import make_backend
from pipeline.serving.backends.base import Endpoint
from pipeline.serving.served import rest_status_getter
from pipeline.settings import REPO_ROOT, get_paths
from pipeline.wire.model_config import ModelServerConfig, format_config, single_model_config, write_config


def _backend(home: Path, **spec: Any) -> k8s_backend.KubernetesBackend:
    return make_backend("production", {"backend": "kubernetes", **spec}, get_paths(home))  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_bad_spec_names_the_instance_and_field(tmp_path):
    with pytest.raises(ConfigError, match=r"instances\.production\.apply_mode"):
        _backend(tmp_path, apply_mode="sometimes")
    with pytest.raises(ConfigError, match=r"instances\.production\.image"):
        _backend(tmp_path, image="tensorflow/serving:2.19.0")  # a docker field


def test_defaults_follow_the_manifests_names(tmp_path):
    backend = _backend(tmp_path)
    assert (backend.deployment, backend.service, backend.configmap) == (
        "tfserving-production", "tfserving-production", "tfserving-production-config")
    assert backend._endpoint() == Endpoint("tfserving-production.mlops.svc.cluster.local", 8501, 8500)
    assert backend.config_path == tmp_path / "serving" / "production" / "models.config"


def test_no_kubeconfig_is_reported_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "no-such-kubeconfig"
    with pytest.raises(SourceUnavailable, match=f"kubeconfig {missing}"):
        k8s_backend.connect_kubernetes(str(missing))
    monkeypatch.setenv("KUBECONFIG", str(missing))
    backend = _backend(tmp_path)
    assert not backend.is_running()
    with pytest.raises(SourceUnavailable, match=str(missing)):
        backend.start(timeout_s=1)


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def test_an_unreachable_api_server_is_reported_naming_it(tmp_path):
    server = f"http://127.0.0.1:{_free_port()}"
    api = k8s_backend.connect_kubernetes(str(_kubeconfig(tmp_path / "config", server)))
    api.configuration.retries = 0
    with pytest.raises(SourceUnavailable, match=f"{server}.*unreachable"):
        k8s_backend.ping_kubernetes(api)


class FakeCluster:
    """The API objects the backend touches, as plain data; ``on_configmap`` plays the kubelet."""

    def __init__(self, on_configmap: Any = None, rollout_reads: int = 2):
        self.configmaps: dict[str, dict[str, str]] = {}
        self.replicas = 1
        self.generation = 1
        self.annotations: dict[str, str] = {}
        self.rollout_reads = rollout_reads  # reads of the Deployment before a rollout reports done
        self.on_configmap = on_configmap
        self.calls: list[str] = []

    def deployment(self) -> Any:
        done = self.rollout_reads <= 0
        self.rollout_reads -= 1
        observed = self.generation if done else self.generation - 1
        status = SimpleNamespace(observed_generation=observed, updated_replicas=self.replicas,
                                 ready_replicas=self.replicas, replicas=self.replicas)
        return SimpleNamespace(
            metadata=SimpleNamespace(generation=self.generation),
            spec=SimpleNamespace(replicas=self.replicas, selector=SimpleNamespace(match_labels={"app": "tfs"})),
            status=status,
        )

    # AppsV1Api / CoreV1Api methods, as the backend calls them
    def read_namespaced_deployment(self, name: str, namespace: str) -> Any:
        return self.deployment()

    def patch_namespaced_deployment(self, name: str, namespace: str, body: dict) -> None:
        self.calls.append("restart")
        self.annotations.update(body["spec"]["template"]["metadata"]["annotations"])
        self.generation += 1
        self.rollout_reads = 2

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: dict) -> None:
        self.calls.append(f"scale {body['spec']['replicas']}")
        self.replicas = body["spec"]["replicas"]

    def patch_namespaced_config_map(self, name: str, namespace: str, body: dict) -> None:
        self.calls.append(f"configmap {name}")
        self.configmaps[name] = body["data"]
        if self.on_configmap:
            self.on_configmap(body["data"])

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        assert label_selector == "app=tfs"
        running = SimpleNamespace(metadata=SimpleNamespace(name="tfs-0", deletion_timestamp=None),
                                  status=SimpleNamespace(phase="Running"))
        return SimpleNamespace(items=[running] if self.replicas else [])


@pytest.fixture
def fake_api(monkeypatch) -> Any:
    """Install a FakeCluster behind the kubernetes client's API classes; returns a factory."""
    from kubernetes import client

    monkeypatch.setattr(k8s_backend, "_POLL_INTERVAL_S", 0.05)

    def install(backend: k8s_backend.KubernetesBackend, cluster: FakeCluster) -> FakeCluster:
        monkeypatch.setattr(client, "AppsV1Api", lambda api: cluster)
        monkeypatch.setattr(client, "CoreV1Api", lambda api: cluster)
        backend._api = SimpleNamespace(configuration=SimpleNamespace(host="https://fake:6443"))
        return cluster

    return install


@pytest.mark.slow
@pytest.mark.parametrize("apply_mode", ["poll", "rollout"])
def test_apply_config_returns_once_the_pod_serves_the_configmap(
    tmp_path, serve, make_base_path, half_plus_two_dir, half_plus_three_dir, fake_api, monkeypatch, apply_mode
):
    base = make_base_path("hpt", {1: half_plus_two_dir, 2: half_plus_three_dir})
    pod_file = tmp_path / "pod" / "models.config"  # what the kubelet projects into the pod
    write_config(pod_file, ModelServerConfig())
    server = serve(model_config_file=str(pod_file), model_config_file_poll_wait_seconds=0.2,
                   allow_version_labels_for_unavailable_models=True)
    backend = _backend(tmp_path, apply_mode=apply_mode, propagation_s=0, poll_wait_s=1)
    cluster = fake_api(backend, FakeCluster(on_configmap=lambda data: pod_file.write_text(data["models.config"])))
    endpoint = Endpoint("127.0.0.1", server.rest_port, server.grpc_port)
    monkeypatch.setattr(backend, "pod_status_getter", lambda pod: rest_status_getter(endpoint.rest_url))

    config = single_model_config("hpt", base, [1, 2], {"stable": 1, "canary": 2})
    backend.apply_config(config, timeout_s=60)
    assert cluster.configmaps["tfserving-production-config"]["models.config"] == format_config(config)
    assert ("restart" in cluster.calls) is (apply_mode == "rollout")

    # rollback: back once version 2 is unloaded on the pod
    backend.apply_config(single_model_config("hpt", base, [1], {"stable": 1}), timeout_s=60)


def test_apply_config_names_what_the_pods_never_picked_up(tmp_path, fake_api, monkeypatch):
    backend = _backend(tmp_path, propagation_s=0, poll_wait_s=1)
    fake_api(backend, FakeCluster())  # the kubelet never delivers: e.g. a subPath mount
    monkeypatch.setattr(backend, "pod_status_getter", lambda pod: lambda path: (404, None))
    config = single_model_config("hpt", "/models/hpt", [3])
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"tfs-0: hpt: status HTTP 404.*subPath"):
        backend.apply_config(config, timeout_s=1)
    assert time.monotonic() - started >= 2  # timeout + poll_wait_s


def test_start_and_stop_scale_a_managed_deployment(tmp_path, fake_api):
    backend = _backend(tmp_path, manage=True, replicas=2, manifests=["k8s/base/tfserving-production.yaml"])
    cluster = fake_api(backend, FakeCluster(rollout_reads=0))
    backend.stop()
    assert cluster.calls == ["scale 0"] and not backend.is_running()
    backend.start(timeout_s=5)
    assert cluster.calls == ["scale 0", "scale 2"] and backend.is_running()

    attached = _backend(tmp_path)  # not managed: the pipeline never scales it
    fake_api(attached, cluster)
    attached.stop()
    assert cluster.calls == ["scale 0", "scale 2"]


def test_start_without_the_deployment_says_how_to_create_it(tmp_path, fake_api):
    from kubernetes.client.exceptions import ApiException

    backend = _backend(tmp_path)
    cluster = fake_api(backend, FakeCluster())

    def missing(name: str, namespace: str) -> Any:
        raise ApiException(status=404, reason="Not Found")

    cluster.read_namespaced_deployment = missing
    with pytest.raises(NotFound, match="kubectl apply -k k8s/overlays"):
        backend.start(timeout_s=1)
    with pytest.raises(ConfigError, match="no manifests"):
        _managed = _backend(tmp_path, manage=True)
        fake_api(_managed, cluster)
        _managed.start(timeout_s=1)


@pytest.fixture
def cluster_api() -> Any:
    try:
        api = k8s_backend.connect_kubernetes()
        k8s_backend.ping_kubernetes(api)
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    return api


@pytest.mark.k8s
@pytest.mark.slow
def test_a_real_deployment_starts_applies_and_scales_down(cluster_api, tmp_path):
    from kubernetes import client

    namespace = f"pipeline-test-{uuid.uuid4().hex[:8]}"
    manifest = tmp_path / "staging.yaml"
    docs = list(yaml.safe_load_all((REPO_ROOT / "k8s" / "base" / "tfserving-staging.yaml").read_text()))
    pod = docs[1]["spec"]["template"]["spec"]
    pod["volumes"][0] = {"name": "models", "emptyDir": {}}  # no RWX claim in a throwaway namespace
    manifest.write_text(yaml.safe_dump_all(docs))
    core = client.CoreV1Api(cluster_api)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        backend = make_backend("staging", {"backend": "kubernetes", "namespace": namespace, "manage": True,
                                           "manifests": [str(manifest)], "propagation_s": 120},
                               get_paths(tmp_path))
        backend.start(timeout_s=300)
        assert backend.is_running()
        backend.apply_config(ModelServerConfig(), timeout_s=60)
        data = core.read_namespaced_config_map("tfserving-staging-config", namespace).data
        assert data["models.config"] == backend.config_path.read_text()
        backend.stop()
        deployment = client.AppsV1Api(cluster_api).read_namespaced_deployment("tfserving-staging", namespace)
        assert deployment.spec.replicas == 0
    finally:
        core.delete_namespace(namespace)
