"""The live canary on Kubernetes: its manifests (canary TF Serving, capture service, Prometheus, the Gateway API routes
in k8s/components/gateway-api) and the router that moves live traffic on them (pipeline.live.gateway_api).

Validity: core objects go through `kubernetes-validate`'s strict schemas (unknown fields fail); Gateway API objects
through the schemas the Gateway API's CRDs publish (@kubernetes-models/gateway-api, installed with `npm ci` from
tests/k8s/gateway-api-schema's lockfile), and, because CRD schemas let unknown fields through (the API server drops
them), through a whitelist of the gateway.networking.k8s.io/v1 fields these manifests use. Overlays with the component
are rendered by `kubectl kustomize`. Each missing tool skips its tests, naming it. The router runs against an
in-memory API server and Gateway controller; a real cluster is used where a kubeconfig loads and
$PIPELINE_TEST_GATEWAY_CLASS names a GatewayClass to test with.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.embedded_server.metrics import parse_monitoring_config, prometheus_path
from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, SourceUnavailable
from pipeline.live import gateway_api
from pipeline.live.endpoints import TrafficConfig, TrafficSplit
from pipeline.live.gateway_api import Backends, GatewayApiRouter, route_acceptance, route_split, split_patch
from pipeline.settings import REPO_ROOT, get_paths
from tests.deploy.policies import may_connect

_K8S = REPO_ROOT / "k8s"
_COMPONENT = _K8S / "components" / "gateway-api"
_SCHEMA_TOOL = Path(__file__).parent / "gateway-api-schema"
_GATEWAY_CLASS = "example-gateway-class"
_KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")  # the oldest we claim and a recent one
_PREDICTION = "tensorflow.serving.PredictionService"
_ALLOWED_GRPC = {(_PREDICTION, m) for m in ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")}
_ALLOWED_GRPC.add(("tensorflow.serving.ModelService", "GetModelStatus"))
_INFERENCE_GRPC = {(_PREDICTION, m) for m in ("Predict", "Classify", "Regress", "MultiInference")}


def _component_docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((_COMPONENT / "gateway-api.yaml").read_text()) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# ---- rendering ---------------------------------------------------------------------------------------------------


def _render_with_gateway(overlay: str, work: Path) -> list[dict[str, Any]]:
    """``k8s/overlays/<overlay>`` plus the Gateway API component, as the component's kustomization.yaml tells."""
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    work.mkdir(parents=True)
    (work / "gateway-parameters.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "gateway-parameters", "annotations": {"config.kubernetes.io/local-config": "true"}},
        "data": {"gatewayClassName": _GATEWAY_CLASS},
    }))
    (work / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(_K8S / "overlays" / overlay, work), "gateway-parameters.yaml"],
        "components": [os.path.relpath(_COMPONENT, work)],
    }))
    result = subprocess.run(["kubectl", "kustomize", str(work)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=["local", "production"])
def rendered(request, tmp_path_factory) -> list[dict[str, Any]]:
    return _render_with_gateway(request.param, tmp_path_factory.mktemp("overlay") / request.param)


def test_the_component_refuses_to_render_without_a_gateway_class(tmp_path):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(_K8S / "overlays" / "local", tmp_path)],
        "components": [os.path.relpath(_COMPONENT, tmp_path)],
    }))
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "gateway-parameters" in result.stderr


def test_the_gateway_class_comes_from_the_overlay_and_the_parameters_are_never_applied(rendered):
    assert _one(rendered, "Gateway")["spec"]["gatewayClassName"] == _GATEWAY_CLASS
    assert not [d for d in rendered if d["metadata"]["name"] == "gateway-parameters"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == TrafficConfig().namespace


def test_the_gateways_data_plane_reaches_production_canary_and_capture_only(rendered):
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    gateway = dict(_one(rendered, "Gateway")["spec"]["infrastructure"]["labels"])
    assert gateway == {"mlops-pipeline/gateway": "production-endpoint"}

    def pod(deployment: str) -> dict[str, str]:
        return dict(_one(rendered, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])

    # Its pods may run in the controller's namespace.
    for instance in ("production", "canary"):
        for port in (8500, 8501):
            assert may_connect(policies, pod(f"tfserving-{instance}"), gateway, port, same_namespace=False)
    assert may_connect(policies, pod("capture"), gateway, 8701, same_namespace=False)
    for port in (8500, 8501):
        assert not may_connect(policies, pod("tfserving-staging"), gateway, port, same_namespace=False)
        assert not may_connect(policies, pod("tfserving-production"), {"app": "client"}, port, same_namespace=False)


# ---- core objects: kubernetes-validate --------------------------------------------------------------------------


def _core(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if not d["apiVersion"].startswith(gateway_api.GROUP)]


@pytest.mark.parametrize("version", _KUBERNETES_VERSIONS)
def test_core_objects_validate_strictly(rendered, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                              "(pip install kubernetes-validate)")
    for doc in _core(rendered):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("version", _KUBERNETES_VERSIONS)
def test_the_training_pod_template_validates_strictly(version):
    """k8s/training-pod.yaml is applied by KubernetesPodOperator, not kustomize: checked on its own."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                              "(pip install kubernetes-validate)")
    pod = yaml.safe_load((_K8S / "training-pod.yaml").read_text())
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"training-pod.yaml against {version}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_strict_validation_catches_a_misplaced_field(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                              "(pip install kubernetes-validate)")
    deployment = copy.deepcopy(_one(rendered, "Deployment", "tfserving-canary"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 8500}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, _KUBERNETES_VERSIONS[0], strict=True)


# ---- Gateway API objects: the published schema, and the fields we use -------------------------------------------


def _npm_failed_offline(output: str) -> bool:
    return bool(re.search(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH", output))


@pytest.fixture(scope="module")
def schema_validator() -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Runs tests/k8s/gateway-api-schema/validate.mjs on objects; installed once per lockfile under the cache."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed: the Gateway API schema check needs them (apt-get install npm)")
    lock = (_SCHEMA_TOOL / "package-lock.json").read_bytes()
    target = get_paths().cache_dir / "npm-tools" / f"gateway-api-schema-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (target / "node_modules").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".install-"))
        for name in ("package.json", "package-lock.json"):
            shutil.copy(_SCHEMA_TOOL / name, staging / name)
        result = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=staging,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            if _npm_failed_offline(result.stdout + result.stderr):
                pytest.skip(f"the npm registry is unreachable: {result.stderr.strip()[-300:]}")
            pytest.fail(f"npm ci in {_SCHEMA_TOOL}: {result.stderr.strip()[-2000:]}")
        try:
            staging.rename(target)  # whole or not at all: a half-done install is never mistaken for one
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another run got there first
    shutil.copy(_SCHEMA_TOOL / "validate.mjs", target / "validate.mjs")

    def validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result = subprocess.run(["node", "validate.mjs"], cwd=target, input=json.dumps(objects), capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    return validate


def test_gateway_api_objects_match_the_published_schema(schema_validator):
    docs = _component_docs()
    results = schema_validator(docs)
    assert [(r["kind"], r["name"]) for r in results] == [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert all(not r["errors"] for r in results), results


def test_the_published_schema_catches_bad_weights_and_percents(schema_validator):
    http_route, grpc_route = copy.deepcopy(_component_docs()[1:])
    http_route["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"] = 101
    grpc_route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 2.5
    errors = [r["errors"] for r in schema_validator([http_route, grpc_route])]
    assert "percent must be <= 100" in " ".join(errors[0])
    assert "weight must be integer" in " ".join(errors[1])


# The gateway.networking.k8s.io/v1 fields these manifests use, as the Gateway API v1.3 spec names them (HTTPRoute,
# GRPCRoute, Gateway; RequestMirror's percent: GEP-3171, experimental in v1.2, standard in v1.3). A dict lists the
# keys an object may have, [node] is a list of node, None a scalar.
_PARENT_REF = dict.fromkeys(("group", "kind", "namespace", "name", "sectionName", "port"))
_OBJECT_REF = dict.fromkeys(("group", "kind", "namespace", "name", "port"))
_BACKEND_REF = {**_OBJECT_REF, "weight": None}
_MIRROR = {"type": None, "requestMirror": {"backendRef": _OBJECT_REF, "percent": None,
                                           "fraction": {"numerator": None, "denominator": None}}}
_ROUTE_META = {"name": None, "namespace": None, "labels": {}}
_SPEC_FIELDS: dict[str, Any] = {
    "Gateway": {"gatewayClassName": None, "infrastructure": {"labels": {}}, "listeners": [{
        "name": None, "hostname": None, "port": None, "protocol": None,
        "allowedRoutes": {"namespaces": {"from": None}, "kinds": [{"group": None, "kind": None}]}}]},
    "HTTPRoute": {"parentRefs": [_PARENT_REF], "hostnames": [None], "rules": [{
        "matches": [{"path": {"type": None, "value": None}, "method": None}],
        "filters": [_MIRROR], "backendRefs": [_BACKEND_REF]}]},
    "GRPCRoute": {"parentRefs": [_PARENT_REF], "hostnames": [None], "rules": [{
        "matches": [{"method": {"type": None, "service": None, "method": None}}],
        "filters": [_MIRROR], "backendRefs": [_BACKEND_REF]}]},
}


def _unknown_fields(value: Any, node: Any, path: str) -> list[str]:
    if isinstance(node, list):
        assert isinstance(value, list), f"{path}: expected a list"
        return [f for i, item in enumerate(value) for f in _unknown_fields(item, node[0], f"{path}[{i}]")]
    if isinstance(node, dict):
        assert isinstance(value, dict), f"{path}: expected an object"
        if not node:  # free-form (labels)
            return []
        return [f"{path}.{key}" for key in value if key not in node] + [
            f for key, item in value.items() if key in node for f in _unknown_fields(item, node[key], f"{path}.{key}")]
    assert not isinstance(value, dict | list), f"{path}: expected a scalar"
    return []


def _unknown_in(doc: dict[str, Any]) -> list[str]:
    top = {"apiVersion": None, "kind": None, "metadata": _ROUTE_META, "spec": _SPEC_FIELDS[doc["kind"]]}
    return _unknown_fields(doc, top, doc["kind"])


def test_gateway_api_objects_use_only_fields_of_the_v1_spec():
    docs = _component_docs()
    assert {d["apiVersion"] for d in docs} == {f"{gateway_api.GROUP}/{gateway_api.VERSION}"}
    for doc in docs:
        assert _unknown_in(doc) == [], doc["kind"]


def test_the_field_check_catches_a_misplaced_field():
    route = _component_docs()[1]
    route["spec"]["rules"][0]["backendRefs"][0]["weigth"] = 1
    route["spec"]["rules"][0]["filters"][0]["requestMirror"]["percentage"] = 5
    assert sorted(_unknown_in(route)) == ["HTTPRoute.spec.rules[0].backendRefs[0].weigth",
                                          "HTTPRoute.spec.rules[0].filters[0].requestMirror.percentage"]


# ---- what the routes let through, and where they send it ---------------------------------------------------------


def _backends(rule: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {ref["name"]: (ref["port"], ref["weight"]) for ref in rule["backendRefs"]}


def _mirror_of(rule: dict[str, Any]) -> dict[str, Any] | None:
    mirrors = [f["requestMirror"] for f in rule.get("filters", []) if f["type"] == "RequestMirror"]
    assert len(mirrors) <= 1
    return mirrors[0] if mirrors else None


def test_the_routes_are_the_ones_the_profile_names_and_start_all_stable_unmirrored():
    config = TrafficConfig()
    http_route = _one(_component_docs(), "HTTPRoute")
    grpc_route = _one(_component_docs(), "GRPCRoute")
    assert (http_route["metadata"]["name"], grpc_route["metadata"]["name"]) == (config.http_route, config.grpc_route)
    assert {http_route["metadata"]["namespace"], grpc_route["metadata"]["namespace"]} == {config.namespace}
    for route in (http_route, grpc_route):
        assert route_split(route) == TrafficSplit(0, 0)  # what the router reads back from the manifests


def test_the_http_route_passes_only_the_v1_models_api_and_mirrors_only_inference():
    route = _one(_component_docs(), "HTTPRoute")
    methods = set()
    for rule in route["spec"]["rules"]:
        assert _backends(rule) == {"tfserving-production": (8501, 10000), "tfserving-canary": (8501, 0)}
        for match in rule["matches"]:
            assert match["path"] == {"type": "PathPrefix", "value": "/v1/models/"}
            methods.add(match["method"])
        mirror = _mirror_of(rule)
        if {m["method"] for m in rule["matches"]} == {"POST"}:
            assert mirror == {"backendRef": {"name": "capture", "port": 8701}, "percent": 0}
        else:
            assert mirror is None
    assert methods == {"GET", "POST"}


def test_the_grpc_route_passes_prediction_and_status_never_the_reload_rpc():
    route = _one(_component_docs(), "GRPCRoute")
    passed = set()
    for rule in route["spec"]["rules"]:
        assert _backends(rule) == {"tfserving-production": (8500, 10000), "tfserving-canary": (8500, 0)}
        matched = set()
        for match in rule["matches"]:
            method = match["method"]
            # A match without a method would take every method of the service, HandleReloadConfigRequest included.
            assert method["type"] == "Exact" and method["service"] and method["method"]
            matched.add((method["service"], method["method"]))
        passed |= matched
        mirror = _mirror_of(rule)
        assert (mirror is not None) == (matched == _INFERENCE_GRPC)
        if mirror:
            assert mirror == {"backendRef": {"name": "capture", "port": 8701}, "percent": 0}
    assert passed == _ALLOWED_GRPC
    assert ("tensorflow.serving.ModelService", "HandleReloadConfigRequest") not in passed


def test_each_route_attaches_to_a_listener_that_takes_its_kind_on_the_profile_port():
    docs = _component_docs()
    config = TrafficConfig()
    listeners = {listener["name"]: listener for listener in _one(docs, "Gateway")["spec"]["listeners"]}
    ports = {"HTTPRoute": config.rest_port, "GRPCRoute": config.grpc_port}
    for kind, port in ports.items():
        (parent,) = _one(docs, kind)["spec"]["parentRefs"]
        assert parent["name"] == _one(docs, "Gateway")["metadata"]["name"]
        listener = listeners[parent["sectionName"]]
        assert listener["port"] == port and listener["protocol"] == "HTTP"
        assert listener["allowedRoutes"]["kinds"] == [{"kind": kind}]


def test_every_backend_is_a_service_with_that_port(rendered):
    services = {d["metadata"]["name"]: {p["port"]: p for p in d["spec"]["ports"]}
                for d in rendered if d["kind"] == "Service"}
    for kind in ("HTTPRoute", "GRPCRoute"):
        for rule in _one(rendered, kind)["spec"]["rules"]:
            refs = rule["backendRefs"] + [m["backendRef"] for m in [_mirror_of(rule)] if m]
            for ref in refs:
                assert ref["port"] in services[ref["name"]], f"{kind}: Service {ref['name']} port {ref['port']}"
                if kind == "GRPCRoute" and ref["name"].startswith("tfserving-"):
                    assert services[ref["name"]][ref["port"]]["appProtocol"] == "kubernetes.io/h2c"


def test_the_pipeline_may_patch_the_routes_and_the_canary_config(rendered):
    rules = _one(rendered, "Role", "tfserving-release")["rules"]

    def allowed(group: str, resource: str, verb: str, name: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   and name in r.get("resourceNames", [name]) for r in rules)

    config = TrafficConfig()
    for resource, name in (("httproutes", config.http_route), ("grpcroutes", config.grpc_route)):
        assert allowed(gateway_api.GROUP, resource, "get", name) and allowed(gateway_api.GROUP, resource, "patch", name)
    assert allowed("", "configmaps", "patch", "tfserving-canary-config")


# ---- the canary instance, capture, monitoring --------------------------------------------------------------------


def _pod(rendered: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    return dict(_one(rendered, "Deployment", deployment)["spec"]["template"])


def test_the_canary_serves_like_production_from_its_own_config(rendered):
    production, canary = _pod(rendered, "tfserving-production"), _pod(rendered, "tfserving-canary")
    prod_container, canary_container = production["spec"]["containers"][0], canary["spec"]["containers"][0]
    assert canary_container["image"] == prod_container["image"]
    assert canary_container["args"] == prod_container["args"]  # same flags, same mount paths
    volumes = {v["name"]: v for v in canary["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "tfserving-canary-config"
    assert volumes["models"] == {v["name"]: v for v in production["spec"]["volumes"]}["models"]  # same models
    service = _one(rendered, "Service", "tfserving-canary")
    assert service["spec"]["selector"].items() <= canary["metadata"]["labels"].items()
    assert not service["spec"]["selector"].items() <= production["metadata"]["labels"].items()


@pytest.mark.parametrize("instance", ["staging", "production", "canary"])
def test_tf_serving_exports_prometheus_metrics_where_the_scrape_looks(rendered, instance):
    pod = _pod(rendered, f"tfserving-{instance}")
    container = pod["spec"]["containers"][0]
    flags = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
    mount = next(m for m in container["volumeMounts"] if flags["monitoring_config_file"].startswith(m["mountPath"]))
    configmap_name = {v["name"]: v for v in pod["spec"]["volumes"]}[mount["name"]]["configMap"]["name"]
    key = flags["monitoring_config_file"][len(mount["mountPath"]) + 1:]
    text = _one(rendered, "ConfigMap", configmap_name)["data"][key]
    assert prometheus_path(parse_monitoring_config(text)) == pod["metadata"]["annotations"]["prometheus.io/path"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert "http" in {p["name"] for p in container["ports"]}


def test_capture_runs_the_pipeline_image_against_the_canary(rendered):
    pod = _pod(rendered, "capture")
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in yaml.safe_load((_K8S / "airflow" / "values.yaml").read_text())["env"]}
    assert container["image"] == env["PIPELINE_IMAGE"]  # the image Airflow's pods run
    assert container["command"] + container["args"] == [
        "pipeline", "capture-serve", "--host", "0.0.0.0", "--port", "8701", "--serving-url",
        "http://tfserving-canary:8501", "--stable-url", "http://tfserving-production:8501"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8701}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = {v["name"]: v for v in pod["spec"]["volumes"]}[mounts["/opt/pipeline/var"]]["persistentVolumeClaim"]
    assert claim["claimName"] == "pipeline-home"  # where the release's analysis reads the captures


# ---- Prometheus: promtool, and what its relabelling keeps ---------------------------------------------------------


def _prometheus_config(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = _one(rendered, "ConfigMap", "prometheus-config")
    deployment = _one(rendered, "Deployment", "prometheus")
    assert {v.get("configMap", {}).get("name") for v in deployment["spec"]["template"]["spec"]["volumes"]} >= {
        configmap["metadata"]["name"]}
    return dict(yaml.safe_load(configmap["data"]["prometheus.yml"]))


def test_promtool_accepts_the_prometheus_config(tmp_path):
    """promtool checks everything but the Kubernetes discovery (Debian's promtool is built without it), which
    is swapped for a static target; the discovery blocks are checked below."""
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    config = yaml.safe_load((_K8S / "base" / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": ["mlops"]}}]
        job["static_configs"] = [{"targets": ["pod.example:8501"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"scrape_configs": [{"job_name": "x", "relabel_configs": [
        {"source_labels": ["a"], "regex": "(", "action": "keep"}]}]}))
    bad = subprocess.run(["promtool", "check", "config", str(tmp_path / "bad.yml")], capture_output=True, timeout=60)
    assert bad.returncode != 0


def _meta_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _pod_targets(pod: dict[str, Any], ip: str) -> list[dict[str, str]]:
    """What Prometheus' pod discovery yields for a pod template: one target per container port."""
    labels = {f"__meta_kubernetes_pod_label_{_meta_name(k)}": v for k, v in pod["metadata"]["labels"].items()}
    labels |= {f"__meta_kubernetes_pod_annotation_{_meta_name(k)}": v
               for k, v in pod["metadata"].get("annotations", {}).items()}
    labels["__meta_kubernetes_pod_name"] = f"{pod['metadata']['labels']['app.kubernetes.io/name']}-0"
    return [{**labels, "__address__": f"{ip}:{port['containerPort']}",
             "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
             "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}
            for container in pod["spec"]["containers"] for port in container.get("ports", [])]


def _relabel(target: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep and replace, the actions used): None when the target is dropped."""
    labels = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
                result = match.expand(replacement)
                if result:
                    labels[rule["target_label"]] = result
                else:
                    labels.pop(rule["target_label"], None)
        else:
            raise AssertionError(f"relabel action {action} not simulated")
    return labels


def test_prometheus_scrapes_each_tf_serving_and_capture_pod_once_on_its_metrics_path(rendered):
    jobs = {job["job_name"]: job for job in _prometheus_config(rendered)["scrape_configs"]}
    deployments = [d for d in rendered if d["kind"] == "Deployment"]
    scraped: dict[str, list[tuple[str, str, str]]] = {name: [] for name in jobs}
    for index, deployment in enumerate(deployments):
        for target in _pod_targets(deployment["spec"]["template"], f"10.0.0.{index}"):
            for name, job in jobs.items():
                kept = _relabel({**target, "__metrics_path__": job.get("metrics_path", "/metrics")},
                                job["relabel_configs"])
                if kept:
                    scraped[name].append((deployment["metadata"]["name"], kept["__address__"], kept["__metrics_path__"]))
    ip = {d["metadata"]["name"]: f"10.0.0.{index}" for index, d in enumerate(deployments)}
    assert sorted(scraped["tfserving"]) == [(name, f"{ip[name]}:8501", "/monitoring/prometheus/metrics")
                                            for name in ("tfserving-canary", "tfserving-production", "tfserving-staging")]
    assert scraped["capture"] == [("capture", f"{ip['capture']}:8701", "/metrics")]


# ---- pure functions: weights, patches, reading back ---------------------------------------------------------------


@pytest.mark.parametrize("percent, weights", [
    (0, (10000, 0)), (0.01, (9999, 1)), (12.34, (8766, 1234)), (33.333, (6667, 3333)), (50, (5000, 5000)),
    (100, (0, 10000)),
])
def test_weights_are_out_of_ten_thousand(percent, weights):
    assert gateway_api.backend_weights(percent) == weights


def _route(kind: str = "HTTPRoute", mirror: dict[str, Any] | None = None, weights: tuple[int, int] | None = None,
           extra_ref: bool = False) -> dict[str, Any]:
    refs: list[dict[str, Any]] = [{"name": "tfserving-production", "port": 8501},
                                  {"name": "tfserving-canary", "port": 8501}]
    if weights:
        refs[0]["weight"], refs[1]["weight"] = weights
    if extra_ref:
        refs.append({"name": "other", "port": 8501})
    rule: dict[str, Any] = {"backendRefs": refs}
    if mirror is not None:
        rule["filters"] = [{"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
                           {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "capture"}, **mirror}}]
    return {"kind": kind, "metadata": {"name": "r", "namespace": "mlops", "generation": 1},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "elsewhere"}]}, rule]}}


def test_the_patch_sets_both_weights_and_the_mirror_each_guarded_by_a_test():
    ops = split_patch(_route(mirror={"percent": 0}), TrafficSplit(12.34, 5))
    assert ops == [
        {"op": "test", "path": "/spec/rules/1/backendRefs/0/name", "value": "tfserving-production"},
        {"op": "add", "path": "/spec/rules/1/backendRefs/0/weight", "value": 8766},
        {"op": "test", "path": "/spec/rules/1/backendRefs/1/name", "value": "tfserving-canary"},
        {"op": "add", "path": "/spec/rules/1/backendRefs/1/weight", "value": 1234},
        {"op": "test", "path": "/spec/rules/1/filters/1/type", "value": "RequestMirror"},
        {"op": "add", "path": "/spec/rules/1/filters/1/requestMirror/percent", "value": 5},
    ]


def test_a_fraction_gives_way_to_the_percent():
    ops = split_patch(_route(mirror={"fraction": {"numerator": 1, "denominator": 1000}}), TrafficSplit(0, 10))
    assert {"op": "remove", "path": "/spec/rules/1/filters/1/requestMirror/fraction"} in ops
    assert ops[-1] == {"op": "add", "path": "/spec/rules/1/filters/1/requestMirror/percent", "value": 10}


@pytest.mark.parametrize("route, split, message", [
    (_route(mirror={"percent": 0}), TrafficSplit(10, 2.5), "whole percents"),
    (_route(), TrafficSplit(10, 5), "no RequestMirror filter"),
    (_route(extra_ref=True), TrafficSplit(10, 0), "expected exactly"),
    ({"kind": "HTTPRoute", "metadata": {}, "spec": {"rules": []}}, TrafficSplit(10, 0), "no rule routing"),
])
def test_a_split_the_route_cannot_hold_is_refused(route, split, message):
    with pytest.raises(ConfigError, match=message):
        split_patch(route, split)


@pytest.mark.parametrize("route, split", [
    (_route(mirror={"percent": 5}, weights=(8766, 1234)), TrafficSplit(12.34, 5)),
    (_route(), TrafficSplit(50, 0)),  # no weights: Gateway API's default 1 each
    (_route(mirror={}, weights=(1, 0)), TrafficSplit(0, 100)),  # a mirror without percent or fraction copies all
    (_route(mirror={"fraction": {"numerator": 25, "denominator": 1000}}, weights=(3, 1)), TrafficSplit(25, 2.5)),
])
def test_the_split_is_read_back_from_weights_and_mirror(route, split):
    assert route_split(route) == split


def test_rules_that_disagree_or_route_nowhere_are_reported():
    route = _route(weights=(1, 1))
    route["spec"]["rules"].append({"backendRefs": [{"name": "tfserving-production", "weight": 1},
                                                   {"name": "tfserving-canary", "weight": 0}]})
    with pytest.raises(ConfigError, match="disagree"):
        route_split(route)
    with pytest.raises(ConfigError, match="weight 0"):
        route_split(_route(weights=(0, 0)))


def _status(generation: int, accepted: str = "True", resolved: str = "True", **ref: Any) -> dict[str, Any]:
    return {"parentRef": {"group": gateway_api.GROUP, "kind": "Gateway", "namespace": "mlops", "name": "gw", **ref},
            "controllerName": "example.com/gateway-controller",
            "conditions": [
                {"type": "Accepted", "status": accepted, "reason": "Accepted" if accepted == "True" else "Nope",
                 "message": "why", "observedGeneration": generation},
                {"type": "ResolvedRefs", "status": resolved, "reason": "BackendNotFound", "message": "no svc",
                 "observedGeneration": generation}]}


@pytest.mark.parametrize("statuses, done", [
    ([], None),
    ([_status(1)], None),  # accepted, but an older generation
    ([_status(2, accepted="Unknown")], None),
    ([_status(2, name="other-gateway")], None),
    ([_status(2)], True),
    ([_status(3)], True),
])
def test_a_route_is_accepted_once_every_parent_accepted_its_generation(statuses, done):
    route = _route()
    route["status"] = {"parents": statuses}
    assert route_acceptance(route, 2)[0] is done


@pytest.mark.parametrize("status, reason", [(_status(2, accepted="False"), "Accepted=False, Nope: why"),
                                            (_status(2, resolved="False"), "ResolvedRefs=False, BackendNotFound")])
def test_a_refusal_of_the_generation_fails_at_once_with_its_reason(status, reason):
    route = _route()
    route["status"] = {"parents": [status]}
    with pytest.raises(ConfigError, match=re.escape(reason)):
        route_acceptance(route, 2)


# ---- the router against an in-memory API server and Gateway controller ------------------------------------------


class _PatchFailed(Exception):
    pass


def _pointer(document: Any, path: str) -> tuple[Any, Any]:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    for part in parents:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document, int(last) if isinstance(document, list) else last


def _apply_json_patch(document: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902's test, add, replace and remove (all a JSON Patch of the router holds); atomic like the API server."""
    patched = copy.deepcopy(document)
    for op in ops:
        try:
            parent, key = _pointer(patched, op["path"])
            if op["op"] == "test" and parent[key] != op["value"]:
                raise _PatchFailed(f"test of {op['path']} failed")
            if op["op"] in ("add", "replace"):
                parent[key] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise _PatchFailed(f"{op['path']}: {exc}") from None
    return patched


class FakeCluster:
    """The API server's custom objects (routes with generation) and a Gateway controller writing their status.

    The controller reports a change ``lag`` reads after it (never when ``lag`` is None), as ``verdict``.
    """

    def __init__(self, routes: list[dict[str, Any]], lag: int | None = 0, verdict: str = "True"):
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.lag, self.verdict = lag, verdict
        self.patches: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []
        self.before_patch: Callable[[dict[str, Any]], None] | None = None
        self._due: dict[tuple[str, str, str], int] = {}
        for route in routes:
            route = copy.deepcopy(route)
            route["metadata"]["generation"] = 1
            key = (route["kind"].lower() + "s", route["metadata"]["namespace"], route["metadata"]["name"])
            self.objects[key] = route
            self._report(route, "True")

    def _report(self, route: dict[str, Any], verdict: str) -> None:
        generation = route["metadata"]["generation"]
        route["status"] = {"parents": [
            _status(generation, accepted=verdict, **ref) for ref in route["spec"]["parentRefs"]]}

    def _lookup(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        assert (group, version) == (gateway_api.GROUP, gateway_api.VERSION)
        key = (plural, namespace, name)
        if key not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return self.objects[key]

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                     **kwargs: Any) -> dict[str, Any]:
        route = self._lookup(group, version, namespace, plural, name)
        key = (plural, namespace, name)
        if key in self._due:
            self._due[key] -= 1
            if self._due[key] < 0:
                del self._due[key]
                self._report(route, self.verdict)
        return copy.deepcopy(route)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: Any, **kwargs: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        # The client sends merge-patch+json for custom objects unless told: a list body would be misread.
        assert kwargs["_content_type"] == "application/json-patch+json" and isinstance(body, list)
        route = self._lookup(group, version, namespace, plural, name)
        if self.before_patch:
            self.before_patch(route)
        self.patches.append((name, body, kwargs))
        try:
            patched = _apply_json_patch(route, body)
        except _PatchFailed as exc:
            raise ApiException(status=422, reason=f"Unprocessable Entity: {exc}") from None
        if patched["spec"] != route["spec"]:
            patched["metadata"]["generation"] += 1
            if self.lag is not None:
                self._due[(plural, namespace, name)] = self.lag
        self.objects[(plural, namespace, name)] = patched
        return copy.deepcopy(patched)

    def route(self, name: str) -> dict[str, Any]:
        return next(r for r in self.objects.values() if r["metadata"]["name"] == name)


def _router(cluster: FakeCluster) -> GatewayApiRouter:
    return GatewayApiRouter(TrafficConfig(router="gateway_api"), api=cluster, poll_interval_s=0.001)


def _manifest_routes() -> list[dict[str, Any]]:
    return [d for d in _component_docs() if d["kind"] in ("HTTPRoute", "GRPCRoute")]


@pytest.mark.parametrize("split", [TrafficSplit(12.34, 5), TrafficSplit(0.01, 1), TrafficSplit(50, 100),
                                   TrafficSplit(100, 0), TrafficSplit(0, 0)])
def test_set_split_then_current_split_round_trips(split):
    cluster = FakeCluster(_manifest_routes(), lag=2)
    router = _router(cluster)
    router.set_split(split, timeout_s=5)
    assert router.current_split() == split
    stable, canary = gateway_api.backend_weights(split.canary_percent)
    for name in (TrafficConfig().http_route, TrafficConfig().grpc_route):
        route = cluster.route(name)
        for rule in route["spec"]["rules"]:
            assert {r["name"]: r["weight"] for r in rule["backendRefs"]} == {
                "tfserving-production": stable, "tfserving-canary": canary}
        mirrors = [m for m in map(_mirror_of, route["spec"]["rules"]) if m]
        assert [m["percent"] for m in mirrors] == [split.mirror_percent]  # the status rule stays unmirrored
        accepted = route["status"]["parents"][0]["conditions"][0]
        assert accepted["observedGeneration"] == route["metadata"]["generation"]  # returned only once accepted
    for _, _, kwargs in cluster.patches:
        assert kwargs["field_manager"] == gateway_api.FIELD_MANAGER


def test_a_split_already_in_effect_patches_nothing():
    cluster = FakeCluster(_manifest_routes())
    _router(cluster).set_split(TrafficSplit(0, 0), timeout_s=1)
    assert cluster.patches == []


def test_a_controller_that_never_catches_up_fails_with_what_it_last_reported():
    cluster = FakeCluster(_manifest_routes(), lag=None)
    with pytest.raises(DeadlineExceeded) as caught:
        _router(cluster).set_split(TrafficSplit(10, 0), timeout_s=0.2)
    message = str(caught.value)
    assert "HTTPRoute mlops/tfserving-production" in message and "GRPCRoute mlops/tfserving-production-grpc" in message
    assert "Accepted=True at generation 1" in message and "generation 2" in message
    assert "gatewayClassName" in message


def test_a_controller_that_refuses_the_change_fails_at_once():
    cluster = FakeCluster(_manifest_routes(), verdict="False")
    with pytest.raises(ConfigError, match="refused generation 2: Accepted=False"):
        _router(cluster).set_split(TrafficSplit(10, 0), timeout_s=5)


def test_a_route_edited_between_read_and_patch_is_read_again():
    cluster = FakeCluster(_manifest_routes())
    edits = iter([True])

    def reorder_once(route: dict[str, Any]) -> None:
        if route["kind"] == "HTTPRoute" and next(edits, False):
            route["spec"]["rules"][0]["backendRefs"].reverse()  # someone else's edit: our indices are stale

    cluster.before_patch = reorder_once
    router = _router(cluster)
    router.set_split(TrafficSplit(20, 0), timeout_s=5)
    assert router.current_split() == TrafficSplit(20, 0)
    assert [name for name, _, _ in cluster.patches].count(TrafficConfig().http_route) == 2  # refused, then redone


def test_a_split_a_route_cannot_hold_touches_neither_route():
    routes = _manifest_routes()
    grpc_route = next(r for r in routes if r["kind"] == "GRPCRoute")
    grpc_route["spec"]["rules"][0]["backendRefs"].pop()  # no canary backendRef in the gRPC route
    cluster = FakeCluster(routes)
    with pytest.raises(ConfigError, match="tfserving-canary"):
        _router(cluster).set_split(TrafficSplit(10, 0), timeout_s=1)
    with pytest.raises(ConfigError, match="whole percents"):
        _router(FakeCluster(_manifest_routes())).set_split(TrafficSplit(10, 0.5), timeout_s=1)
    assert cluster.patches == []


def test_routes_that_disagree_are_reported_and_set_split_mends_them():
    cluster = FakeCluster(_manifest_routes())
    route = cluster.route(TrafficConfig().grpc_route)
    route["spec"]["rules"][1]["backendRefs"][1]["weight"] = 5000  # one rule moved by hand
    router = _router(cluster)
    with pytest.raises(ConfigError, match="disagree"):
        router.current_split()
    router.set_split(TrafficSplit(1, 0), timeout_s=5)
    assert router.current_split() == TrafficSplit(1, 0)


def test_a_missing_route_says_how_to_create_it():
    cluster = FakeCluster([r for r in _manifest_routes() if r["kind"] == "HTTPRoute"])
    with pytest.raises(NotFound, match=r"GRPCRoute mlops/tfserving-production-grpc not found.*components/gateway-api"):
        _router(cluster).current_split()


def test_other_service_names_can_be_given():
    routes = _manifest_routes()
    for route in routes:
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                ref["name"] = ref["name"].replace("tfserving-", "tfs-")
    cluster = FakeCluster(routes)
    router = GatewayApiRouter(TrafficConfig(), api=cluster, backends=Backends("tfs-production", "tfs-canary"),
                              poll_interval_s=0.001)
    router.set_split(TrafficSplit(3, 0), timeout_s=5)
    assert router.current_split() == TrafficSplit(3, 0)


def test_no_cluster_is_reported_naming_the_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "no-such-kubeconfig"
    router = GatewayApiRouter(TrafficConfig(router="gateway_api"), kubeconfig=str(missing))
    with pytest.raises(SourceUnavailable, match=f"kubeconfig {missing}"):
        router.current_split()


# ---- a real cluster ----------------------------------------------------------------------------------------------


@pytest.fixture
def live_namespace() -> Iterator[tuple[Any, str]]:
    """A throwaway namespace with the component's Gateway and routes (never the cluster's own production routes)."""
    from kubernetes import client

    from pipeline.serving.backends import kubernetes as k8s_backend

    try:
        api = k8s_backend.connect_kubernetes()
        k8s_backend.ping_kubernetes(api)
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    gateway_class = os.environ.get("PIPELINE_TEST_GATEWAY_CLASS")
    if not gateway_class:
        pytest.skip("a cluster answers, but $PIPELINE_TEST_GATEWAY_CLASS names no GatewayClass to test the routes with")
    namespace = f"pipeline-gw-test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        for name, ports in (("tfserving-production", (8500, 8501)), ("tfserving-canary", (8500, 8501)),
                            ("capture", (8701,))):
            core.create_namespaced_service(namespace, {"metadata": {"name": name}, "spec": {
                "ports": [{"name": f"p{port}", "port": port} for port in ports]}})
        for doc in _component_docs():
            doc["metadata"]["namespace"] = namespace
            if doc["kind"] == "Gateway":
                doc["spec"]["gatewayClassName"] = gateway_class
            custom.create_namespaced_custom_object(gateway_api.GROUP, gateway_api.VERSION, namespace,
                                                   doc["kind"].lower() + "s", doc)
        yield custom, namespace
    finally:
        core.delete_namespace(namespace)


@pytest.mark.k8s
@pytest.mark.slow
def test_a_real_gateway_accepts_each_split(live_namespace):
    custom, namespace = live_namespace
    router = GatewayApiRouter(TrafficConfig(router="gateway_api", namespace=namespace), api=custom)
    for split in (TrafficSplit(12.34, 5), TrafficSplit(100, 100), TrafficSplit(0, 0)):
        router.set_split(split, timeout_s=120)
        assert router.current_split() == split
