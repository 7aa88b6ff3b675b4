"""The release world fixture: its own pipeline home, small model configs, embedded servers on free ports."""

from __future__ import annotations

import pytest

from tests.worlds import write_world


@pytest.fixture
def release_world(tmp_path, monkeypatch):
    """Point the pipeline at a fresh world; stop its servers afterwards."""
    home = write_world(tmp_path)
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)
    yield tmp_path
    from pipeline.serving.backends import get_backend

    for name in ("staging", "production"):
        get_backend(name).stop()
