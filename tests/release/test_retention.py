"""Model retention: what is planned for deletion and how version directories are deleted."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.release import retention
from pipeline.release.registry import Registry, State
from pipeline.release.retention import apply_retention, plan_retention
from pipeline.wire.version_dirs import list_versions as versions_on_disk

_MODEL = "mnist"
_PATH_TO_STABLE = (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    yield reg
    reg.close()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "models" / _MODEL


def _make_version_dir(base: Path, version: int) -> None:
    (base / str(version) / "variables").mkdir(parents=True)
    (base / str(version) / "saved_model.pb").write_bytes(b"graph")


def _release(registry: Registry, version: int, until: State) -> None:
    registry.register_version(_MODEL, version, {"airflow_run_id": f"run-{version}"})
    for state in _PATH_TO_STABLE[: _PATH_TO_STABLE.index(until) + 1]:
        registry.transition(_MODEL, version, state)


# --------------------------------------------------------------------- plan


def test_plan_keeps_the_newest() -> None:
    assert plan_retention([3, 1, 5, 2, 4], keep=2, protected=set()) == [1, 2, 3]


def test_plan_never_deletes_a_protected_version_and_does_not_count_it() -> None:
    assert plan_retention(range(1, 11), keep=3, protected={2, 9}) == [1, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("versions", [[], [1], [1, 2, 3]])
def test_plan_deletes_nothing_when_there_are_no_more_than_keep(versions: list[int]) -> None:
    assert plan_retention(versions, keep=3, protected=set()) == []


def test_plan_ignores_duplicates() -> None:
    assert plan_retention([1, 1, 2, 2, 3], keep=1, protected=set()) == [1, 2]


@pytest.mark.parametrize("keep", [0, -1])
def test_plan_refuses_to_keep_nothing(keep: int) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        plan_retention([1, 2], keep=keep, protected=set())


def test_plan_invariants_on_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(200):
        versions = set(rng.sample(range(1, 40), rng.randint(0, 20)))
        protected = set(rng.sample(range(1, 40), rng.randint(0, 5)))
        keep = rng.randint(1, 6)
        doomed = plan_retention(versions, keep, protected)

        newest = set(sorted(versions)[-keep:])
        assert doomed == sorted(doomed) and set(doomed) <= versions
        assert not set(doomed) & (protected | newest)
        # and nothing else survives: a kept version is one of the newest or protected
        assert all(v in newest or v in protected for v in versions - set(doomed))


# ------------------------------------------------------------------- on disk


def test_versions_on_disk_lists_only_numeric_directories(base: Path) -> None:
    for version in (10, 2):
        _make_version_dir(base, version)
    (base / ".tmp-export-3").mkdir()
    (base / "7").write_text("a file, not a version")

    assert versions_on_disk(base) == [2, 10]
    assert versions_on_disk(base / "missing") == []


# --------------------------------------------------------------------- apply


def test_apply_deletes_old_versions_and_records_them_retired(base: Path, registry: Registry) -> None:
    for version in range(1, 7):
        _make_version_dir(base, version)
        _release(registry, version, until=State.PROMOTED if version <= 5 else State.CANARY)
    # stable 5, canary 6, last good 4: kept by the registry even though the caller protects only 1

    deleted = apply_retention(base, _MODEL, registry, keep=2, protected={1}, run_id="cleanup-1")

    assert deleted == [2, 3]
    assert versions_on_disk(base) == [1, 4, 5, 6]
    assert sorted(p.name for p in base.iterdir()) == ["1", "4", "5", "6"]  # no trash left behind
    for version in (2, 3):
        assert registry.get_version(_MODEL, version).state is State.RETIRED
    retired = registry.history(_MODEL, limit=1)[0]
    assert (retired.to_state, retired.run_id) == (State.RETIRED, "cleanup-1")
    assert "retention" in retired.reason


def test_apply_never_deletes_what_the_registry_protects(base: Path, registry: Registry) -> None:
    for version in range(1, 5):
        _make_version_dir(base, version)
        _release(registry, version, until=State.PROMOTED)
    registry.record_rollback(_MODEL, 4, restore_version=2)  # stable 2 now; its rollback target is 1

    deleted = apply_retention(base, _MODEL, registry, keep=1, protected=set())

    assert deleted == [3]
    assert versions_on_disk(base) == [1, 2, 4]


def test_apply_deletes_unregistered_versions_without_a_record(base: Path, registry: Registry) -> None:
    for version in (1, 2):
        _make_version_dir(base, version)

    assert apply_retention(base, _MODEL, registry, keep=1, protected=set()) == [1]
    assert versions_on_disk(base) == [2]
    assert registry.history(_MODEL) == []


def test_a_version_vanishes_at_once_before_its_files_go(
    base: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in (1, 2):
        _make_version_dir(base, version)
    seen: list[tuple[str, list[int]]] = []
    real_rmtree = retention.shutil.rmtree

    def watching_rmtree(path: Path, *args: object, **kwargs: object) -> None:
        seen.append((Path(path).name, versions_on_disk(base)))
        real_rmtree(path)

    monkeypatch.setattr(retention.shutil, "rmtree", watching_rmtree)
    apply_retention(base, _MODEL, registry, keep=1, protected=set())

    [(removed, visible)] = seen
    assert not removed.isdigit()  # TF Serving ignores a non-numeric directory
    assert visible == [2]  # version 1 was already gone, whole, when its files started to go


def test_an_interrupted_removal_is_finished_by_the_next_run(
    base: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in (1, 2):
        _make_version_dir(base, version)
        _release(registry, version, until=State.VALIDATED)

    def failing_rmtree(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(f"busy: {path}")

    with monkeypatch.context() as patch:
        patch.setattr(retention.shutil, "rmtree", failing_rmtree)
        assert apply_retention(base, _MODEL, registry, keep=1, protected=set()) == [1]
    assert versions_on_disk(base) == [2]  # invisible to TF Serving even though its files remain
    assert registry.get_version(_MODEL, 1).state is State.RETIRED
    assert any(p.name.startswith(".trash-1-") for p in base.iterdir())

    assert apply_retention(base, _MODEL, registry, keep=1, protected=set()) == []
    assert sorted(p.name for p in base.iterdir()) == ["2"]
