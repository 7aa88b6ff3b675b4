"""Against a real ``airflow standalone``: a rollback's asset event in the Assets API (and, made outside Airflow,
alerted by the run of ``production_changes`` it starts), and a refused on-call rollback explained in the run's
note, alerted through the webhook connection, and logged as one line.

No serving process is needed: the rollback in this process runs on paper servers (:mod:`tests.release.paper`),
and the refused one is refused before any server is touched.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from pipeline.util.net import free_ports
from pipeline.util.polling import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("stacks")]

_DEADLINE_S = 300.0  # 2 shared cores: generous, every wait polls


@pytest.fixture
def airflow_only(tmp_path, monkeypatch):
    """``airflow standalone`` on free ports for a world with small mnist/spam configs, and a webhook receiver
    defined as the ``pipeline_webhook`` connection (task processes inherit the stack's environment)."""
    from pipeline import stack
    from pipeline.settings import get_paths
    from tests.airflow_stub import WebhookReceiver, define_connections, serving
    from tests.worlds import write_world

    home = write_world(tmp_path)
    port = free_ports(1)[0]
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("PIPELINE_MONITOR_MINUTES", "off")  # only this test's runs: no scheduled probe
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", str(port))
    for name in ("PIPELINE_AIRFLOW_API_URL", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL", "PIPELINE_REGISTRY_URL",
                 "AIRFLOW_CONN_PIPELINE_SMTP"):
        monkeypatch.delenv(name, raising=False)
    paths = get_paths()
    with serving(WebhookReceiver()) as hook:
        define_connections(monkeypatch, webhook=hook)
        try:
            yield paths, stack.start_airflow(paths, timeout_s=_DEADLINE_S), hook
        finally:
            stack.stop_airflow(paths)


def test_a_rollback_is_an_asset_event_and_a_refused_one_is_noted_alerted_and_one_log_line(airflow_only):
    from pipeline.airflow_api import AirflowApi, trigger_dag
    from pipeline.release.production import STABLE, change_production
    from pipeline.release.registry import State
    from pipeline.release.rollback import rollback
    from pipeline.steps import resolve_config
    from tests.release.paper import paper_release

    paths, url, hook = airflow_only
    api = AirflowApi(url, paths)
    api.wait_for_dag("model_rollback", timeout_s=_DEADLINE_S)
    api.wait_for_dag("production_changes", timeout_s=_DEADLINE_S)  # scheduled on production's events

    def production_asset() -> tuple[int | None, str]:
        found = [a for a in api.get("/assets?name_pattern=mnist_production")["assets"]
                 if a["uri"] == "pipeline://serving/production/mnist"]
        return (found[0]["id"] if found else None), f"{len(found)} found"

    asset_id = poll_until(production_asset, _DEADLINE_S, "mnist_production not registered", interval_s=2.0)

    # mnist 1 then 2 released; an on-call rollback from this process (as `pipeline rollback` would) goes to 1.
    release = paper_release(resolve_config("mnist"), paths, {1: 0.93, 2: 0.95, 3: 0.96})
    for version in (1, 2):
        for state in (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED):
            release.registry.transition("mnist", version, state, run_id="setup", reason="setup")
    change_production(release, [1, 2], {STABLE: 2})
    assert rollback(release, run_id="shell-rollback", reason="7s answered as 1s")["to"] == 1

    events = api.get(f"/assets/events?asset_id={asset_id}")["asset_events"]
    (event,) = [e for e in events if e["extra"].get("run_id") == "shell-rollback"]
    extra = event["extra"]
    assert (extra["version"], extra["labels"], extra["accuracy"]) == (1, {"stable": 1}, 0.93)
    assert extra["reason"] == "7s answered as 1s: stable 2 -> 1" and extra["change"] == "rollback"
    assert extra["origin"] == "shell"

    # Made outside Airflow, so no DAG's callback alerted it: production_changes, started by the event, does.
    def alerted_outside() -> tuple[dict | None, str]:
        posts = [r.body for r in hook.requests if r.body and r.body.get("run_id") == "shell-rollback"]
        return (posts[0] if posts else None), f"{len(hook.requests)} posts"

    shell_alert = poll_until(alerted_outside, _DEADLINE_S, "no alert of the shell rollback", interval_s=1.0)
    assert (shell_alert["event"], shell_alert["model"], shell_alert["version"]) == ("rollback_outside_airflow",
                                                                                  "mnist", 1)
    assert shell_alert["reason"] == "7s answered as 1s: stable 2 -> 1"
    assert "/dags/production_changes/runs/" in shell_alert["run_url"]

    # Version 3 never passed staging validation: the on-call rollback to it is refused.
    run_id = trigger_dag(paths, "model_rollback", {"model": "mnist", "to_version": 3, "reason": "slow test"})
    assert api.wait_for_run("model_rollback", run_id, timeout_s=_DEADLINE_S)["state"] == "failed"
    run_path = f"/dags/model_rollback/dagRuns/{quote(run_id, safe='')}"

    def noted() -> tuple[str | None, str]:
        note = api.get(run_path).get("note")
        return note, f"note {note!r}"

    note = poll_until(noted, _DEADLINE_S, "no note on the failed run", interval_s=1.0)
    assert note.startswith("rollback failed: mnist version 3 never passed staging validation")
    assert "production serves stable 1" in note

    def alerted() -> tuple[dict | None, str]:
        posts = [r.body for r in hook.requests if r.body and r.body.get("run_id") == run_id]
        return (posts[0] if posts else None), f"{len(hook.requests)} posts"

    alert = poll_until(alerted, _DEADLINE_S, "no webhook alert for the run", interval_s=1.0)
    assert (alert["event"], alert["model"], alert["version"], alert["stable"]) == ("rollback_failed", "mnist", 3, 1)
    assert "never passed staging validation" in alert["reason"]
    assert alert["run_url"].endswith(f"/dags/model_rollback/runs/{quote(run_id, safe='')}")

    log = json.dumps(api.get(f"{run_path}/taskInstances/rollback/logs/1"))
    assert "Task exited" in log and "never passed staging validation" in log
    assert "error_detail" not in log and "Traceback" not in log  # the refusal came without a traceback
