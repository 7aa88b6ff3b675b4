"""Whole releases against embedded staging and production servers (real training, real servers)."""

from __future__ import annotations

import threading
import traceback

import numpy as np
import pytest
import yaml

from pipeline import tasks
from pipeline.errors import DeadlineExceeded, NotFound, ValidationFailed
from pipeline.flow import run_release
from pipeline.release.canary import CANARY, STABLE, production_state
from pipeline.release.context import PRODUCTION, Release
from pipeline.release.registry import State
from pipeline.release.rollback import monitor, rollback
from pipeline.steps import resolve_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _release() -> Release:
    return Release(resolve_config("mnist"))


def _predict_stable(release: Release) -> np.ndarray:
    from pipeline.wire.version_dirs import read_golden

    stable = production_state(release).label(STABLE)
    golden = read_golden(release.version_dir(stable))
    inputs = np.asarray(golden["inputs"][:4], dtype=np.float32)
    return release.client(PRODUCTION).predict("mnist", instances=inputs, label=STABLE)["classes"]


def test_release_end_to_end_then_a_label_shift_is_refused_at_evaluate(release_world):
    first = run_release("mnist", {}, run_id="run-1")
    assert first["finalize"]["stable"] == 1
    release = _release()
    assert production_state(release).labels == {STABLE: 1}
    assert release.registry.stable_version("mnist") == 1
    assert len(_predict_stable(release)) == 4
    before = production_state(release)

    # No gate is overridden for a fault injected on purpose: the bad model stops at evaluate, never exported.
    with pytest.raises(ValidationFailed, match="evaluate: NOT_BLESSED.*below the floor"):
        run_release("mnist", {"inject_fault": "label_shift"}, run_id="run-2")
    state = production_state(release)
    assert state == before and CANARY not in state.labels
    assert [record.version for record in release.registry.versions("mnist")] == [1]
    assert release.registry.stable_version("mnist") == 1
    assert release.registry.lock_holder("mnist") is None
    assert [f.task_id for f in release.registry.failures("mnist")] == ["evaluate"]


def test_staging_failure_leaves_production_untouched(release_world):
    run_release("mnist", {}, run_id="good")
    release = _release()
    before = production_state(release)
    config_text = release.backend(PRODUCTION).config_path.read_text()
    strict = release_world / "configs" / "models" / "mnist.yaml"
    raw = yaml.safe_load(strict.read_text())
    raw["serving"]["latency_budget_p95_ms"] = 0.001  # no server answers in a microsecond
    strict.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationFailed, match="p95 latency"):
        run_release("mnist", {"epochs": 4}, run_id="too-slow")
    assert production_state(release) == before
    assert release.backend(PRODUCTION).config_path.read_text() == config_text
    assert release.registry.get_version("mnist", 2).state is State.REJECTED
    with pytest.raises(ValidationFailed, match="never passed staging validation"):
        rollback(release, to_version=2)


def test_on_call_rollback_and_its_refusals(release_world):
    run_release("mnist", {}, run_id="v1")
    run_release("mnist", {"epochs": 4}, run_id="v2")
    release = _release()
    assert production_state(release).labels == {STABLE: 2}
    with pytest.raises(NotFound, match="not on disk"):
        rollback(release, to_version=9)
    result = tasks.rollback("mnist", None, "oncall-1")
    assert (result["from"], result["to"]) == (2, 1)
    assert result["seconds"] < 5
    assert production_state(release).labels == {STABLE: 1}
    assert release.registry.stable_version("mnist") == 1
    assert release.registry.get_version("mnist", 2).state is State.ROLLED_BACK
    with pytest.raises(ValidationFailed, match="version 2 is rolled_back; refusing to roll back to it"):
        rollback(release, to_version=2)  # refused before production is touched
    assert production_state(release).labels == {STABLE: 1}


def test_monitor_rolls_back_a_broken_stable(release_world):
    run_release("mnist", {}, run_id="v1")
    run_release("mnist", {"epochs": 4}, run_id="v2")
    release = _release()
    assert monitor(release, "probe-ok")["healthy"] is True
    golden_path = release.version_dir(2) / "assets.extra" / "golden.json"
    golden = yaml.safe_load(golden_path.read_text())  # JSON is YAML
    golden["probabilities"] = [[1.0 - p for p in row] for row in golden["probabilities"]]
    golden_path.write_text(yaml.safe_dump(golden))
    result = monitor(release, "probe-bad")
    assert result["healthy"] is False and result["rollback"]["to"] == 1
    assert production_state(release).labels == {STABLE: 1}


def test_a_held_lock_blocks_another_release(release_world, monkeypatch):
    run_release("mnist", {}, run_id="first")
    release = _release()
    release.registry.acquire_lock("mnist", "someone-else", timeout_s=1, ttl_s=60)
    monkeypatch.setattr(tasks, "_LOCK_WAIT_S", 1.0)
    with pytest.raises(DeadlineExceeded, match="someone-else"):
        run_release("mnist", {"epochs": 4}, run_id="second")
    assert production_state(release).labels == {STABLE: 1}


def test_overlapping_releases_are_serialized(release_world):
    run_release("mnist", {}, run_id="base")  # data and a first stable version in place
    errors: list[str] = []

    def release_in_thread(run_id: str, epochs: int) -> None:
        try:
            run_release("mnist", {"epochs": epochs}, run_id=run_id)
        except BaseException:  # noqa: BLE001 - reported below
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=release_in_thread, args=(f"overlap-{e}", e)) for e in (4, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[0]
    # Training and export run concurrently; everything from staging on is under the model's lock. (A promotion
    # also moves the previous stable to superseded, in the same transaction.)
    serving_states = {State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED, State.REJECTED, State.ROLLED_BACK}
    history = [t for t in reversed(_release().registry.history("mnist")) if t.to_state in serving_states]
    # Between a version entering staging and its promotion, no other version touches a server.
    for version in (2, 3):
        moves = [i for i, t in enumerate(history) if t.version == version and t.to_state in (State.STAGED, State.PROMOTED)]
        window = history[moves[0]:moves[-1] + 1]
        assert {t.version for t in window} == {version}, [(t.version, str(t.to_state)) for t in window]


def test_spam_release_end_to_end_serves_raw_strings(release_world):
    result = run_release("spam", {}, run_id="spam-1")
    assert result["finalize"]["stable"] == 1
    release = Release(resolve_config("spam"))
    texts = np.array(["Re: meeting notes for thursday", "WIN $$$ NOW!!! click here for FREE money"], dtype=object)
    for protocol in ("rest", "grpc"):
        outputs = release.client(PRODUCTION).predict("spam", instances=texts, label=STABLE, protocol=protocol)
        assert outputs["probabilities"].shape == (2, 2)
        classes = outputs["probabilities"].argmax(axis=1)
        assert list(outputs["classes"]) == list(classes)
        labels = [label.decode() if isinstance(label, bytes) else str(label) for label in outputs["labels"]]
        assert labels == [("ham", "spam")[c] for c in classes]
    verdict = result["validate_staging"]
    assert verdict["blessed"] and verdict["figures"]["golden_max_abs_diff_grpc"] <= 1e-4
