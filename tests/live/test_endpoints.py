"""The traffic section's idle split: what stays mirrored for production monitoring while no canary is live."""

from __future__ import annotations

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.live.endpoints import TrafficConfig, TrafficSplit, idle_split


def test_idle_split_mirrors_the_monitoring_share_and_routes_nothing_to_the_canary():
    assert idle_split(TrafficConfig(monitor_mirror_percent=20)) == TrafficSplit(0, 20)
    assert idle_split(TrafficConfig()) == TrafficSplit(0, 0)  # not configured: nothing mirrored


def test_a_profile_without_a_traffic_section_mirrors_nothing(tmp_path, monkeypatch):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "embedded.yaml").write_text(yaml.safe_dump(
        {"instances": {"production": {"backend": "local", "rest_port": 0, "grpc_port": 0}}}))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    assert idle_split() == TrafficSplit(0, 0)


@pytest.mark.parametrize("percent", [-1, 100.5])
def test_a_monitoring_share_outside_0_to_100_is_refused(tmp_path, monkeypatch, percent):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "embedded.yaml").write_text(yaml.safe_dump(
        {"instances": {"production": {"backend": "local", "rest_port": 0, "grpc_port": 0}},
         "traffic": {"monitor_mirror_percent": percent}}))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    with pytest.raises(ConfigError, match="monitor_mirror_percent"):
        idle_split()
