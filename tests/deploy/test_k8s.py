"""k8s/: every manifest is a valid Kubernetes object, and the pieces fit the pipeline and each other.

Validity: each object goes through the kubernetes client's own deserializer into its model class (required
fields, types) and back; the round trip must give the manifest unchanged, so a misspelt or misplaced field
(which the deserializer would drop) fails. Overlays are rendered with `kubectl kustomize` (no cluster needed);
without kubectl those tests skip naming it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from pipeline import containers
from pipeline.serving.profiles import load_profile
from pipeline.settings import REPO_ROOT
from pipeline.wire.model_config import parse_config
from tests.deploy.policies import may_connect

_K8S = REPO_ROOT / "k8s"
_BASE_FILES = sorted((_K8S / "base").glob("*.yaml"))
_OVERLAYS = ("local", "production")
_api = ApiClient()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _model_name(doc: dict[str, Any]) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment`` (the client's class name)."""
    version = doc["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def _round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("apiVersion", "").startswith("kustomize.config.k8s.io"):
        return doc
    model = _api._ApiClient__deserialize(doc, _model_name(doc))
    return _api.sanitize_for_serialization(model)


@pytest.fixture(scope="module", params=_OVERLAYS)
def rendered(request) -> list[dict[str, Any]]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    result = subprocess.run(["kubectl", "kustomize", str(_K8S / "overlays" / request.param)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("path", _BASE_FILES + [_K8S / "training-pod.yaml"], ids=lambda p: p.name)
def test_every_manifest_deserializes_into_the_client_models_unchanged(path):
    for doc in _docs(path):
        assert _round_trip(doc) == doc, f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"


def test_the_round_trip_catches_a_misplaced_field():
    doc = _docs(_K8S / "base" / "tfserving-staging.yaml")[1]
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 8500}}
    assert _round_trip(doc) != doc


def test_rendered_overlays_are_valid_namespaced_objects(rendered):
    kinds = {doc["kind"] for doc in rendered}
    assert {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Deployment", "Service",
            "HorizontalPodAutoscaler", "Role", "RoleBinding"} <= kinds
    for doc in rendered:
        assert _round_trip(doc) == doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "mlops"


@pytest.mark.parametrize("instance", ["staging", "production"])
def test_the_configmap_holds_a_model_server_config(rendered, instance):
    spec = load_profile("k8s").instance(instance).spec()
    configmap = _find(rendered, "ConfigMap", spec["configmap"])
    config = parse_config(configmap["data"][spec["config_key"]])
    assert config.HasField("model_config_list")  # empty until the first version exists (see the manifest)


def _server(rendered: list[dict[str, Any]], deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _find(rendered, "Deployment", deployment)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize("instance", ["staging", "production"])
def test_the_deployment_serves_what_the_profile_expects(rendered, instance):
    spec = load_profile("k8s").instance(instance).spec()
    pod, container = _server(rendered, spec["deployment"])
    flags = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(name for name, v in volumes.items() if v.get("configMap", {}).get("name") == spec["configmap"])
    # A directory mount (no subPath), or the kubelet never refreshes the file the server polls.
    assert "subPath" not in mounts[config_volume]
    assert flags["model_config_file"] == f"{mounts[config_volume]['mountPath']}/{spec['config_key']}"
    assert int(flags["model_config_file_poll_wait_seconds"]) == spec["poll_wait_s"]
    assert (int(flags["port"]), int(flags["rest_api_port"])) == (spec["grpc_port"], spec["rest_port"])
    # The models at the path Airflow writes them ($PIPELINE_HOME/models), read-only.
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == containers.CONTAINER_MODELS_DIR)
    assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "pipeline-models"
    assert "bash" in container["readinessProbe"]["exec"]["command"][0]
    assert "/v1/models/" in container["readinessProbe"]["exec"]["command"][-1]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = _find(rendered, "Service", spec["service"])
    template_labels = _find(rendered, "Deployment", spec["deployment"])["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {spec["grpc_port"], spec["rest_port"]}


def test_production_scales_with_an_hpa(rendered):
    hpa = _find(rendered, "HorizontalPodAutoscaler", "tfserving-production")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tfserving-production"}
    assert hpa["spec"]["scaleTargetRef"] == target
    deployment = _find(rendered, "Deployment", "tfserving-production")
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_the_role_allows_what_the_backend_does(rendered):
    rules = _find(rendered, "Role", "tfserving-release")["rules"]

    def allowed(resource: str, verb: str, name: str | None = None) -> bool:
        return any(resource in r["resources"] and verb in r["verbs"]
                   and (name is None or "resourceNames" not in r or name in r["resourceNames"]) for r in rules)

    for instance in ("staging", "production"):
        spec = load_profile("k8s").instance(instance).spec()
        assert allowed("configmaps", "patch", spec["configmap"])
    assert allowed("deployments", "patch") and allowed("deployments/scale", "patch")
    assert allowed("pods", "list") and allowed("pods/proxy", "get")
    subjects = {s["name"] for s in _find(rendered, "RoleBinding", "tfserving-release")["subjects"]}
    values = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())
    assert subjects == {values["scheduler"]["serviceAccount"]["name"], values["workers"]["serviceAccount"]["name"]}


def test_every_claim_used_is_declared(rendered):
    declared = {d["metadata"]["name"] for d in rendered if d["kind"] == "PersistentVolumeClaim"}
    pod = containers.load_pod_template(_K8S / "training-pod.yaml")
    values = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())
    used = {v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim}
    used |= {v["persistentVolumeClaim"]["claimName"] for v in values["volumes"]}
    assert used and used <= declared


def test_the_helm_values_mount_our_dags_and_the_pipeline_volumes():
    values = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())
    assert values["dags"]["mountPath"] == values["config"]["core"]["dags_folder"] == "/opt/airflow/dags"
    assert values["dags"]["gitSync"]["subPath"] == "dags" and (REPO_ROOT / "dags").is_dir()
    assert "COPY --chown=airflow:0 dags /opt/airflow/dags" in (REPO_ROOT / "Dockerfile").read_text()
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["PIPELINE_SERVING_PROFILE"] == "k8s" and load_profile("k8s").instances
    assert env["PIPELINE_HOME"] == containers.CONTAINER_PIPELINE_HOME


def test_the_image_and_the_helm_values_load_the_models_pages_plugin():
    values = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())
    assert values["config"]["core"]["plugins_folder"] == "/opt/airflow/plugins"
    assert "COPY --chown=airflow:0 plugins /opt/airflow/plugins" in (REPO_ROOT / "Dockerfile").read_text()
    assert (REPO_ROOT / "plugins" / "pipeline_ui.py").is_file()
    extra = yaml.safe_load(values["extraEnv"])
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in extra}
    assert set(secrets) == {"PIPELINE_AIRFLOW_API_USERNAME", "PIPELINE_AIRFLOW_API_PASSWORD"}
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["PIPELINE_AIRFLOW_API_URL"].startswith("http://airflow-api-server")
    mounts = {m["mountPath"] for m in values["volumeMounts"]}
    assert {containers.CONTAINER_PIPELINE_HOME, containers.CONTAINER_MODELS_DIR} <= mounts
    assert values["airflowVersion"] == "3.3.2"
    for secret in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[secret]  # secrets by reference; none committed
    assert "fernetKey" not in values and "jwtSecret" not in values


def test_the_training_pod_template_is_what_kubernetes_pod_operator_expects():
    pod = containers.load_pod_template(_K8S / "training-pod.yaml")
    assert pod.spec.containers[0].name == "base"  # the operator's name for the main container
    assert pod.spec.restart_policy == "Never"
    mounts = {m.mount_path for m in pod.spec.containers[0].volume_mounts}
    assert {containers.CONTAINER_PIPELINE_HOME, containers.CONTAINER_MODELS_DIR} <= mounts


# ---- hardening: who reaches the servers, and with what privileges everything runs ------------------------------

_KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")  # as tests/k8s/test_gateway_api.py: the oldest we claim, a recent one
_SERVING_CLIENT = {"mlops-pipeline/serving-client": "true"}
_CAPTURE_CLIENT = {"mlops-pipeline/capture-client": "true"}


def _pod_labels(rendered: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return dict(_find(rendered, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


def _policies(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in rendered if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("version", _KUBERNETES_VERSIONS)
def test_every_object_validates_strictly_against_kubernetes(rendered, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                              "(pip install kubernetes-validate)")
    for doc in rendered + _docs(_K8S / "training-pod.yaml"):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_tf_serving_and_capture_are_reachable_only_by_the_pipelines_pods(rendered):
    policies = _policies(rendered)
    values = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())
    airflow = {**values["labels"], "tier": "airflow", "component": "worker"}  # the chart's labels on a task pod
    training = dict(containers.load_pod_template(_K8S / "training-pod.yaml").metadata.labels)
    stranger = {"app": "anything-else"}
    servers = [_pod_labels(rendered, f"tfserving-{instance}") for instance in ("staging", "production", "canary")]
    for server in servers:
        for port in (8500, 8501):
            assert may_connect(policies, server, airflow, port)  # its tasks change and probe what they serve
            assert may_connect(policies, server, _pod_labels(rendered, "capture"), port)
            assert may_connect(policies, server, _pod_labels(rendered, "prometheus"), port)
            for outsider in (stranger, training, server):
                assert not may_connect(policies, server, outsider, port), (server, outsider, port)
            assert not may_connect(policies, server, airflow, port, same_namespace=False)  # the label elsewhere
        assert not may_connect(policies, server, airflow, 22)  # only TF Serving's ports
    capture = _pod_labels(rendered, "capture")
    assert may_connect(policies, capture, airflow, 8701)
    assert may_connect(policies, capture, _pod_labels(rendered, "prometheus"), 8701)
    assert not may_connect(policies, capture, stranger, 8701) and not may_connect(policies, capture, servers[1], 8701)
    # The labels the policies trust are on the pipeline's pods only.
    assert _SERVING_CLIENT.items() <= airflow.items() and _CAPTURE_CLIENT.items() <= airflow.items()
    assert not any(_SERVING_CLIENT.items() <= server.items() for server in servers)


def test_the_policy_check_catches_an_open_server(rendered):
    opened = [{**p, "spec": {**p["spec"], "ingress": [{}]}} if p["metadata"]["name"] == "tfserving" else p
              for p in _policies(rendered)]
    assert may_connect(opened, _pod_labels(rendered, "tfserving-production"), {"app": "anything-else"}, 8500)
    assert not may_connect(_policies(rendered), _pod_labels(rendered, "tfserving-production"),
                           {"app": "anything-else"}, 8500)


def _pods(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec we ship: the Deployments' templates and the training pod."""
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in rendered if d["kind"] == "Deployment"}
    pods["training"] = _docs(_K8S / "training-pod.yaml")[0]["spec"]
    return pods


def test_every_workload_runs_non_root_read_only_without_privileges(rendered):
    pods = _pods(rendered)
    assert {"tfserving-staging", "tfserving-production", "tfserving-canary", "capture", "prometheus",
            "training"} <= set(pods)
    for name, pod in pods.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security["readOnlyRootFilesystem"] is True, name
            # A read-only root needs its scratch space on a volume.
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts or name == "prometheus", name
        if name.startswith("tfserving-"):
            assert pod["automountServiceAccountToken"] is False  # it needs no API access


def test_airflows_pods_run_non_root_without_privileges():
    contexts = yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())["securityContexts"]
    assert contexts["pod"]["runAsNonRoot"] is True and contexts["pod"]["runAsUser"] == 50000
    assert contexts["pod"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert contexts["containers"]["allowPrivilegeEscalation"] is False
    assert contexts["containers"]["capabilities"] == {"drop": ["ALL"]}


def test_capture_asks_the_canary_instance_and_production_for_stable(rendered):
    """Outside a live canary the canary instance has no stable label: production's answer is stable's, so the
    production monitor has predictions to judge."""
    (container,) = _find(rendered, "Deployment", "capture")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--serving-url") + 1] == "http://tfserving-canary:8501"
    assert args[args.index("--stable-url") + 1] == "http://tfserving-production:8501"
    assert _find(rendered, "Service", "tfserving-production")
