"""What "served" means (pipeline.serving.served): one strict definition for every backend, and its wait."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import DeadlineExceeded
from pipeline.serving.served import config_mismatches, wait_until_served
from pipeline.wire.model_config import parse_config, single_model_config
from pipeline.wire.status import ServingError


def _status(states: dict[int, str]) -> dict[str, Any]:
    return {"model_version_status": [{"version": str(v), "state": s} for v, s in states.items()]}


def _getter(replies: dict[str, tuple[int, Any]]) -> Any:
    return lambda path: replies.get(path, (404, None))


_PINNED = """model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow"
  model_version_policy { specific { versions: 1 versions: 2 } } version_labels { key: "stable" value: 1 }
  version_labels { key: "canary" value: 2 } } }"""


@pytest.mark.parametrize("replies, problem", [
    ({"v1/models/m": (200, _status({1: "AVAILABLE", 2: "AVAILABLE"})),
      "v1/models/m/labels/stable": (200, _status({1: "AVAILABLE"})),
      "v1/models/m/labels/canary": (200, _status({2: "AVAILABLE"}))}, None),
    ({"v1/models/m": (200, _status({1: "AVAILABLE", 2: "LOADING"})),
      "v1/models/m/labels/stable": (200, _status({1: "AVAILABLE"}))}, "versions [2] not AVAILABLE"),
    ({"v1/models/m": (200, _status({1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})),
      "v1/models/m/labels/stable": (200, _status({1: "AVAILABLE"})),
      "v1/models/m/labels/canary": (200, _status({2: "AVAILABLE"}))}, "versions [3] still AVAILABLE"),
    ({"v1/models/m": (200, _status({1: "AVAILABLE", 2: "AVAILABLE"})),
      "v1/models/m/labels/stable": (200, _status({1: "AVAILABLE"})),
      "v1/models/m/labels/canary": (200, _status({1: "AVAILABLE"}))}, "label 'canary'"),
    ({}, "status HTTP 404"),
])
def test_config_mismatches_say_what_is_still_different(replies, problem):
    found = config_mismatches(_getter(replies), parse_config(_PINNED))
    assert (found == []) if problem is None else any(problem in p for p in found), found


def test_a_latest_policy_needs_one_available_version():
    config = single_model_config("m", "/m")
    assert config_mismatches(_getter({"v1/models/m": (200, _status({3: "AVAILABLE"}))}), config) == []
    assert config_mismatches(_getter({"v1/models/m": (200, _status({3: "LOADING"}))}), config)


def test_a_removed_model_counts_as_gone_only_once_unloaded():
    config = single_model_config("other", "/o")
    replies = {"v1/models/other": (200, _status({1: "AVAILABLE"})), "v1/models/m": (200, _status({1: "AVAILABLE"}))}
    assert any("removed from the config" in p for p in config_mismatches(_getter(replies), config, removed={"m"}))
    replies["v1/models/m"] = (200, _status({1: "END"}))
    assert config_mismatches(_getter(replies), config, removed={"m"}) == []
    del replies["v1/models/m"]  # TF Serving: 404 for a model it no longer knows
    assert config_mismatches(_getter(replies), config, removed={"m"}) == []


def test_a_failed_load_fails_at_once_with_the_servers_error():
    failed = {"model_version_status": [{"version": "1", "state": "AVAILABLE"},
                                       {"version": "2", "state": "END",
                                        "status": {"error_code": "NOT_FOUND", "error_message": "no saved_model.pb"}}]}
    config = parse_config(_PINNED)
    with pytest.raises(ServingError, match="version 2 failed to load: no saved_model.pb") as caught:
        config_mismatches(_getter({"v1/models/m": (200, failed)}), config)
    assert caught.value.code == "NOT_FOUND"


def test_the_wait_says_what_still_differed_and_what_to_check():
    with pytest.raises(DeadlineExceeded, match=r"staging did not serve its models.config within 0.2s; "
                                               r"last seen: m: versions \[2\] not AVAILABLE.*Check the log"):
        wait_until_served(lambda: ["m: versions [2] not AVAILABLE"], 0.2, "staging", hint="Check the log.")


def test_the_wait_takes_an_unreachable_server_as_not_yet():
    answers = iter([OSError("connection refused"), []])

    def mismatches() -> list[str]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    wait_until_served(mismatches, 5, "staging")
