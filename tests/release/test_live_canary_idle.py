"""The live canary's decisions that need no running server: where a release goes, and a clear refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.errors import NotFound
from pipeline.release import live_canary
from pipeline.release.context import PRODUCTION, Release
from pipeline.release.production import STABLE
from pipeline.release.registry import State
from pipeline.settings import get_paths
from pipeline.wire import model_config as mc
from tests.release.core_world import advance, core_model_config, world_environment


def _profile(config_dir: Path, with_traffic: bool) -> None:
    path = config_dir / "serving" / "embedded.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ("staging", "production", "canary") if with_traffic else ("staging", "production")
    profile: dict = {"instances": {n: {"backend": "local", "rest_port": 0, "grpc_port": 0} for n in names}}
    if with_traffic:
        profile["traffic"] = {"rest_port": 1, "grpc_port": 2, "capture_port": 3, "prometheus_port": 4}
    path.write_text(yaml.safe_dump(profile))


def _idle(root: Path, monkeypatch: pytest.MonkeyPatch, with_traffic: bool) -> Release:
    for key, value in world_environment(root).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    _profile(root / "configs", with_traffic=with_traffic)
    return Release(core_model_config("core_idle"), paths=get_paths(root / "home"))


@pytest.fixture
def idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Release]:
    """A home whose profile has the live path (traffic section, canary instance); no server or proxy runs."""
    release = _idle(tmp_path, monkeypatch, with_traffic=True)
    yield release
    release.close()


@pytest.mark.parametrize("with_traffic", [True, False])
def test_the_live_path_is_configured_only_with_a_traffic_section_and_a_canary_instance(tmp_path, monkeypatch,
                                                                                        with_traffic):
    release = _idle(tmp_path, monkeypatch, with_traffic)
    assert live_canary.live_path_configured(release) is with_traffic
    assert live_canary.canary_state(release).versions == ()
    assert not live_canary.is_live(release, 2)


def test_promote_live_without_a_running_endpoint_names_pipeline_up_and_frees_the_endpoint(idle):
    release = idle
    for version in (1, 2):
        release.registry.register_version(release.model, version, {"metrics": {}})
    advance(release, 1, State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
    advance(release, 2, State.STAGED, State.VALIDATED)
    config = mc.set_model_versions(mc.single_model_config(release.model, release.base_path), release.model,
                                   [1], {STABLE: 1})
    mc.write_config(release.backend(PRODUCTION).config_path, config)  # a stopped production serving stable 1
    with pytest.raises(NotFound, match="production endpoint is not running.*pipeline up"):
        live_canary.promote_live(release, 2, "run-x")
    assert release.registry.lock_holder(live_canary.TRAFFIC_LOCK) is None
    assert release.registry.get_version(release.model, 2).state is State.VALIDATED  # nothing moved
    assert not release.backend(PRODUCTION).is_running()
