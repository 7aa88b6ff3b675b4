"""Every change of what staging or production serves posts one asset event to Airflow, and never fails for it.

The release functions run for real (registry, models.config, the two-phase change) on "paper" servers: backends
whose models.config is the whole truth (no process, no TensorFlow), so these tests take a second. A small local
HTTP server stands in for Airflow's REST API and records what arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pipeline.assets import asset_name, asset_uri
from pipeline.errors import ValidationFailed
from pipeline.live.endpoints import CANARY_INSTANCE, TrafficSplit
from pipeline.release import live_canary
from pipeline.release.canary import finalize_release, promote_canary, rollback_canary
from pipeline.release.context import PRODUCTION, STAGING, Release
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.registry import State
from pipeline.release.rollback import rollback
from pipeline.release.served_events import record_served_change
from pipeline.release.serving_state import change_served_state
from pipeline.release.staging import deploy_to_staging
from pipeline.settings import get_paths
from pipeline.util.net import free_port
from tests.airflow_stub import AirflowApiStub, pose_as_local_stack, serving
from tests.release.core_world import core_model_config, write_embedded_profile
from tests.release.paper import PaperRouter, paper_release

MODEL = "mnist"
ACCURACY = {1: 0.91, 2: 0.95, 3: 0.97}


@pytest.fixture
def api() -> Iterator[AirflowApiStub]:
    stub = AirflowApiStub()
    for environment in (STAGING, PRODUCTION):
        stub.know_asset(asset_name(MODEL, environment), asset_uri(MODEL, environment))
    with serving(stub):
        yield stub


@pytest.fixture
def release(tmp_path, monkeypatch) -> Release:
    """The model with versions 1..3 on disk (a stand-in saved_model.pb each) and registered, on paper servers."""
    write_embedded_profile(tmp_path / "configs")
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    for name in ("PIPELINE_SERVING_PROFILE", "PIPELINE_REGISTRY_URL", "PIPELINE_AIRFLOW_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return paper_release(core_model_config(MODEL), get_paths(tmp_path / "home"), ACCURACY)


def move(release: Release, version: int, *states: State) -> None:
    for state in states:
        release.registry.transition(MODEL, version, state, run_id="setup", reason="test setup")


def released(release: Release, *versions: int) -> None:
    """As if each version had been released in turn: the last is stable, the one before it still loaded."""
    for version in versions:
        move(release, version, State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)
    change_production(release, sorted(versions[-2:]), {STABLE: versions[-1]})


def test_finalize_posts_what_production_serves_with_version_labels_accuracy_run_and_reason(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    released(release, 1)
    move(release, 2, State.STAGED, State.VALIDATED)
    promote_canary(release, 2, run_id="run-7")
    finalize_release(release, 2, run_id="run-7")

    promoted, finalized = api.events_of("mnist_production")
    assert promoted["labels"] == {STABLE: 1, CANARY: 2} and promoted["change"] == "promote"
    assert finalized == {
        "model": MODEL, "environment": PRODUCTION, "version": 2, "labels": {STABLE: 2}, "versions": [1, 2],
        "accuracy": ACCURACY[2], "run_id": "run-7", "reason": "canary passed; stable 1 -> 2", "change": "finalize",
        "origin": "shell", "from_rest_api": True,
    }
    # It logged in as the local stack's admin, with the password airflow standalone generated.
    assert any(r.path == "/auth/token" for r in api.requests)


def test_the_automatic_canary_rollback_posts_that_stable_still_serves_and_why(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    released(release, 1)
    move(release, 2, State.STAGED, State.VALIDATED)
    promote_canary(release, 2, run_id="run-8")
    rollback_canary(release, 2, ["accuracy 0.002 < 0.8"], run_id="run-8")

    event = api.events_of("mnist_production")[-1]
    assert event["version"] == 1 and event["labels"] == {STABLE: 1} and event["accuracy"] == ACCURACY[1]
    assert event["change"] == "canary_rollback" and event["run_id"] == "run-8"
    assert "canary 2 rolled back" in event["reason"] and "accuracy 0.002 < 0.8" in event["reason"]


def test_an_on_call_rollback_posts_the_new_stable_and_the_on_call_reason(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    released(release, 1, 2)
    result = rollback(release, run_id="manual__rollback", reason="wrong answers for 7s")

    assert result["to"] == 1
    event = api.events_of("mnist_production")[-1]
    assert event["version"] == 1 and event["labels"] == {STABLE: 1} and event["accuracy"] == ACCURACY[1]
    assert event["reason"] == "wrong answers for 7s: stable 2 -> 1" and event["run_id"] == "manual__rollback"


def test_the_origin_says_whether_an_airflow_task_made_the_change(release, api, monkeypatch):
    from pipeline.assets import rollbacks_made_outside_airflow

    pose_as_local_stack(release.paths.home, api, monkeypatch)
    released(release, 1, 2, 3)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "model_rollback")  # what Airflow exports in a task's environment
    rollback(release, to_version=2, run_id="manual__in_airflow", reason="from the form")
    monkeypatch.delenv("AIRFLOW_CTX_DAG_ID")
    rollback(release, to_version=1, run_id=None, reason="from a shell")

    in_airflow, in_shell = api.events_of("mnist_production")[-2:]
    assert (in_airflow["origin"], in_shell["origin"]) == ("airflow", "shell")
    assert rollbacks_made_outside_airflow([in_airflow, in_shell]) == [in_shell]
    finalize = {**in_shell, "change": "finalize"}  # only rollbacks are alerted
    assert rollbacks_made_outside_airflow([finalize]) == []


def test_deploying_to_staging_posts_the_staging_asset(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    deploy_to_staging(release, 3, run_id="run-9")

    assert api.events_of("mnist_production") == []
    (event,) = api.events_of("mnist_staging")
    assert event["environment"] == STAGING and event["version"] == 3 and event["versions"] == [3]
    assert event["accuracy"] == ACCURACY[3] and event["change"] == "deploy"


def test_the_live_canary_finalize_and_rollback_post_production(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    router = PaperRouter()
    monkeypatch.setattr(live_canary, "router", lambda _release: router)
    released(release, 1)

    def go_live(version: int, run_id: str) -> None:
        move(release, version, State.STAGED, State.VALIDATED, State.CANARY)
        change_served_state(release.backend(CANARY_INSTANCE), MODEL, release.base_path, [1, version],
                            {STABLE: 1, CANARY: version}, 10, registry=release.registry)

    go_live(2, "run-live-bad")
    live_canary.rollback_live(release, 2, "run-live-bad", ["live canary shadow: agreement 0 % (21 paired)"])
    rolled = api.events_of("mnist_production")[-1]
    assert rolled["version"] == 1 and rolled["change"] == "live_canary_rollback" and rolled["run_id"] == "run-live-bad"
    assert "agreement 0 % (21 paired)" in rolled["reason"] and "production serves stable 1" in rolled["reason"]

    go_live(3, "run-live-good")
    live_canary.finalize_live(release, 3, "run-live-good")
    final = api.events_of("mnist_production")[-1]
    assert final["version"] == 3 and final["labels"] == {STABLE: 3} and final["accuracy"] == ACCURACY[3]
    assert final["change"] == "finalize" and final["reason"] == "live canary passed every phase; stable 1 -> 3"
    assert router.splits[-1] == TrafficSplit(0, 0)


def test_a_refused_rollback_posts_nothing(release, api, monkeypatch):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    released(release, 1)
    with pytest.raises(ValidationFailed):
        rollback(release, to_version=3, run_id="r")  # never passed staging validation
    assert api.events == []


def test_without_airflow_a_change_stands_and_logs_one_warning(release, monkeypatch, caplog):
    # A shell with no stack: no API configured at all.
    released(release, 1, 2)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = rollback(release, run_id=None, reason="from a shell")
    assert result["to"] == 1 and production_state(release).labels == {STABLE: 1}
    warnings = [r.getMessage() for r in caplog.records if "asset event" in r.getMessage()]
    assert len(warnings) == 1 and "no Airflow API configured" in warnings[0]
    assert all(r.exc_info is None for r in caplog.records)

    # An API that is configured but down: the same, naming where it looked.
    monkeypatch.setenv("PIPELINE_AIRFLOW_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PIPELINE_AIRFLOW_API_TOKEN", "t")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert record_served_change(release, PRODUCTION, "checking", "r") is None
    (warning,) = [r.getMessage() for r in caplog.records if "asset event" in r.getMessage()]
    assert "not reachable" in warning and "127.0.0.1" in warning


def test_an_asset_airflow_does_not_know_yet_is_one_warning(release, api, monkeypatch, caplog):
    pose_as_local_stack(release.paths.home, api, monkeypatch)
    api.assets.clear()  # no parsed DAG declares it yet
    released(release, 1)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert record_served_change(release, PRODUCTION, "checking", "r") is None
    (warning,) = [r.getMessage() for r in caplog.records if "asset event" in r.getMessage()]
    assert "knows no asset mnist_production" in warning


def test_any_deployment_through_the_api_url_and_a_token(release, api, monkeypatch):
    from tests.airflow_stub import _TOKEN

    monkeypatch.setenv("PIPELINE_AIRFLOW_API_URL", api.url + "/")
    monkeypatch.setenv("PIPELINE_AIRFLOW_API_TOKEN", _TOKEN)
    released(release, 1)
    event = record_served_change(release, PRODUCTION, "checking", "r-token")
    assert event is not None and event["extra"]["run_id"] == "r-token"
    assert not any(r.path == "/auth/token" for r in api.requests)  # the token was used as it is
