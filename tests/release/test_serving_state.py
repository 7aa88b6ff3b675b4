"""serving_state's content check, without a server: a version is served only while its files have the content hash
the registry recorded at export; one registered before hashes were is served with one warning. (The two-phase
change itself runs against real servers in test_release_core.py, where a tampered version is refused too.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.export import CONTENT_HASH_KEY, content_sha256
from pipeline.release import serving_state
from pipeline.release.registry import Registry
from pipeline.release.serving_state import VersionTampered, change_served_state, verify_content
from pipeline.serving.backends.base import ServingBackend

MODEL = "hashed"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    yield registry
    registry.close()


def _version(base: Path, version: int, payload: bytes = b"weights") -> Path:
    path = base / str(version)
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph")
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(payload)
    return path


def _register(registry: Registry, version: int, digest: str | None) -> None:
    lineage = {"airflow_run_id": f"run-{version}", **({CONTENT_HASH_KEY: digest} if digest else {})}
    registry.register_version(MODEL, version, lineage)


def test_an_unchanged_version_passes_and_a_modified_one_is_refused(registry: Registry, tmp_path: Path) -> None:
    base = tmp_path / "models" / MODEL
    path = _version(base, 1)
    _register(registry, 1, content_sha256(path))
    verify_content(registry, MODEL, base, [1])

    (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"weightz")  # same size, one byte
    with pytest.raises(VersionTampered, match=r"version 1 was modified after its export.*nothing was changed"):
        verify_content(registry, MODEL, base, [1])


def test_a_version_whose_directory_is_gone_or_replaced_is_refused(registry: Registry, tmp_path: Path) -> None:
    base = tmp_path / "models" / MODEL
    _register(registry, 1, content_sha256(_version(base, 1)))
    _register(registry, 2, content_sha256(_version(base, 2, b"other weights")))
    (base / "1").rename(tmp_path / "elsewhere")
    with pytest.raises(VersionTampered, match="directory .* is gone"):
        verify_content(registry, MODEL, base, [2, 1])
    (base / "2").rename(base / "1")  # someone else's SavedModel under version 1's number
    with pytest.raises(VersionTampered, match="version 1 was modified"):
        verify_content(registry, MODEL, base, [1])


def test_an_unhashed_version_is_served_with_one_warning(registry: Registry, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / "models" / MODEL
    _version(base, 7)
    _register(registry, 7, None)  # registered before hashes were recorded
    _version(base, 8)  # not registered at all
    serving_state._warned_unhashed.clear()
    with caplog.at_level(logging.WARNING, logger=serving_state.__name__):
        for _ in range(3):
            verify_content(registry, MODEL, base, [7, 8])
    warnings = [r.getMessage() for r in caplog.records if "no content hash" in r.getMessage()]
    assert len(warnings) == 2 and "version 7" in warnings[0] and "version 8" in warnings[1]


class _Untouchable(ServingBackend):
    """A backend that fails the test if anything tries to start it or change what it serves."""

    name = "production"

    @property
    def config_path(self) -> Path:
        raise AssertionError("read")

    def start(self, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        raise AssertionError("started")

    def endpoint(self):  # type: ignore[no-untyped-def]
        raise AssertionError("reached")

    def stop(self) -> None:
        raise AssertionError("stopped")

    def is_running(self) -> bool:
        raise AssertionError("asked")


def test_change_served_state_refuses_before_touching_the_server(registry: Registry, tmp_path: Path) -> None:
    base = tmp_path / "models" / MODEL
    path = _version(base, 1)
    _register(registry, 1, content_sha256(path))
    (path / "extra.txt").write_text("planted")
    with pytest.raises(VersionTampered):
        change_served_state(_Untouchable(), MODEL, base, [1], {"stable": 1}, 10.0, registry=registry)
