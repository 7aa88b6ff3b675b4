"""The models pages sit behind Airflow's own login: the API server's user dependency, the UI's JWT cookie."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.ui.conftest import PREFIX, FakeAirflow, mounted
from tests.ui.world import MODEL, SHA

BROWSER = {"Accept": "text/html,application/xhtml+xml"}
PAGES = ["/models", f"/models/{MODEL}", f"/models/{MODEL}/versions/2/verdicts/staging",
         f"/models/{MODEL}/versions/4/live.png", f"/reports/{MODEL}/data/{SHA}/index.html",
         f"/reports/{MODEL}/runs/train-2/training_curve.png",
         f"/runs/report?dag_id={MODEL}_release&run_id=r&task_id=train&kind=training_curve"]


@pytest.fixture
def auth_manager(tmp_path, monkeypatch):
    """Airflow's configured auth manager (the simple one), signing with a secret of this test."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))  # only matters if Airflow is not imported yet
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "the-secret-of-this-test")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    from airflow.api_fastapi import app as api_app
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager

    def forget_keys() -> None:  # Airflow caches its JWT signer and validator, with the secret, per process
        for name in ("_get_token_signer", "_get_token_validator"):
            getattr(BaseAuthManager, name).__func__.cache_clear()

    forget_keys()
    monkeypatch.setattr(api_app._AuthManagerState, "instance", None)
    yield api_app.create_auth_manager()
    forget_keys()


@pytest.fixture
def anonymous(world, auth_manager):
    """A client of the app as the plugin builds it: Airflow's own user dependency and login page."""
    from fastapi.testclient import TestClient

    from pipeline.ui.app import create_app

    airflow = FakeAirflow()
    with TestClient(mounted(create_app(world.paths, airflow, api_root="/"))) as client:
        yield client, airflow


@pytest.mark.parametrize("page", PAGES)
def test_without_the_uis_token_an_api_client_gets_401(anonymous, page):
    client, _ = anonymous
    reply = client.get(f"{PREFIX}{page}", follow_redirects=False)
    assert reply.status_code == 401 and reply.json() == {"detail": "Not authenticated"}


def test_without_the_uis_token_a_browser_goes_to_airflows_login_and_comes_back_into_the_ui(anonymous):
    client, _ = anonymous
    reply = client.get(f"{PREFIX}/models/{MODEL}?history=all", headers=BROWSER, follow_redirects=False)
    assert reply.status_code == 303
    after = "/plugin/models/pipeline/models/mnist?history=all"  # the page framed in Airflow's navigation
    assert reply.headers["location"] == f"/auth/login?next={quote(after, safe='')}"


@pytest.mark.parametrize("token", ["not-a-jwt", "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"])
def test_a_forged_token_is_refused(anonymous, token):
    client, _ = anonymous
    reply = client.get(f"{PREFIX}/models", cookies={"_token": token}, follow_redirects=False)
    assert reply.status_code == 403
    browser = client.get(f"{PREFIX}/models", cookies={"_token": token}, headers=BROWSER, follow_redirects=False)
    assert browser.status_code == 303 and browser.headers["location"].startswith("/auth/login?next=")


def test_a_token_signed_with_another_secret_is_refused(anonymous):
    import time

    import jwt

    client, _ = anonymous
    now = int(time.time())
    claims = {"sub": "admin", "role": "admin", "aud": "apache-airflow", "nbf": now, "iat": now, "exp": now + 600,
              "jti": "x" * 32}
    forged = jwt.encode(claims, "someone-elses-secret", algorithm="HS512")
    assert client.get(f"{PREFIX}/models", cookies={"_token": forged}).status_code == 403


def test_a_rollback_without_the_token_triggers_nothing(anonymous):
    client, airflow = anonymous
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": "1", "reason": "x"})
    assert reply.status_code == 401 and airflow.triggered == []


def test_the_uis_token_opens_the_pages_and_is_what_the_rollback_is_triggered_with(anonymous, auth_manager,
                                                                                  monkeypatch):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    # The one database read of a valid token (is it revoked?) has no Airflow database here; the browser test
    # (test_models_page_in_a_browser.py) logs in against a real one.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))
    client, airflow = anonymous
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="alice", role="admin"))
    client.cookies.set("_token", token)
    assert client.get(f"{PREFIX}/models").status_code == 200
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": "1", "reason": "x"},
                        follow_redirects=False)
    assert reply.status_code == 303
    assert airflow.triggered == [(token, "model_rollback", {"model": MODEL, "to_version": 1,
                                                            "reason": "x (by alice from the models page)"})]
    client.cookies.clear()  # an API client: the same token as a bearer header
    assert client.get(f"{PREFIX}/models").status_code == 401
    assert client.get(f"{PREFIX}/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
