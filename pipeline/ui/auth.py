"""Airflow's own login in front of the models pages: no credentials of ours.

Airflow's API server authenticates its UI with a JWT in the ``_token`` cookie (set by the auth manager's login
form) and its REST clients with ``Authorization: Bearer``. :func:`airflow_user` is the API server's own FastAPI
dependency for both (``airflow.api_fastapi.core_api.security.get_user``): no token is 401, a bad one 403. A browser
that gets either is sent to the auth manager's login page, which brings it back afterwards.

Airflow is imported inside the functions: they run in the API server, where it is loaded already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

UserDependency = Callable[..., Any]
LoginUrl = Callable[[str], str]


def airflow_user() -> UserDependency:
    """The API server's dependency that returns the logged-in user (token from the cookie or a bearer header)."""
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


def airflow_login_url(next_url: str) -> str:
    """The auth manager's login page, coming back to ``next_url`` after a login."""
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login(next_url=next_url)


def request_token(request: Request) -> str | None:
    """The caller's Airflow token, as :func:`airflow_user` reads it: a bearer header first, else the UI's cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN)


def user_name(user: Any) -> str:
    """A user's display name (Airflow's ``BaseUser.get_name``), or ``str(user)``."""
    get_name = getattr(user, "get_name", None)
    return str(get_name()) if callable(get_name) else str(user)


def wants_html(request: Request) -> bool:
    """Whether the caller is a browser navigating (sent to the login page) rather than an API client (a 401)."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")
