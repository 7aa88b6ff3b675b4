"""The release core against real embedded servers, in seconds: no training, hand-built SavedModels.

Staging and production are real ``pipeline.embedded_server`` processes started through the local backend, once
for the module (see :mod:`tests.release.core_world`); each test releases its own model (``core_<n>``), so the
tests share servers but never state. The slow end-to-end versions of these scenarios, with training, are in
``test_release_e2e.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import NotFound, PipelineError, ValidationFailed
from pipeline.release.canary import canary_gate, check_canary, finalize_release, promote_canary, rollback_canary
from pipeline.release.context import PRODUCTION, STAGING, Release
from pipeline.release.production import CANARY, STABLE, production_state
from pipeline.release.registry import RegistryConflict, State
from pipeline.release.rollback import choose_rollback_target, monitor, probe_stable, rollback, rollback_targets
from pipeline.release.serving_state import ServedState, VersionTampered, change_served_state, served_state
from pipeline.release.staging import deploy_to_staging, validate_on_staging
from pipeline.release.status import model_status
from pipeline.serving.backends.base import ServingBackend
from pipeline.settings import get_paths
from pipeline.wire import model_config as mc
from tests.release.core_world import (
    BAD,
    BROKEN,
    GOOD,
    GOOD_ALT,
    CoreWorld,
    Flavor,
    LabelTraffic,
    ServerStart,
    TemplateModels,
    as_if_released,
    available_versions,
    build_template_models,
    core_model_config,
    first_golden_input,
    flavor_answering,
    label_target,
    mark_validated,
    registry_states,
    state_of,
    stop_servers,
    take_off,
    world_environment,
    write_embedded_profile,
)

DEADLINE_S = 60.0  # generous: 2 shared cores; every wait polls, nothing asserts on time

MakeRelease = Callable[[Mapping[int, Flavor | str]], Release]


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def template_models(tmp_path_factory: pytest.TempPathFactory) -> TemplateModels:
    """The good, good_alt and bad SavedModels, built once per session."""
    return build_template_models(tmp_path_factory.mktemp("template_models"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[CoreWorld]:
    """A pipeline home with staging and production running for the whole module; both stopped at the end."""
    root = tmp_path_factory.mktemp("core_world")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in world_environment(root).items():
            patch.setenv(key, value)
        patch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
        patch.delenv("PIPELINE_REGISTRY_URL", raising=False)
        write_embedded_profile(root / "configs")
        paths = get_paths(root / "home")
        starting = ServerStart(paths)
        try:
            # The servers import TensorFlow while this process does and builds the SavedModels: they overlap.
            world = CoreWorld.create(root, request.getfixturevalue("template_models"))
            starting.wait()
            yield world
        finally:
            starting.join()  # a start still running must end before the stop, or its server would outlive us
            stop_servers(paths)


@pytest.fixture
def make_release(world: CoreWorld) -> Iterator[MakeRelease]:
    """``make_release({1: GOOD, 2: BAD})``: a fresh model with those versions exported and registered.

    Afterwards the model is taken off both servers (so a later test, or production's restart, never loads it
    again) and its clients are closed.
    """
    made: list[Release] = []

    def make(versions: Mapping[int, Flavor | str]) -> Release:
        release = world.new_release(versions)
        made.append(release)
        return release

    yield make
    for release in made:
        for instance in (STAGING, PRODUCTION):
            take_off(world.backend(instance), release.model, DEADLINE_S)
        release.close()


# ---- helpers ---------------------------------------------------------------------------------------------------


def serve(release: Release, instance: str, versions: list[int], labels: dict[str, int]) -> ServedState:
    """Make ``instance`` serve exactly ``versions`` with ``labels`` for the release's model."""
    return change_served_state(release.backend(instance), release.model, release.base_path, versions, labels,
                               DEADLINE_S, registry=release.registry)


@dataclass(frozen=True)
class Phase:
    """One config a change pushed, and what the server served once that push returned."""

    asked: ServedState
    available: tuple[int, ...]
    stable: int | None


def record_phases(monkeypatch: pytest.MonkeyPatch, release: Release, instance: str) -> list[Phase]:
    """Record every config pushed to ``instance`` through the release's backend, and the server's state after it."""
    backend: ServingBackend = release.backend(instance)
    real_apply = backend.apply_config
    phases: list[Phase] = []

    def apply_and_observe(config: mc.ModelServerConfig, timeout_s: float = DEADLINE_S) -> None:
        real_apply(config, timeout_s)
        phases.append(Phase(served_state(backend, release.model), available_versions(release, instance),
                            label_target(release, instance, STABLE)))

    monkeypatch.setattr(backend, "apply_config", apply_and_observe)
    return phases


@dataclass(frozen=True)
class ProductionSnapshot:
    """Everything about a model's production that a refused action must leave as it was."""

    config_text: str
    state: ServedState
    available: tuple[int, ...]
    stable: int | None
    registry: dict[int, State]


def snapshot_production(release: Release) -> ProductionSnapshot:
    """Production's models.config, served state, loaded versions and label, and the registry, now."""
    return ProductionSnapshot(release.backend(PRODUCTION).config_path.read_text(), production_state(release),
                              available_versions(release, PRODUCTION), label_target(release, PRODUCTION, STABLE),
                              registry_states(release))


def stable_answer(release: Release, version_for_inputs: int) -> Flavor | None:
    """Which flavor answers through production's ``stable`` label now."""
    inputs = first_golden_input(release, version_for_inputs)
    outputs = release.client(PRODUCTION).predict(release.model, instances=inputs, label=STABLE)
    return flavor_answering(np.asarray(outputs["probabilities"]), inputs)


def read_verdict(release: Release, version: int, gate: str) -> dict:
    """The verdict a gate wrote for ``version``."""
    return json.loads(release.verdict_path(version, gate).read_text())


# ---- serving_state: the two phases, removal, refusals, availability ---------------------------------------------


def test_a_change_loads_new_versions_beside_the_old_then_serves_only_the_new(make_release, monkeypatch):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    serve(release, PRODUCTION, [1], {STABLE: 1})
    phases = record_phases(monkeypatch, release, PRODUCTION)

    result = serve(release, PRODUCTION, [2], {STABLE: 2})

    assert result == ServedState((2,), {STABLE: 2})
    assert phases == [
        # phase 1: version 2 loads beside 1 while stable still names 1
        Phase(ServedState((1, 2), {STABLE: 1}), available=(1, 2), stable=1),
        # phase 2: exactly the new set, with the new labels
        Phase(ServedState((2,), {STABLE: 2}), available=(2,), stable=2),
    ]
    assert stable_answer(release, 2) == GOOD_ALT


def test_a_change_that_loads_nothing_new_is_one_step(make_release, monkeypatch):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    serve(release, PRODUCTION, [1, 2], {STABLE: 1, CANARY: 2})
    phases = record_phases(monkeypatch, release, PRODUCTION)

    serve(release, PRODUCTION, [1], {STABLE: 1})

    assert phases == [Phase(ServedState((1,), {STABLE: 1}), available=(1,), stable=1)]
    assert label_target(release, PRODUCTION, CANARY) is None


def test_removing_a_model_unloads_it_and_leaves_other_models_served(make_release):
    gone, kept = make_release({1: GOOD}), make_release({1: GOOD})
    serve(gone, PRODUCTION, [1], {STABLE: 1})
    serve(kept, PRODUCTION, [1], {STABLE: 1})

    assert serve(gone, PRODUCTION, [], {}) == ServedState((), {})

    backend = gone.backend(PRODUCTION)
    assert gone.model not in [m.name for m in backend.read_config().model_config_list.config]
    assert served_state(backend, gone.model) == ServedState((), {})
    assert available_versions(gone, PRODUCTION) == ()
    assert served_state(backend, kept.model) == ServedState((1,), {STABLE: 1})
    assert available_versions(kept, PRODUCTION) == (1,)


def test_labels_without_versions_are_refused_and_change_nothing(make_release):
    release = make_release({1: GOOD})
    serve(release, PRODUCTION, [1], {STABLE: 1})
    before = snapshot_production(release)

    with pytest.raises(ValueError, match="need versions"):
        serve(release, PRODUCTION, [], {STABLE: 1})

    assert snapshot_production(release) == before


def test_a_version_modified_after_export_is_never_served(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT, 3: GOOD})
    serve(release, PRODUCTION, [1], {STABLE: 1})
    before = snapshot_production(release)
    # Someone with write access to the models swaps version 2's weights for version 3's (another model's bytes).
    weights = next((release.version_dir(2) / "variables").glob("variables.data-*"))
    weights.write_bytes(next((release.version_dir(3) / "variables").glob("variables.data-*")).read_bytes())

    with pytest.raises(VersionTampered, match="version 2 was modified after its export"):
        serve(release, PRODUCTION, [1, 2], {STABLE: 1, CANARY: 2})
    assert snapshot_production(release) == before  # nothing loaded, nothing moved
    with pytest.raises(VersionTampered):
        deploy_to_staging(release, 2, "run-tampered")
    assert state_of(release, 2) == State.REJECTED  # staging says why in the registry
    assert "modified after its export" in release.registry.history(release.model)[0].reason
    serve(release, PRODUCTION, [3], {STABLE: 3})  # an intact version still goes through


def test_requests_through_stable_never_fail_while_it_moves(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    serve(release, PRODUCTION, [1], {STABLE: 1})

    with LabelTraffic(release, PRODUCTION, STABLE, first_golden_input(release, 1)) as traffic:
        traffic.wait_for(GOOD, 5)
        serve(release, PRODUCTION, [2], {STABLE: 2})
        traffic.wait_for(GOOD_ALT, 5)  # the switch reached clients while they kept asking
        serve(release, PRODUCTION, [1], {STABLE: 1})
        traffic.wait_for(GOOD, 5)

    assert traffic.failures == []
    assert None not in traffic.answers  # every answer came from one of the two versions, none garbled


# ---- canary: promote, check, finalize, roll back, gate ---------------------------------------------------------


def test_promote_canary_loads_it_beside_stable(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    mark_validated(release, 2)

    assert promote_canary(release, 2, run_id="run-2") == {"version": 2, "stable": 1}

    assert production_state(release) == ServedState((1, 2), {STABLE: 1, CANARY: 2})
    assert available_versions(release, PRODUCTION) == (1, 2)
    assert (label_target(release, PRODUCTION, STABLE), label_target(release, PRODUCTION, CANARY)) == (1, 2)
    assert state_of(release, 2) is State.CANARY
    assert release.registry.stable_version(release.model) == 1


def test_promote_canary_refuses_a_version_that_did_not_pass_staging(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    before = snapshot_production(release)

    with pytest.raises(RegistryConflict, match="from exported to canary"):
        promote_canary(release, 2)

    assert snapshot_production(release) == before


def test_check_canary_blesses_a_canary_that_agrees_with_stable(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    mark_validated(release, 2)
    promote_canary(release, 2)

    verdict = check_canary(release, 2)

    assert verdict.blessed, verdict.reasons
    assert verdict.figures["agreement"] == 1.0 and verdict.figures["served_accuracy"] == 1.0
    assert verdict.figures["golden_max_abs_diff_rest"] <= release.config.serving.golden_tolerance
    assert read_verdict(release, 2, "canary")["status"] == "BLESSED"


def test_check_canary_fails_a_canary_that_disagrees_and_leaves_production_alone(make_release):
    release = make_release({1: GOOD, 2: BAD})
    as_if_released(release, 1)
    mark_validated(release, 2)
    promote_canary(release, 2)
    before = snapshot_production(release)

    verdict = check_canary(release, 2)

    assert not verdict.blessed
    reasons = "; ".join(verdict.reasons)
    assert "agrees with" in reasons and "accuracy through serving" in reasons
    assert verdict.figures["agreement"] == 0.0
    assert read_verdict(release, 2, "canary")["status"] == "NOT_BLESSED"
    assert snapshot_production(release) == before  # judging is not acting: the gate rolls back, not the check


def test_finalize_moves_stable_keeps_the_previous_loaded_and_applies_retention(make_release, world):
    release = make_release({1: GOOD, 2: GOOD_ALT, 3: GOOD})
    as_if_released(release, 1, 2, 3)
    world.add_version(release, 4, GOOD_ALT)  # a fourth version on disk: one more than keep_versions (3)
    mark_validated(release, 4)
    promote_canary(release, 4)

    result = finalize_release(release, 4, run_id="run-4")

    assert result == {"stable": 4, "previous": 3, "retired": [1]}
    assert production_state(release) == ServedState((3, 4), {STABLE: 4})  # 3 stays loaded: instant rollback
    assert available_versions(release, PRODUCTION) == (3, 4)
    assert label_target(release, PRODUCTION, STABLE) == 4
    assert registry_states(release) == {1: State.RETIRED, 2: State.SUPERSEDED, 3: State.SUPERSEDED,
                                        4: State.PROMOTED}
    assert not release.version_dir(1).exists()
    assert all(release.version_dir(v).exists() for v in (2, 3, 4))


def test_finalize_refuses_when_the_canary_label_points_elsewhere(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    mark_validated(release, 2)
    before = snapshot_production(release)

    with pytest.raises(ValidationFailed, match="not finalizing"):
        finalize_release(release, 2)

    assert snapshot_production(release) == before


def test_rollback_canary_unloads_the_canary_and_leaves_stable_untouched(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    mark_validated(release, 2)
    promote_canary(release, 2)

    result = rollback_canary(release, 2, ["agreement too low"], run_id="run-2")

    assert result == {"rolled_back": 2, "stable": 1}
    assert production_state(release) == ServedState((1,), {STABLE: 1})
    assert available_versions(release, PRODUCTION) == (1,)
    assert label_target(release, PRODUCTION, CANARY) is None
    assert stable_answer(release, 1) == GOOD
    assert registry_states(release) == {1: State.PROMOTED, 2: State.ROLLED_BACK}
    rolled = [t for t in release.registry.history(release.model) if t.to_state is State.ROLLED_BACK]
    assert [t.reason for t in rolled] == ["agreement too low"]

    again = rollback_canary(release, 2, ["retried"])  # idempotent: an Airflow retry changes nothing
    assert again == {"rolled_back": 2, "stable": 1}
    assert production_state(release) == ServedState((1,), {STABLE: 1})


def test_rollback_canary_of_a_first_release_takes_the_model_off_production(make_release):
    release = make_release({1: GOOD})
    mark_validated(release, 1)
    promote_canary(release, 1)
    assert production_state(release) == ServedState((1,), {CANARY: 1})

    assert rollback_canary(release, 1, ["first canary failed"]) == {"rolled_back": 1, "stable": None}

    assert production_state(release) == ServedState((), {})
    assert release.model not in [m.name for m in release.backend(PRODUCTION).read_config().model_config_list.config]
    assert available_versions(release, PRODUCTION) == ()
    assert state_of(release, 1) is State.ROLLED_BACK


def test_canary_gate_rolls_back_a_bad_canary_at_once(make_release):
    release = make_release({1: GOOD, 2: BAD})
    as_if_released(release, 1)
    mark_validated(release, 2)
    promote_canary(release, 2)

    with pytest.raises(ValidationFailed, match=r"canary: NOT_BLESSED.*rolled back: production serves stable 1"):
        canary_gate(release, 2, run_id="run-2")

    assert production_state(release) == ServedState((1,), {STABLE: 1})
    assert available_versions(release, PRODUCTION) == (1,)
    assert registry_states(release) == {1: State.PROMOTED, 2: State.ROLLED_BACK}


def test_canary_gate_passes_a_good_canary_and_leaves_it_serving(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1)
    mark_validated(release, 2)
    promote_canary(release, 2)

    verdict = canary_gate(release, 2, run_id="run-2")

    assert verdict.blessed, verdict.reasons
    assert production_state(release) == ServedState((1, 2), {STABLE: 1, CANARY: 2})
    assert state_of(release, 2) is State.CANARY  # finalize, not the gate, makes it stable


# ---- on-call rollback and its refusals --------------------------------------------------------------------------


def test_rollback_goes_to_the_last_good_version(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1, 2)
    assert stable_answer(release, 1) == GOOD_ALT

    result = rollback(release, run_id="oncall-1")

    assert (result["from"], result["to"], result["dropped_canary"]) == (2, 1, None)
    assert production_state(release) == ServedState((1,), {STABLE: 1})
    assert available_versions(release, PRODUCTION) == (1,)
    assert stable_answer(release, 1) == GOOD
    assert registry_states(release) == {1: State.PROMOTED, 2: State.ROLLED_BACK}


def test_rollback_to_an_explicit_version(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT, 3: GOOD_ALT})
    as_if_released(release, 1, 2, 3)

    result = rollback(release, to_version=1, run_id="oncall-2")

    assert (result["from"], result["to"]) == (3, 1)
    assert production_state(release) == ServedState((1,), {STABLE: 1})
    assert stable_answer(release, 1) == GOOD
    assert registry_states(release) == {1: State.PROMOTED, 2: State.SUPERSEDED, 3: State.ROLLED_BACK}


@pytest.mark.parametrize(("released", "to_version", "error", "message"), [
    pytest.param([1], None, NotFound, "no earlier good version", id="no-earlier-good-version"),
    pytest.param([1, 2], 9, NotFound, "not on disk", id="not-on-disk"),
    pytest.param([1, 2], 3, ValidationFailed, "never passed staging validation", id="never-validated"),
    pytest.param([1, 2], 2, ValidationFailed, "already stable", id="already-stable"),
])
def test_a_refused_rollback_leaves_production_unchanged(make_release, released, to_version, error, message):
    release = make_release({1: GOOD, 2: GOOD_ALT, 3: GOOD})
    as_if_released(release, *released)
    release.registry.transition(release.model, 3, State.REJECTED, reason="failed staging")
    before = snapshot_production(release)

    with pytest.raises(error, match=message):
        choose_rollback_target(release, release.registry.stable_version(release.model), to_version)
    with pytest.raises(error, match=message):
        rollback(release, to_version=to_version, run_id="oncall-refused")

    assert snapshot_production(release) == before
    assert release.registry.lock_holder(release.model) is None


def test_a_refused_rollback_names_the_versions_allowed_and_how_to_choose_one(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT, 3: GOOD})
    as_if_released(release, 1, 2)
    release.registry.transition(release.model, 3, State.REJECTED, reason="failed staging")

    assert rollback_targets(release, 2) == [1]
    with pytest.raises(ValidationFailed) as refused:
        choose_rollback_target(release, 2, 3)
    assert "choose one of 1 (to_version in the model_rollback form, --to N from the CLI)" in str(refused.value)


# ---- the scheduled probe of stable -------------------------------------------------------------------------------


def test_monitor_passes_a_healthy_stable(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1, 2)
    before = snapshot_production(release)

    result = monitor(release, run_id="probe-ok")

    assert result["healthy"] is True and result["stable"] == 2
    assert snapshot_production(release) == before


def test_monitor_rolls_back_a_broken_stable_to_the_last_good_version(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1, 2)
    golden_path = release.version_dir(2) / "assets.extra" / "golden.json"
    golden = json.loads(golden_path.read_text())
    golden["probabilities"] = [[1.0 - p for p in row] for row in golden["probabilities"]]  # stable now "differs"
    golden_path.write_text(json.dumps(golden))

    assert probe_stable(release).blessed is False
    result = monitor(release, run_id="probe-bad")

    assert result["healthy"] is False
    assert "differ from offline" in "; ".join(result["reasons"])
    assert (result["rollback"]["from"], result["rollback"]["to"]) == (2, 1)
    assert production_state(release) == ServedState((1,), {STABLE: 1})
    assert registry_states(release) == {1: State.PROMOTED, 2: State.ROLLED_BACK}


def test_probe_stable_with_nothing_in_production_passes(make_release):
    release = make_release({1: GOOD})

    verdict = probe_stable(release)

    assert verdict.blessed and verdict.figures["stable"] is None


@pytest.mark.slow  # restarting production imports TensorFlow again: ~10 s
def test_monitor_starts_a_stopped_production_then_probes_it_healthy(make_release, world):
    release = make_release({1: GOOD, 2: GOOD_ALT})
    as_if_released(release, 1, 2)
    config_text = release.backend(PRODUCTION).config_path.read_text()
    world.backend(PRODUCTION).stop()
    assert not world.backend(PRODUCTION).is_running()

    result = monitor(release, run_id="probe-after-crash")  # this context never made a client: none is stale

    assert result["healthy"] is True and result["stable"] == 2  # a dead process is not a bad model
    assert world.backend(PRODUCTION).is_running()
    assert release.backend(PRODUCTION).config_path.read_text() == config_text
    assert available_versions(release, PRODUCTION) == (1, 2)
    assert label_target(release, PRODUCTION, STABLE) == 2
    assert registry_states(release) == {1: State.SUPERSEDED, 2: State.PROMOTED}


# ---- staging ------------------------------------------------------------------------------------------------------


def test_staging_blesses_a_good_version_and_serves_only_the_one_under_test(make_release):
    release = make_release({1: GOOD, 2: GOOD_ALT})

    deployed = deploy_to_staging(release, 1, run_id="run-1")

    assert deployed["version"] == 1
    assert served_state(release.backend(STAGING), release.model) == ServedState((1,), {})
    assert state_of(release, 1) is State.STAGED
    verdict = validate_on_staging(release, 1, run_id="run-1")
    assert verdict.blessed, verdict.reasons
    tolerance = release.config.serving.golden_tolerance
    assert verdict.figures["golden_max_abs_diff_rest"] <= tolerance
    assert verdict.figures["golden_max_abs_diff_grpc"] <= tolerance
    assert verdict.figures["served_accuracy"] == 1.0 and verdict.figures["sample_size"] == 60
    assert 400 <= verdict.figures["malformed_status"] < 500
    assert state_of(release, 1) is State.VALIDATED
    assert read_verdict(release, 1, "staging")["status"] == "BLESSED"

    deploy_to_staging(release, 2, run_id="run-2")
    assert served_state(release.backend(STAGING), release.model) == ServedState((2,), {})
    assert available_versions(release, STAGING) == (2,)
    assert production_state(release) == ServedState((), {})  # staging never touches production


def test_staging_rejects_a_version_that_fails_to_load(make_release):
    release = make_release({1: BROKEN})

    with pytest.raises(PipelineError, match=r"version: 1\} failed: INVALID_ARGUMENT"):
        deploy_to_staging(release, 1, run_id="run-1")

    assert state_of(release, 1) is State.REJECTED
    reasons = [t.reason for t in release.registry.history(release.model) if t.to_state is State.REJECTED]
    assert len(reasons) == 1 and reasons[0].startswith("staging could not load it")
    assert production_state(release) == ServedState((), {})


def test_a_version_that_fails_to_load_leaves_the_server_as_it_was(make_release):
    """A failed load must not stay pinned: it would fail every later change of the instance, for every model."""
    release = make_release({1: BROKEN, 2: GOOD})
    other = make_release({1: GOOD})
    serve(other, STAGING, [1], {})
    before = release.backend(STAGING).read_config()

    with pytest.raises(PipelineError, match="failed"):
        deploy_to_staging(release, 1, run_id="run-1")

    assert release.backend(STAGING).read_config() == before  # the broken version is not left in models.config
    deploy_to_staging(release, 2, run_id="run-2")  # the next change of the same instance works
    assert available_versions(release, STAGING) == (2,)
    assert serve(other, STAGING, [1], {"stable": 1}).labels == {"stable": 1}  # and so does another model's


def test_a_canary_that_fails_to_load_leaves_production_on_stable(make_release):
    release = make_release({1: GOOD, 2: BROKEN})
    as_if_released(release, 1)
    mark_validated(release, 2)
    before = snapshot_production(release)

    with pytest.raises(PipelineError, match="failed"):
        promote_canary(release, 2)

    assert snapshot_production(release) == before
    assert rollback_canary(release, 2, ["never loaded"])["stable"] == 1  # restore_production's path still works


def test_staging_rejects_a_version_whose_served_predictions_are_wrong(make_release):
    release = make_release({1: BAD})
    deploy_to_staging(release, 1, run_id="run-1")

    verdict = validate_on_staging(release, 1, run_id="run-1")

    assert not verdict.blessed
    assert "accuracy through serving" in "; ".join(verdict.reasons)
    assert verdict.figures["served_accuracy"] == 0.0
    assert state_of(release, 1) is State.REJECTED
    assert not release.registry.passed_validation(release.model, 1)


# ---- reading state never starts a server ----------------------------------------------------------------------------


@pytest.fixture
def idle_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Release]:
    """A release context in a fresh home where no server runs; anything a broken read started is stopped after."""
    for key, value in world_environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    write_embedded_profile(tmp_path / "configs")
    (tmp_path / "home").mkdir()
    release = Release(core_model_config("core_idle"), paths=get_paths(tmp_path / "home"))
    yield release
    release.close()
    stop_servers(release.paths)


def test_reading_production_state_never_starts_a_server(idle_release):
    release = idle_release
    production, staging = release.backend(PRODUCTION), release.backend(STAGING)

    assert production_state(release) == ServedState((), {})  # no models.config yet
    # What a stopped production leaves behind: a models.config naming the model.
    config = mc.set_model_versions(mc.single_model_config(release.model, release.base_path), release.model,
                                   [1, 2], {STABLE: 2})
    mc.write_config(production.config_path, config)
    assert production_state(release) == ServedState((1, 2), {STABLE: 2})
    assert served_state(staging, release.model) == ServedState((), {})
    status = model_status(release)
    assert status["servers"][PRODUCTION]["versions"] == [1, 2]

    assert not production.is_running() and not staging.is_running()
    assert status["servers"][PRODUCTION]["running"] is False
    with pytest.raises(NotFound, match="not running"):
        release.client(PRODUCTION)
