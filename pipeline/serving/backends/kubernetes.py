"""TF Serving as a Kubernetes Deployment behind a Service, its models.config in a ConfigMap.

The pods mount the ConfigMap as a directory (never ``subPath``: the kubelet does not refresh those) and run
with ``--model_config_file_poll_wait_seconds``. A config change (:meth:`ServingBackend.apply_config`, the one path
every backend shares) writes the local file, puts it into the ConfigMap and then, by ``apply_mode``:

* ``poll`` (default): waits for the kubelet to project the new file into every pod (about a minute) and
  for each pod's next config poll; versions already loaded keep serving, so this is also how rollback
  keeps the old stable version warm.
* ``rollout``: restarts the Deployment (what ``kubectl rollout restart`` does) and waits for the rollout;
  new pods load everything from scratch. For clusters where waiting on the kubelet is too slow.

Either way it returns once every running pod of the Deployment reports, through the API server's pod
proxy, exactly what the file says. Checking each pod (rather than one answer through the Service, which
lands on a random replica) is what makes "every replica switched" true.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ConfigError, NotFound, SourceUnavailable
from pipeline.serving.backends import validate_spec
from pipeline.serving.backends.base import Endpoint, ServingBackend
from pipeline.serving.served import StatusGetter, config_mismatches, server_answers
from pipeline.settings import REPO_ROOT, Paths
from pipeline.util.polling import poll_until
from pipeline.wire.model_config import ModelServerConfig, format_config

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Deployment, V1Pod

log = logging.getLogger(__name__)

_REST_PORT = 8501
_GRPC_PORT = 8500
_DEFAULT_NAMESPACE = "mlops"
_DEFAULT_CONFIG_KEY = "models.config"
# The kubelet refreshes projected ConfigMaps on its sync period plus its cache TTL (about 60s + 60s worst case).
_DEFAULT_PROPAGATION_S = 120.0
_DEFAULT_POLL_WAIT_S = 30
_POLL_INTERVAL_S = 2.0
_RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class KubernetesSpec(BaseModel):
    """Where one TF Serving instance lives in a cluster (a profile's ``instances.<name>`` block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["kubernetes"] = "kubernetes"
    namespace: str = _DEFAULT_NAMESPACE
    deployment: str | None = None  # default: tfserving-<instance>
    service: str | None = None  # default: tfserving-<instance>
    configmap: str | None = None  # default: tfserving-<instance>-config
    config_key: str = _DEFAULT_CONFIG_KEY
    apply_mode: Literal["poll", "rollout"] = "poll"
    poll_wait_s: int = Field(_DEFAULT_POLL_WAIT_S, ge=1)  # the pods' --model_config_file_poll_wait_seconds
    propagation_s: float = Field(_DEFAULT_PROPAGATION_S, ge=0)  # ConfigMap -> pod file delay we allow for
    manage: bool = False  # true: create missing objects from `manifests`, scale to 0 on stop
    manifests: tuple[str, ...] = ()  # files (relative to the repo) holding this instance's objects
    replicas: int = Field(1, ge=1)  # what start() scales a stopped managed Deployment back to
    host: str | None = None  # default: the Service's cluster DNS name (Airflow runs in the cluster)
    rest_port: int = Field(_REST_PORT, gt=0, lt=65536)
    grpc_port: int = Field(_GRPC_PORT, gt=0, lt=65536)
    kubeconfig: str | None = None  # default: in-cluster service account, else $KUBECONFIG / ~/.kube/config
    context: str | None = None
    config_path: str | None = None  # the local file the pipeline writes; default <serving_dir>/<instance>/


def connect_kubernetes(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An API client from the pod's service account (in a cluster) or from a kubeconfig.

    Raises:
        SourceUnavailable: no usable credentials; the message names the kubeconfig tried.
    """
    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    tried = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError, TypeError) as exc:
        raise SourceUnavailable(
            f"no Kubernetes cluster: could not load kubeconfig {tried} ({exc}); set KUBECONFIG or the "
            "profile's kubeconfig/context"
        ) from None


def ping_kubernetes(api: ApiClient) -> str:
    """The cluster's version string; proves the API server answers.

    Raises:
        SourceUnavailable: naming the API server that did not answer.
    """
    from kubernetes import client

    with kubernetes_errors(api, "ask the API server its version"):
        return client.VersionApi(api).get_code().git_version


@contextlib.contextmanager
def kubernetes_errors(api: ApiClient, doing: str) -> Iterator[None]:
    """Turn transport and permission failures into :class:`SourceUnavailable` naming the server."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    server = api.configuration.host
    try:
        yield
    except HTTPError as exc:
        raise SourceUnavailable(f"Kubernetes API server {server} unreachable while trying to {doing}: {exc}") from None
    except ApiException as exc:
        if exc.status in (401, 403):
            raise SourceUnavailable(
                f"Kubernetes API server {server} refused to {doing} (HTTP {exc.status}); "
                "apply k8s/base/rbac.yaml for the Airflow service accounts"
            ) from None
        raise


class KubernetesBackend(ServingBackend):
    """A TF Serving Deployment + Service + ConfigMap (see the module docstring)."""

    def __init__(self, name: str, spec: dict[str, Any], paths: Paths) -> None:
        """Validate ``spec`` (see :class:`KubernetesSpec`); connects to nothing yet."""
        self.name = name
        self.spec = validate_spec(KubernetesSpec, name, spec)
        self.paths = paths
        self._config_path = Path(self.spec.config_path or paths.serving_dir / name / "models.config")
        self._api: ApiClient | None = None

    @property
    def config_path(self) -> Path:
        return self._config_path

    @property
    def deployment(self) -> str:
        return self.spec.deployment or f"tfserving-{self.name}"

    @property
    def service(self) -> str:
        return self.spec.service or f"tfserving-{self.name}"

    @property
    def configmap(self) -> str:
        return self.spec.configmap or f"tfserving-{self.name}-config"

    @property
    def api(self) -> ApiClient:
        """The API client, connected on first use."""
        if self._api is None:
            self._api = connect_kubernetes(self.spec.kubeconfig, self.spec.context)
        return self._api

    def start(self, timeout_s: float = 60.0) -> Endpoint:
        """Ensure the Deployment runs (creating/scaling it when managed), then wait for its rollout."""
        deployment = self._read_deployment()
        if deployment is None and self.spec.manage:
            self._create_from_manifests()
        elif deployment is None:
            raise NotFound(
                f"deployment {self.namespace_name(self.deployment)} does not exist; "
                "apply the manifests first: kubectl apply -k k8s/overlays/local"
            )
        elif self.spec.manage and not deployment.spec.replicas:
            self._scale(self.spec.replicas)
        self._wait_for_rollout(timeout_s)
        return self._endpoint()

    def endpoint(self) -> Endpoint:
        if not self.is_running():
            raise NotFound(f"deployment {self.namespace_name(self.deployment)} has no ready replica; call start()")
        return self._endpoint()

    def push_config(self, config: ModelServerConfig, timeout_s: float) -> None:
        """Put the config into the ConfigMap; in ``rollout`` mode also restart the Deployment and wait for it."""
        self._patch_configmap(format_config(config))
        if self.spec.apply_mode == "rollout":
            self._restart_rollout()
            self._wait_for_rollout(timeout_s)

    def propagation_allowance_s(self) -> float:
        """In ``poll`` mode: the kubelet's projection of the ConfigMap plus the pods' next config poll."""
        return 0.0 if self.spec.apply_mode == "rollout" else self.spec.propagation_s + self.spec.poll_wait_s

    def served_hint(self) -> str:
        return "Check the pods' logs (is the ConfigMap mounted as a directory, not with subPath?)."

    def mismatches(self, config: ModelServerConfig, removed: set[str]) -> list[str]:
        """What any running pod still serves differently: each pod is asked through the API server's pod proxy."""
        with kubernetes_errors(self.api, f"check model status in {self.namespace_name(self.deployment)}"):
            pods = self._running_pods()
            if not pods:
                return [f"no running pod of {self.deployment}"]
            problems = []
            for pod in pods:
                getter = self.pod_status_getter(pod.metadata.name)
                found = config_mismatches(getter, config, removed) if server_answers(getter) else ["not answering"]
                problems += [f"{pod.metadata.name}: {p}" for p in found]
        return problems

    def stop(self) -> None:
        """Scale a managed Deployment to 0 (objects stay for the next start); attached ones are left alone."""
        if not self.spec.manage:
            log.info("%s is not managed by the pipeline; not scaling it", self.deployment)
            return
        if self._read_deployment() is not None:
            self._scale(0)

    def is_running(self) -> bool:
        try:
            deployment = self._read_deployment()
        except SourceUnavailable:
            return False
        return bool(deployment and deployment.status and (deployment.status.ready_replicas or 0) > 0)

    def namespace_name(self, name: str) -> str:
        return f"{self.spec.namespace}/{name}"

    def _endpoint(self) -> Endpoint:
        host = self.spec.host or f"{self.service}.{self.spec.namespace}.svc.cluster.local"
        return Endpoint(host, self.spec.rest_port, self.spec.grpc_port)

    def _read_deployment(self) -> V1Deployment | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with kubernetes_errors(self.api, f"read deployment {self.namespace_name(self.deployment)}"):
            try:
                return client.AppsV1Api(self.api).read_namespaced_deployment(self.deployment, self.spec.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def _patch_configmap(self, text: str) -> None:
        from kubernetes import client

        body = {"data": {self.spec.config_key: text}}
        with kubernetes_errors(self.api, f"patch configmap {self.namespace_name(self.configmap)}"):
            client.CoreV1Api(self.api).patch_namespaced_config_map(self.configmap, self.spec.namespace, body)
        log.info("configmap %s now holds %s", self.namespace_name(self.configmap), self.config_path)

    def _restart_rollout(self) -> None:
        from kubernetes import client

        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        body = {"spec": {"template": {"metadata": {"annotations": {_RESTARTED_AT: now}}}}}
        with kubernetes_errors(self.api, f"restart deployment {self.namespace_name(self.deployment)}"):
            client.AppsV1Api(self.api).patch_namespaced_deployment(self.deployment, self.spec.namespace, body)

    def _scale(self, replicas: int) -> None:
        from kubernetes import client

        body = {"spec": {"replicas": replicas}}
        with kubernetes_errors(self.api, f"scale deployment {self.namespace_name(self.deployment)}"):
            client.AppsV1Api(self.api).patch_namespaced_deployment_scale(self.deployment, self.spec.namespace, body)
        log.info("scaled %s to %d", self.namespace_name(self.deployment), replicas)

    def _create_from_manifests(self) -> None:
        """Create each object of ``manifests`` that does not exist yet (ConfigMap, Deployment, Service)."""
        from kubernetes import utils

        if not self.spec.manifests:
            raise ConfigError(f"serving instance {self.name!r}: manage is true but no manifests are given")
        for manifest in self.spec.manifests:
            for doc in yaml.safe_load_all((REPO_ROOT / manifest).read_text()):
                if not doc:
                    continue
                with kubernetes_errors(self.api, f"create {doc['kind']} {doc['metadata']['name']}"):
                    try:
                        utils.create_from_dict(self.api, doc, namespace=self.spec.namespace)
                    except utils.FailToCreateError as exc:
                        if any(e.status != 409 for e in exc.api_exceptions):  # 409: exists already
                            raise

    def _rollout_done(self, deployment: V1Deployment) -> bool:
        wanted = deployment.spec.replicas or 0
        status = deployment.status
        return (
            (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
            and (status.updated_replicas or 0) == wanted
            and (status.ready_replicas or 0) == wanted
            and (status.replicas or 0) == wanted  # old ReplicaSet's pods gone
        )

    def _wait_for_rollout(self, timeout_s: float) -> None:
        """Wait until every replica of the Deployment runs its current template and is ready.

        Raises:
            DeadlineExceeded: not within ``timeout_s``; the message names the replica counts last seen.
        """

        def check() -> tuple[bool | None, str]:
            deployment = self._read_deployment()
            if deployment is None:
                return None, "no deployment"
            if self._rollout_done(deployment):
                return True, "rolled out"
            status = deployment.status
            return None, (f"generation {status.observed_generation or 0} of {deployment.metadata.generation or 0} "
                          f"observed; {status.updated_replicas or 0} updated, {status.ready_replicas or 0} ready, "
                          f"{status.replicas or 0} in all of {deployment.spec.replicas or 0} wanted")

        poll_until(check, timeout_s, f"deployment {self.namespace_name(self.deployment)} not rolled out",
                   interval_s=_POLL_INTERVAL_S,
                   hint=f"See kubectl -n {self.spec.namespace} rollout status deploy/{self.deployment}")

    def _running_pods(self) -> list[V1Pod]:
        from kubernetes import client

        deployment = self._read_deployment()
        if deployment is None:
            raise NotFound(f"deployment {self.namespace_name(self.deployment)} does not exist")
        selector = ",".join(f"{k}={v}" for k, v in sorted(deployment.spec.selector.match_labels.items()))
        with kubernetes_errors(self.api, f"list pods of {self.namespace_name(self.deployment)}"):
            pods = client.CoreV1Api(self.api).list_namespaced_pod(self.spec.namespace, label_selector=selector)
        return [p for p in pods.items if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]

    def pod_status_getter(self, pod: str) -> StatusGetter:
        """A status getter that reaches one pod's REST port through the API server's pod proxy."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)

        def get(path: str) -> tuple[int, Any]:
            try:
                reply = core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod}:{_REST_PORT}", self.spec.namespace, path, _preload_content=False
                )
            except ApiException as exc:
                return exc.status, None
            try:
                return reply.status, json.loads(reply.data or b"null")
            except ValueError:  # a proxy error page, not TF Serving's JSON
                return reply.status, None

        return get
