"""mnist_release through a real Airflow scheduler (standalone, SQLite, LocalExecutor) on embedded servers."""

from __future__ import annotations

import pytest
import yaml

from pipeline.util.net import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("stacks")]


@pytest.fixture
def airflow_world(tmp_path, monkeypatch):
    from tests.worlds import write_world

    home = write_world(tmp_path)
    # Fixed ports picked now: every Airflow task process must find the same two servers.
    ports = iter(free_ports(5))
    profile = {"instances": {name: {"backend": "local", "rest_port": next(ports), "grpc_port": next(ports)}
                             for name in ("staging", "production")}}
    (tmp_path / "configs" / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("PIPELINE_MONITOR_MINUTES", "off")  # only this test's runs: no scheduled probe
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", str(next(ports)))
    from pipeline import stack
    from pipeline.settings import get_paths

    paths = get_paths()
    try:
        yield paths, stack.up(paths)
    finally:
        stack.down(paths)


def test_release_then_a_bad_model_refused_at_evaluate_through_the_scheduler(airflow_world):
    from pipeline.airflow_api import AirflowApi, trigger_dag
    from pipeline.release.canary import CANARY, STABLE, production_state
    from pipeline.release.context import Release
    from pipeline.steps import resolve_config

    paths, where = airflow_world
    api = AirflowApi(where["airflow_ui"], paths)
    api.wait_for_dag("mnist_release")

    good = trigger_dag(paths, "mnist_release", {})
    assert api.wait_for_run("mnist_release", good, timeout_s=600)["state"] == "success"
    states = {t["task_id"]: t["state"] for t in api.task_instances("mnist_release", good)}
    assert states["finalize"] == "success" and states["canary_check"] == "success"
    release = Release(resolve_config("mnist"), paths)
    assert production_state(release).labels == {STABLE: 1}

    # No gate is overridden for a fault injected on purpose: label_shift stops at evaluate, never exported.
    bad = trigger_dag(paths, "mnist_release", {"inject_fault": "label_shift"})
    assert api.wait_for_run("mnist_release", bad, timeout_s=600)["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in api.task_instances("mnist_release", bad)}
    assert states["evaluate"] == "failed" and states["export"] == "upstream_failed"
    state = production_state(release)
    assert state.labels == {STABLE: 1} and CANARY not in state.labels
    assert [record.version for record in release.registry.versions("mnist")] == [1]
    assert any(f.task_id == "evaluate" for f in release.registry.failures("mnist"))

    bad_conf = trigger_dag(paths, "mnist_release", {"epochs": 3, "colour": "red"})
    assert api.wait_for_run("mnist_release", bad_conf, timeout_s=300)["state"] == "failed"
    states = {t["task_id"]: t["state"] for t in api.task_instances("mnist_release", bad_conf)}
    assert states["check_conf"] == "failed" and states["reconcile"] == "upstream_failed"
    assert states["prepare_data"] == "upstream_failed"
