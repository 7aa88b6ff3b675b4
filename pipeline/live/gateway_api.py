"""Live traffic on Kubernetes: the split moves by patching Gateway API routes (profile ``traffic.router: gateway_api``).

k8s/components/gateway-api holds a Gateway and two routes (gateway.networking.k8s.io/v1) named as in
:class:`~pipeline.live.endpoints.TrafficConfig`: the HTTPRoute ``tfserving-production`` (TF Serving's REST API) and
the GRPCRoute ``tfserving-production-grpc``. Every rule that routes to the Service ``tfserving-production`` (stable)
also names ``tfserving-canary``; the inference rules carry a ``RequestMirror`` filter to the capture service.
:class:`GatewayApiRouter` puts a :class:`~pipeline.live.endpoints.TrafficSplit` in effect by patching those weights
and the filter's ``percent`` (Gateway API v1.2 experimental, standard from v1.3), then waits until every parent
Gateway reports the routes ``Accepted`` at the patched generation.

Weights are integers out of :data:`WEIGHT_TOTAL` = 10 000: the nginx router splits in hundredths of a percent, and
10 000 is the smallest total that gives Gateway API weights (integers) the same resolution, so a split means the same
on both routers. The mirror's ``percent`` is a whole number (Gateway API's type); finer mirror shares are refused.

The patches are JSON Patches (RFC 6902) built by pure functions (:func:`split_patch`, read back by
:func:`route_split`), each change guarded by a ``test`` of the entry's name at its index: a route edited between our
read and our patch fails the patch instead of getting a weight at the wrong entry, and is read again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.errors import ConfigError, NotFound, SourceUnavailable
from pipeline.live.endpoints import TrafficConfig, TrafficSplit
from pipeline.util.polling import poll_until

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
WEIGHT_TOTAL = 10_000
STABLE_SERVICE = "tfserving-production"
CANARY_SERVICE = "tfserving-canary"
MIRROR_FILTER = "RequestMirror"
FIELD_MANAGER = "mlops-pipeline"
_JSON_PATCH = "application/json-patch+json"
_DEFAULT_WEIGHT = 1  # Gateway API's default for a backendRef without one
_DEFAULT_DENOMINATOR = 100  # a RequestMirror fraction's default denominator
_POLL_S = 1.0
_REQUEST_TIMEOUT_S = 10.0
_PATCH_ATTEMPTS = 3  # a guarded patch that lost a race is built again from a fresh read
_APPLY_HINT = "apply k8s/components/gateway-api through an overlay (see its kustomization.yaml)"


class CustomObjects(Protocol):
    """What the router uses of ``kubernetes.client.CustomObjectsApi`` (a stand-in is passed in tests)."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                     **kwargs: Any) -> Any: ...

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                       body: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class RouteRef:
    """One route the router moves."""

    kind: str  # HTTPRoute | GRPCRoute
    plural: str
    namespace: str
    name: str

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Backends:
    """The Services the routes' backendRefs name: stable (production) and canary."""

    stable: str = STABLE_SERVICE
    canary: str = CANARY_SERVICE


def routes_of(config: TrafficConfig) -> tuple[RouteRef, RouteRef]:
    """The HTTPRoute and GRPCRoute a profile's ``traffic:`` section names."""
    return (RouteRef("HTTPRoute", "httproutes", config.namespace, config.http_route),
            RouteRef("GRPCRoute", "grpcroutes", config.namespace, config.grpc_route))


# ---- pure: weights, patches, reading back ------------------------------------------------------------------------


def backend_weights(canary_percent: float) -> tuple[int, int]:
    """(stable, canary) weights out of :data:`WEIGHT_TOTAL` for ``canary_percent`` (two decimals, like nginx)."""
    canary = round(canary_percent * WEIGHT_TOTAL / 100)
    return WEIGHT_TOTAL - canary, canary


def mirror_percent_value(mirror_percent: float) -> int:
    """The RequestMirror filter's ``percent`` for ``mirror_percent``.

    Raises:
        ConfigError: not a whole number (Gateway API's percent is an integer).
    """
    if not float(mirror_percent).is_integer():
        raise ConfigError(f"mirror_percent {mirror_percent:g}: the Gateway API mirror takes whole percents "
                          f"(RequestMirror percent is an integer), e.g. {round(mirror_percent)}")
    return int(mirror_percent)


def effective_split(split: TrafficSplit) -> TrafficSplit:
    """``split`` as the routes can hold it: the canary share in hundredths of a percent, whole mirror percents."""
    return TrafficSplit(backend_weights(split.canary_percent)[1] * 100 / WEIGHT_TOTAL,
                        float(mirror_percent_value(split.mirror_percent)))


def _describe(route: Mapping[str, Any]) -> str:
    metadata = route.get("metadata") or {}
    return f"{route.get('kind', 'route')} {metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def _rules(route: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((route.get("spec") or {}).get("rules") or [])


def _mirror_filters(rule: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(k, f) for k, f in enumerate(rule.get("filters") or []) if f.get("type") == MIRROR_FILTER]


def split_patch(route: Mapping[str, Any], split: TrafficSplit, backends: Backends = Backends()) -> list[dict[str, Any]]:
    """The JSON Patch that puts ``split`` on ``route``: every rule routing to the stable Service gets the weights,
    every RequestMirror filter the percent.

    Raises:
        ConfigError: no rule routes to stable, such a rule lacks the canary backendRef or names a third one, or the
            split mirrors but the route has no RequestMirror filter.
    """
    stable_weight, canary_weight = backend_weights(split.canary_percent)
    percent = mirror_percent_value(split.mirror_percent)
    weights = {backends.stable: stable_weight, backends.canary: canary_weight}
    ops: list[dict[str, Any]] = []
    routed = mirrored = 0
    for i, rule in enumerate(_rules(route)):
        refs = rule.get("backendRefs") or []
        names = [ref.get("name") for ref in refs]
        if backends.stable not in names:
            continue
        if set(names) != set(weights):
            raise ConfigError(f"{_describe(route)} rule {i}: backendRefs {names}, expected exactly {sorted(weights)}; "
                              f"{_APPLY_HINT}")
        routed += 1
        for j, ref in enumerate(refs):
            path = f"/spec/rules/{i}/backendRefs/{j}"
            ops.append({"op": "test", "path": f"{path}/name", "value": ref["name"]})
            ops.append({"op": "add", "path": f"{path}/weight", "value": weights[ref["name"]]})
        for k, mirror in _mirror_filters(rule):
            mirrored += 1
            path = f"/spec/rules/{i}/filters/{k}"
            ops.append({"op": "test", "path": f"{path}/type", "value": MIRROR_FILTER})
            if "fraction" in (mirror.get("requestMirror") or {}):  # one of percent or fraction, never both
                ops.append({"op": "remove", "path": f"{path}/requestMirror/fraction"})
            ops.append({"op": "add", "path": f"{path}/requestMirror/percent", "value": percent})
    if not routed:
        raise ConfigError(f"{_describe(route)} has no rule routing to Service {backends.stable}; {_APPLY_HINT}")
    if percent and not mirrored:
        raise ConfigError(f"{_describe(route)} has no {MIRROR_FILTER} filter, so it cannot mirror {percent} %; "
                          f"{_APPLY_HINT}")
    return ops


def _mirrored_percent(mirror: Mapping[str, Any]) -> float:
    """The share a RequestMirror filter copies: its percent, its fraction, or everything when it sets neither."""
    spec = mirror.get("requestMirror") or {}
    if "percent" in spec:
        return float(spec["percent"])
    if "fraction" in spec:
        fraction = spec["fraction"]
        return round(100 * fraction["numerator"] / fraction.get("denominator", _DEFAULT_DENOMINATOR), 2)
    return 100.0


def route_split(route: Mapping[str, Any], backends: Backends = Backends()) -> TrafficSplit:
    """The split ``route`` puts in effect (the canary's share of the weights, the mirrored share).

    Raises:
        ConfigError: no rule routes to stable, a rule's weights are all 0 (the Gateway would answer 500), or the
            rules disagree (a route the pipeline did not write).
    """
    canary_shares: set[float] = set()
    mirror_shares: set[float] = set()
    for i, rule in enumerate(_rules(route)):
        weights = {ref.get("name"): ref.get("weight", _DEFAULT_WEIGHT) for ref in rule.get("backendRefs") or []}
        if backends.stable not in weights:
            continue
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"{_describe(route)} rule {i}: every backendRef has weight 0, the Gateway answers 500")
        canary_shares.add(round(100 * weights.get(backends.canary, 0) / total, 2))
        mirror_shares.update(_mirrored_percent(mirror) for _, mirror in _mirror_filters(rule))
    if not canary_shares:
        raise ConfigError(f"{_describe(route)} has no rule routing to Service {backends.stable}; {_APPLY_HINT}")
    if len(canary_shares) > 1 or len(mirror_shares) > 1:
        raise ConfigError(f"{_describe(route)}: its rules disagree (canary {sorted(canary_shares)} %, mirror "
                          f"{sorted(mirror_shares)} %); set_split writes one split on every rule")
    return TrafficSplit(canary_shares.pop(), mirror_shares.pop() if mirror_shares else 0.0)


def _same_parent(ref: Mapping[str, Any], status_ref: Mapping[str, Any], namespace: str) -> bool:
    keys = ("name", "sectionName", "port")
    return (all(ref.get(key) == status_ref.get(key) for key in keys)
            and ref.get("kind", "Gateway") == status_ref.get("kind", "Gateway")
            and ref.get("namespace", namespace) == status_ref.get("namespace", namespace))


def _parent_label(ref: Mapping[str, Any], namespace: str) -> str:
    section = f" listener {ref['sectionName']}" if ref.get("sectionName") else ""
    return f"{ref.get('kind', 'Gateway')} {ref.get('namespace', namespace)}/{ref.get('name')}{section}"


def route_acceptance(route: Mapping[str, Any], generation: int) -> tuple[bool | None, str]:
    """Whether every parent of ``route`` accepted its spec as of ``generation``: (True, ...) once all have, (None, what
    is missing) before.

    Raises:
        ConfigError: a parent refused that generation (``Accepted`` or ``ResolvedRefs`` False), with its reason.
    """
    namespace = (route.get("metadata") or {}).get("namespace", "")
    parents = (route.get("spec") or {}).get("parentRefs") or []
    if not parents:
        raise ConfigError(f"{_describe(route)} has no parentRefs: no Gateway serves it; {_APPLY_HINT}")
    statuses = (route.get("status") or {}).get("parents") or []
    waiting: list[str] = []
    for ref in parents:
        label = _parent_label(ref, namespace)
        entries = [s for s in statuses if _same_parent(ref, s.get("parentRef") or {}, namespace)]
        if not entries:
            waiting.append(f"{label}: no status yet")
        for entry in entries:
            conditions = {c.get("type"): c for c in entry.get("conditions") or []}
            for kind in ("Accepted", "ResolvedRefs"):
                condition = conditions.get(kind) or {}
                if condition.get("status") == "False" and condition.get("observedGeneration", 0) >= generation:
                    raise ConfigError(f"{_describe(route)}: {label} ({entry.get('controllerName', '?')}) refused "
                                      f"generation {generation}: {kind}=False, {condition.get('reason')}: "
                                      f"{condition.get('message')}")
            accepted = conditions.get("Accepted") or {}
            seen = accepted.get("observedGeneration", 0)
            if seen < generation or accepted.get("status") != "True":
                waiting.append(f"{label}: Accepted={accepted.get('status', 'absent')} at generation {seen}")
    if waiting:
        return None, f"{_describe(route)} generation {generation}: " + "; ".join(waiting)
    return True, f"{_describe(route)} generation {generation} accepted"


# ---- the router ------------------------------------------------------------------------------------------------


class GatewayApiRouter:
    """Moves live traffic by patching the profile's HTTPRoute and GRPCRoute (see the module docstring).

    Args:
        config: the profile's ``traffic:`` section (namespace, route names).
        api: a ``CustomObjectsApi`` (or a stand-in); default: one from the pod's service account or the kubeconfig,
            made on first use.
        backends: the Service names of stable and canary in the routes.
        kubeconfig, context: where to find the cluster when ``api`` is not given (default: in-cluster, else
            $KUBECONFIG or ~/.kube/config).
        poll_interval_s: how often :meth:`set_split` reads the routes' status.
    """

    def __init__(self, config: TrafficConfig, api: CustomObjects | None = None, backends: Backends = Backends(),
                 kubeconfig: str | None = None, context: str | None = None, poll_interval_s: float = _POLL_S):
        self.config = config
        self.routes = routes_of(config)
        self.backends = backends
        self._api = api
        self._kubeconfig = kubeconfig
        self._context = context
        self._poll_interval_s = poll_interval_s

    @property
    def api(self) -> CustomObjects:
        if self._api is None:
            from kubernetes import client

            from pipeline.serving.backends.kubernetes import connect_kubernetes

            self._api = client.CustomObjectsApi(connect_kubernetes(self._kubeconfig, self._context))
        return self._api

    def current_split(self) -> TrafficSplit:
        """The split both routes put in effect.

        Raises:
            ConfigError: the routes disagree (e.g. a set_split that failed half-way; set_split again to fix it).
            NotFound: a route does not exist. SourceUnavailable: the API server is unreachable or refuses.
        """
        splits = {ref: route_split(self._read(ref), self.backends) for ref in self.routes}
        if len(set(splits.values())) > 1:
            seen = "; ".join(f"{ref.describe()}: {split.describe()}" for ref, split in splits.items())
            raise ConfigError(f"the routes disagree ({seen}); set_split puts one split on both")
        return next(iter(splits.values()))

    def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
        """Patch both routes to ``split``, then wait until their Gateways accepted the patched generation.

        ``Accepted`` at the new generation means the Gateway's controller took the change; its data plane follows
        within the controller's own propagation delay, and in-flight requests survive as that implementation
        drains them (Envoy-based ones finish them on the old config).

        Raises:
            ConfigError: ``split`` mirrors a fractional percent, a route lacks what the split needs, or a Gateway
                refused the new generation (its reason in the message).
            DeadlineExceeded: not accepted within ``timeout_s`` (what each Gateway last reported in the message).
            NotFound, SourceUnavailable: as for :meth:`current_split`.
        """
        deadline = time.monotonic() + timeout_s
        target = effective_split(split)
        for ref in self.routes:  # refuse before touching either route, so a refusal never leaves them disagreeing
            split_patch(self._read(ref), target, self.backends)
        generations = {ref: self._apply(ref, target) for ref in self.routes}

        def accepted() -> tuple[bool | None, str]:
            seen = [route_acceptance(self._read(ref), generation) for ref, generation in generations.items()]
            if all(done for done, _ in seen):
                return True, "accepted"
            return None, "; ".join(last for done, last in seen if not done)

        names = " and ".join(ref.describe() for ref in self.routes)
        poll_until(accepted, max(0.0, deadline - time.monotonic()), f"{names} not accepted with {split.describe()}",
                   interval_s=self._poll_interval_s,
                   hint=f"kubectl -n {self.config.namespace} describe httproute,grpcroute,gateway; is a controller "
                        "running for the Gateway's gatewayClassName?")

    # ---- reading and patching --------------------------------------------------------------------------------

    def _apply(self, ref: RouteRef, split: TrafficSplit) -> int:
        """Patch ``ref`` to ``split`` unless it is there already; the route's generation after it."""
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, _PATCH_ATTEMPTS + 1):
            route = self._read(ref)
            if self._holds(route, split):
                return int(route["metadata"]["generation"])
            try:
                with self._errors(ref, "patch"):
                    patched = self.api.patch_namespaced_custom_object(
                        GROUP, VERSION, ref.namespace, ref.plural, ref.name, split_patch(route, split, self.backends),
                        field_manager=FIELD_MANAGER, _content_type=_JSON_PATCH, _request_timeout=_REQUEST_TIMEOUT_S)
            except ApiException as exc:
                # 422: a guarding test failed (the route changed since we read it); 409: a write conflict. Read again.
                if exc.status in (409, 422) and attempt < _PATCH_ATTEMPTS:
                    continue
                raise ConfigError(f"{ref.describe()}: the API server refused the patch (HTTP {exc.status}): "
                                  f"{exc.body or exc.reason}") from None
            return int(patched["metadata"]["generation"])
        raise AssertionError("unreachable")

    def _holds(self, route: Mapping[str, Any], split: TrafficSplit) -> bool:
        try:
            return route_split(route, self.backends) == split
        except ConfigError:  # rules that disagree or route nowhere: the patch rewrites every one of them
            return False

    def _read(self, ref: RouteRef) -> dict[str, Any]:
        with self._errors(ref, "read"):
            route: dict[str, Any] = self.api.get_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, ref.plural, ref.name, _request_timeout=_REQUEST_TIMEOUT_S)
        return route

    @contextlib.contextmanager
    def _errors(self, ref: RouteRef, doing: str) -> Iterator[None]:
        """Missing routes, refused credentials and an unreachable API server, said in the pipeline's terms."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except HTTPError as exc:
            raise SourceUnavailable(f"Kubernetes API server unreachable while trying to {doing} {ref.describe()}: "
                                    f"{exc}") from None
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f"{ref.describe()} not found (or no Gateway API CRDs in the cluster); "
                               f"{_APPLY_HINT}") from None
            if exc.status in (401, 403):
                raise SourceUnavailable(f"the Kubernetes API server refused to {doing} {ref.describe()} (HTTP "
                                        f"{exc.status}); apply k8s/base/rbac.yaml for the Airflow service "
                                        "accounts") from None
            raise
