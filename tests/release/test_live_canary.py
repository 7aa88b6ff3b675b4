"""The live canary end to end: real servers, nginx in front, the capture service, live traffic with feedback.

Production serves stable; the canary instance serves production's models plus the candidate. Live clients
(:func:`pipeline.live.traffic.run_traffic`, REST and gRPC, unlabeled) go through the proxy the whole time. A good
candidate must walk shadow and every weighted step to stable, a bad one must be rolled back by the live analysis,
and no client request may fail through any split change, the finalize or the rollback.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from pipeline.config import LiveCanaryConfig
from pipeline.errors import ValidationFailed
from pipeline.live.capture import CaptureService
from pipeline.live.endpoints import CANARY_INSTANCE, TrafficSplit, live_endpoints
from pipeline.live.phases import live_phases
from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec
from pipeline.live.routing import proxy_runtime_dir, router_for
from pipeline.live.traffic import TrafficReport, TrafficSpec, run_traffic
from pipeline.release import live_canary
from pipeline.release.canary import canary_gate
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE, production_state
from pipeline.release.registry import State
from pipeline.settings import REPO_ROOT, get_paths
from pipeline.util.net import free_ports
from tests.release.core_world import (
    BAD,
    GOOD,
    GOOD_ALT,
    N_CLASSES,
    CoreWorld,
    Flavor,
    TemplateModels,
    as_if_released,
    build_template_models,
    mark_validated,
    world_environment,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_INSTANCES = ("staging", "production", CANARY_INSTANCE)
_MODELS = ("core_1", "core_2", "core_3")  # CoreWorld names models core_<n> in order: the capture service knows them up front
_START_TIMEOUT_S = 180.0
_PHASE_LOOK_S = 5.0
_PHASE_LIMIT_S = 240.0
_CANARY = LiveCanaryConfig(steps=(5, 25, 50), mirror_share=0.5, bake_s=90, poll_s=1.0, min_requests=50)


@dataclass
class LiveWorld:
    world: CoreWorld
    proxy: NginxProxy
    capture: CaptureService


_IDLE_MIRROR_PERCENT = 10  # the share monitoring keeps mirrored once no canary is live


def _write_profile(root, ports: list[int]) -> None:
    path = root / "configs" / "serving" / "embedded.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {
        "instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0} for name in _INSTANCES},
        "traffic": {"router": "nginx", "host": "127.0.0.1", "rest_port": ports[0], "grpc_port": ports[1],
                    "capture_port": ports[2], "prometheus_port": ports[3],
                    "monitor_mirror_percent": _IDLE_MIRROR_PERCENT},
    }
    path.write_text(yaml.safe_dump(profile))
    template = root / "configs" / "proxy" / "nginx.conf.template"  # the world's config dir holds the proxy's too
    template.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "configs" / "proxy" / "nginx.conf.template", template)


@pytest.fixture(scope="module")
def template_models(tmp_path_factory: pytest.TempPathFactory) -> TemplateModels:
    return build_template_models(tmp_path_factory.mktemp("template_models"))


@pytest.fixture(scope="module")
def live_world(tmp_path_factory: pytest.TempPathFactory, template_models: TemplateModels) -> Iterator[LiveWorld]:
    """Production and canary instances, the capture service and nginx in front, for the whole module."""
    from pipeline.serving.backends import get_backend

    root = tmp_path_factory.mktemp("live_world")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in world_environment(root).items():
            patch.setenv(key, value)
        patch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
        patch.delenv("PIPELINE_REGISTRY_URL", raising=False)
        _write_profile(root, free_ports(4))
        world = CoreWorld.create(root, template_models)
        paths = get_paths(root / "home")
        backends = [get_backend(name, paths=paths) for name in _INSTANCES]
        capture = proxy = None
        try:
            production, canary = (backends[1].start(timeout_s=_START_TIMEOUT_S),
                                  backends[2].start(timeout_s=_START_TIMEOUT_S))
            endpoints = live_endpoints()
            capture_port = int(endpoints.capture_url.rsplit(":", 1)[1])
            names = [str(k) for k in range(N_CLASSES)]
            capture = CaptureService(canary.rest_url, _MODELS, paths=paths, port=capture_port,
                                     class_names=dict.fromkeys(_MODELS, names)).start()
            proxy = NginxProxy(proxy_runtime_dir(paths))
            host, rest_port = endpoints.rest_url.removeprefix("http://").rsplit(":", 1)
            proxy.start(ProxySpec(host=host, rest_port=int(rest_port),
                                  grpc_port=int(endpoints.grpc_target.rsplit(":", 1)[1]),
                                  stable=UpstreamSpec.of(production), canary=UpstreamSpec.of(canary),
                                  mirror_url=endpoints.capture_url))
            yield LiveWorld(world, proxy, capture)
        finally:
            if proxy is not None:
                proxy.stop()
            if capture is not None:
                capture.stop()
            for backend in backends:
                backend.stop()


def _release(live: LiveWorld, candidate: Flavor) -> Release:
    """A model whose version 1 is stable on production and version 2 (``candidate``) passed staging."""
    release = live.world.new_release({1: GOOD, 2: candidate})
    assert release.model in _MODELS
    release.config = release.config.model_copy(update={"canary": _CANARY})
    as_if_released(release, 1)
    mark_validated(release, 2)
    return release


class Clients:
    """Live traffic through the proxy in the background, until stopped; its report at the end."""

    def __init__(self, model: str, rps: float = 50.0):
        endpoints = live_endpoints()
        self.stop = threading.Event()
        self.spec = TrafficSpec(model=model, rest_url=endpoints.rest_url, grpc_target=endpoints.grpc_target,
                                feedback_url=endpoints.capture_url, rps=rps, duration_s=600, label_delay_s=1.0)
        self.report: TrafficReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-clients", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.report = run_traffic(self.spec, stop=self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def finish(self) -> TrafficReport:
        self.stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise self.error
        assert self.report is not None, "the traffic thread did not finish"
        return self.report


def _walk_phases(release: Release, version: int, run_id: str) -> None:
    for phase in live_phases(release.config.canary):
        while not live_canary.watch_phase(release, version, run_id, phase, _PHASE_LOOK_S).analysis.decision == "pass":
            pass  # each look returns after _PHASE_LOOK_S at most; the analysis ends the phase by bake_s


def _failed_requests(report: TrafficReport) -> dict[str, Any]:
    return {api.api: api.failed for api in report.apis if api.failed}


def test_a_good_candidate_walks_every_phase_to_stable_and_no_client_request_fails(live_world):
    release = _release(live_world, GOOD_ALT)
    clients = Clients(release.model)
    try:
        promoted = live_canary.promote_live(release, 2, "run-good")
        assert promoted["live"] and promoted["stable"] == 1
        assert live_canary.canary_state(release).labels == {STABLE: 1, CANARY: 2}
        assert production_state(release).labels == {STABLE: 1}  # production never serves the candidate
        canary_gate(release, 2, "run-good", live=True)
        _walk_phases(release, 2, "run-good")
        finalized = live_canary.finalize_live(release, 2, "run-good")
    finally:
        report = clients.finish()
    assert finalized["stable"] == 2 and finalized["previous"] == 1
    state = production_state(release)
    assert state.labels == {STABLE: 2} and state.versions == (1, 2)
    assert router_for(release.paths).current_split() == TrafficSplit(0, _IDLE_MIRROR_PERCENT)
    assert live_canary.canary_state(release).versions == ()
    assert release.registry.get_version(release.model, 2).state is State.PROMOTED
    phases = sorted(release.registry.live_phases(release.model, run_id="run-good"), key=lambda p: p.id)
    assert [(p.phase, p.decision) for p in phases] == [("shadow", "pass"), ("5%", "pass"), ("25%", "pass"),
                                                        ("50%", "pass")]
    assert all(p.figures["paired"]["requests"] >= _CANARY.min_requests for p in phases)
    assert phases[-1].figures["canary"]["served"] > 0  # at 50 % live clients got the canary's answers
    assert release.registry.lock_holder(live_canary.TRAFFIC_LOCK) is None
    assert sum(api.sent for api in report.apis) > 0 and _failed_requests(report) == {}
    assert report.feedback is not None and report.feedback.answers.get("accepted", 0) > 0


def test_a_bad_candidate_is_rolled_back_by_the_live_analysis_and_no_client_request_fails(live_world):
    release = _release(live_world, BAD)
    clients = Clients(release.model)
    try:
        live_canary.promote_live(release, 2, "run-bad")
        # No canary_gate here: its held-out probe would catch this template model offline; the subject is the
        # live analysis (the demo's input-convention candidate passes that probe and is caught live).
        with pytest.raises(ValidationFailed, match=r"live canary shadow fail.*root cause.*rolled back"):
            _walk_phases(release, 2, "run-bad")
    finally:
        report = clients.finish()
    assert production_state(release).labels == {STABLE: 1} and production_state(release).versions == (1,)
    assert router_for(release.paths).current_split() == TrafficSplit(0, _IDLE_MIRROR_PERCENT)
    assert live_canary.canary_state(release).versions == ()
    assert release.registry.get_version(release.model, 2).state is State.ROLLED_BACK
    assert release.registry.stable_version(release.model) == 1
    assert _failed_requests(report) == {}
    (shadow,) = release.registry.live_phases(release.model, run_id="run-bad")
    assert shadow.decision == "fail" and shadow.figures["paired"]["agreement"] < 0.5
    assert "stable said" in shadow.summary
    assert shadow.figures["canary"]["served"] == 0  # shadow: no client ever got the bad answers


def test_an_on_call_rollback_aborts_a_live_canary_first_and_the_phase_ends_there(live_world):
    from pipeline.release.rollback import rollback
    from tests.release.core_world import advance

    release = live_world.world.new_release({1: GOOD, 2: GOOD_ALT, 3: GOOD_ALT})
    assert release.model in _MODELS
    release.config = release.config.model_copy(update={"canary": _CANARY})
    as_if_released(release, 1, 2)
    advance(release, 3, State.STAGED, State.VALIDATED)
    shadow = live_phases(_CANARY)[0]
    live_canary.promote_live(release, 3, "run-abort")
    live_canary.look_at_phase(release, 3, "run-abort", shadow)  # the shadow phase routes its mirror now
    assert router_for(release.paths).current_split() == TrafficSplit(0, _CANARY.mirror_share * 100)

    done = rollback(release, reason="on-call: bad canary")
    assert done["aborted_live_canary"] == 3 and (done["from"], done["to"]) == (2, 1)
    assert router_for(release.paths).current_split() == TrafficSplit(0, _IDLE_MIRROR_PERCENT)
    assert live_canary.canary_state(release).versions == ()
    assert release.registry.get_version(release.model, 3).state is State.ROLLED_BACK
    assert production_state(release).labels == {STABLE: 1}
    with pytest.raises(ValidationFailed, match="no longer serves 3 as canary"):
        live_canary.look_at_phase(release, 3, "run-abort", shadow)
    release.registry.release_lock(live_canary.TRAFFIC_LOCK, "run-abort")  # the release's teardown would
