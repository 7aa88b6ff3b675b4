"""What "a TF Serving serves this models.config" means: one strict definition, one wait, for every backend.

TF Serving's model-version lifecycle, as its model status reports it: ``START`` (the manager saw the version) →
``LOADING`` → ``AVAILABLE`` (serving) → ``UNLOADING`` → ``END``. A version whose load failed goes straight to
``END`` with an error status and stays there.

A server serves a config when, for every model in it, every pinned version (``specific`` policy) is AVAILABLE and
no other version is (so a rolled-back canary counts as gone only once unloaded), or at least one version is
AVAILABLE under a ``latest``/``all`` policy; every version label answers with its version AVAILABLE; and every
model the config dropped has no version AVAILABLE any more. Status is read through TF Serving's REST API, which
every backend reaches (directly, or through the Kubernetes API server's pod proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.util.polling import poll_until
from pipeline.wire.status import ServingError, normalize_code

if TYPE_CHECKING:
    from pipeline.wire.model_config import ModelConfig, ModelServerConfig

# (HTTP status, parsed JSON or None) of a GET on a server's REST API, path relative to its root (``v1/models/m``).
StatusGetter = Callable[[str], tuple[int, Any]]
_DEFAULT_POLL_S = 0.05
_PROBE_TIMEOUT_S = 2.0


def config_mismatches(get_status: StatusGetter, config: ModelServerConfig,
                      removed: Iterable[str] = ()) -> list[str]:
    """What a server still does differently from ``config``; empty once it serves exactly that.

    Raises:
        ServingError: a pinned version failed to load (it stays ``END`` with its error: waiting cannot help).
    """
    problems: list[str] = []
    for model in config.model_config_list.config:
        code, body = get_status(f"v1/models/{model.name}")
        if code != 200:
            problems.append(f"{model.name}: status HTTP {code}")
            continue
        problems += _version_mismatches(model, _version_states(body))
        problems += _label_mismatches(get_status, model)
    for name in removed:
        code, body = get_status(f"v1/models/{name}")
        still = sorted(v for v, seen in _version_states(body).items() if seen.state == "AVAILABLE") if code == 200 else []
        if still:
            problems.append(f"{name}: removed from the config but versions {still} still AVAILABLE")
    return problems


def _version_mismatches(model: ModelConfig, states: dict[int, _VersionState]) -> list[str]:
    available = {v for v, seen in states.items() if seen.state == "AVAILABLE"}
    shown = {v: seen.state for v, seen in states.items()}
    if model.model_version_policy.WhichOneof("policy_choice") != "specific":
        return [] if available else [f"{model.name}: no version AVAILABLE (states {shown})"]
    wanted = set(model.model_version_policy.specific.versions)
    for version in sorted(wanted & set(states)):
        seen = states[version]
        if seen.state == "END" and seen.error_code != "OK":
            raise ServingError(seen.error_code, f"{model.name} version {version} failed to load: {seen.error_message}")
    problems = []
    if missing := sorted(wanted - available):
        problems.append(f"{model.name}: versions {missing} not AVAILABLE (states {shown})")
    if extra := sorted(available - wanted):
        problems.append(f"{model.name}: versions {extra} still AVAILABLE")
    return problems


@dataclass(frozen=True)
class _VersionState:
    state: str
    error_code: str = "OK"
    error_message: str = ""


def _version_states(body: Any) -> dict[int, _VersionState]:
    """version -> what a model status answer says of it (its state, and the error of a failed load)."""
    states = {}
    for item in (body or {}).get("model_version_status", []):
        status = item.get("status") or {}
        states[int(item["version"])] = _VersionState(item.get("state", ""), normalize_code(status.get("error_code", "OK")),
                                                     status.get("error_message", ""))
    return states


def _label_mismatches(get_status: StatusGetter, model: ModelConfig) -> list[str]:
    problems = []
    for label, version in sorted(model.version_labels.items()):
        code, body = get_status(f"v1/models/{model.name}/labels/{label}")
        seen = _version_states(body).get(version) if code == 200 else None
        if seen is None or seen.state != "AVAILABLE":
            problems.append(f"{model.name}: label {label!r} does not serve version {version} yet")
    return problems


def server_answers(get_status: StatusGetter) -> bool:
    """Whether TF Serving's REST API answers the model status URL at all.

    A 404 ("servable not found") still means up: TF Serving starts its HTTP server only after the models of
    its initial config have loaded, so an answer of any kind means the server is serving.
    """
    try:
        code, _ = get_status("v1/models/_health")
    except OSError:
        return False
    return code in (200, 404)


def rest_status_getter(rest_url: str, timeout_s: float = _PROBE_TIMEOUT_S) -> StatusGetter:
    """A :data:`StatusGetter` over HTTP to a server's REST port (``http://host:port``)."""
    from pipeline.serving.http_transport import KeepAliveSession

    session = KeepAliveSession(rest_url)

    def get(path: str) -> tuple[int, Any]:
        try:
            reply = session.request("GET", f"{rest_url}/{path}", timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any transport failure means "no answer" here
            raise OSError(str(exc)) from None
        try:
            return reply.status_code, reply.json()
        except ValueError:
            return reply.status_code, None

    return get


def wait_until_served(mismatches: Callable[[], list[str]], timeout_s: float, where: str,
                      hint: str = "Check the server's log for load errors.") -> None:
    """Poll ``mismatches()`` (e.g. :func:`config_mismatches` bound to a server) until it is empty.

    Raises:
        DeadlineExceeded: with what was still different at the deadline.
        ServingError: a version asked for failed to load.
    """

    def check() -> tuple[bool | None, str]:
        try:
            problems = mismatches()
        except (OSError, ValueError) as exc:  # connection refused, a half-written JSON reply
            problems = [f"status unreachable: {exc}"]
        return (True if not problems else None), "; ".join(problems)

    poll_until(check, timeout_s, f"{where} did not serve its models.config", interval_s=_DEFAULT_POLL_S, hint=hint)
