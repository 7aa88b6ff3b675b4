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


# ---- a real PostgreSQL server for the registry's tests (and SQLite beside it) ---------------------------------------

POSTGRES_URL_ENV = "PIPELINE_TEST_POSTGRES_URL"  # a scratch database of your own instead of the throw-away server


@pytest.fixture(scope="session")
def postgres_server():
    """One throw-away PostgreSQL server for the session (None when ``$PIPELINE_TEST_POSTGRES_URL`` is set);
    skipped, naming what is missing, where the server binaries are not installed."""
    import os

    from tests.release.postgres_server import PostgresServer, missing_reason

    if os.environ.get(POSTGRES_URL_ENV):
        yield None
        return
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh empty database on the session's server (or the override's database, emptied of registry tables)."""
    import os

    if postgres_server is None:
        import sqlalchemy as sa

        from pipeline.release.registry import _metadata

        url = os.environ[POSTGRES_URL_ENV]
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            _metadata.drop_all(conn)
        engine.dispose()
        yield url
        return
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def registry_url(request, tmp_path) -> str:
    """The registry's URL on each backend the product supports: SQLite in a temp dir, a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")
