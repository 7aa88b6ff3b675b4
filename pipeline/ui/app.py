"""The models pages: a FastAPI app that Airflow's API server mounts at ``/pipeline`` (``plugins/pipeline_ui.py``).

Pages (server-rendered, Jinja2 templates under ``templates/``)::

    /models                                     every model: what staging, production and the canary instance
                                                serve, the live split, stable, the rollback target, the last change
    /models/<model>                             versions on disk with state, metrics and reports; live phases;
                                                registry history; the rollback form (POST .../rollback)
    /models/<model>/versions/<N>/verdicts/<g>   one gate's verdict, figures against thresholds (live phases:
                                                checks, tests and the plot .../versions/<N>/live.png)
    /reports/<model>/data/<sha256>/<path>       the snapshot's Great Expectations Data Docs
    /reports/<model>/runs/<run_id>/<file>       a training run's curve, confusion matrix and metrics
    /reports/<model>/monitor/<run_id>/<file>    a production monitor run's report page and plots
    /runs/report?dag_id&run_id&task_id&kind     where a task's extra link goes: finds the report of that run

Every route needs Airflow's login (:mod:`pipeline.ui.auth`); a rollback is triggered through Airflow's REST API
with the user's own token, so Airflow decides whether they may. Module level imports stay light: the API server
imports this module when it loads the plugin.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from pipeline.errors import NotFound, PipelineError
from pipeline.settings import Paths, get_paths
from pipeline.ui import links
from pipeline.ui.airflow_client import Airflow, AirflowRefused, AirflowRest, api_url_from_airflow_conf
from pipeline.ui.auth import (
    LoginUrl,
    UserDependency,
    airflow_login_url,
    airflow_user,
    request_token,
    user_name,
    wants_html,
)
from pipeline.ui.files import GATE, MODEL_NAME, RUN_ID, Refused, checked_name, safe_file
from pipeline.ui.views import DEFAULT_HISTORY, Pages

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"
_RUN_FILES = frozenset({"training_curve.png", "confusion_matrix.png", "metrics.json", "evaluation.json"})
_MAX_REASON = 500
_ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
         'stroke-width="2"><path d="M12 2 3 7l9 5 9-5-9-5z"/><path d="m3 12 9 5 9-5"/><path d="m3 17 9 5 9-5"/></svg>')


def create_app(paths: Paths | None = None, airflow: Airflow | None = None, *, api_root: str | None = None,
               user: UserDependency | None = None, login_url: LoginUrl | None = None) -> FastAPI:
    """The models pages over one pipeline home.

    Args:
        paths: the pipeline home (default ``$PIPELINE_HOME``, read now).
        airflow: how to reach Airflow's REST API (default: this API server on loopback, from Airflow's config).
        api_root: the path of Airflow's ``[api] base_url`` (default from Airflow's config); links into Airflow's UI
            start with it.
        user: the dependency that authenticates a request (default: Airflow's :func:`~pipeline.ui.auth.airflow_user`).
        login_url: where a browser without a valid token goes (default: the auth manager's login page).
    """
    pages = Pages(paths or get_paths())
    root = api_root if api_root is not None else _airflow_api_root()
    client = airflow if airflow is not None else AirflowRest(api_url_from_airflow_conf())
    current_user = user or airflow_user()
    to_login = login_url or airflow_login_url
    templates = Jinja2Templates(directory=_TEMPLATES)
    app = FastAPI(title="Models (pipeline)", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(current_user)])
    app.state.pages = pages

    def path_for(request: Request, name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
        """A route's path under the mount point, from its template.

        Not ``request.url_for``: Airflow mounts the app behind :class:`LazyApp`, so the API server's router, which
        ``url_for`` asks, cannot see these routes (and a model's page has hundreds of links to make).
        """
        path = request.scope.get("root_path", "") + route_paths[name].format(
            **{k: quote(str(v), safe="/" if k == "path" else "") for k, v in params.items()})
        return f"{path}?{urlencode(query)}" if query else path

    def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        def url(name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
            return path_for(request, name, query, **params)

        def airflow_ui(path: str) -> str:
            return f"{root.rstrip('/')}/{path.lstrip('/')}"

        return templates.TemplateResponse(request, template, {"url": url, "airflow_ui": airflow_ui,
                                                              "segment": _segment, **context},
                                          status_code=status_code)

    def message(request: Request, status_code: int, title: str, text: str) -> Response:
        return render(request, "message.html", status_code=status_code, title=title, text=text)

    @app.exception_handler(StarletteHTTPException)
    async def login_or_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (401, 403) and wants_html(request):
            framed = links.ui_path(_app_path(request), root)
            return RedirectResponse(to_login(f"{root.rstrip('/')}/{framed}"), status_code=303)
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return message(request, 404, "Not found", str(exc))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return message(request, 400, "Refused", str(exc))

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return RedirectResponse(path_for(request, "models"), status_code=303)

    @app.get("/icon.svg", name="icon")
    def icon() -> Response:
        return Response(_ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/models", name="models")
    def models(request: Request) -> Response:
        return render(request, "models.html", rows=pages.overview())

    @app.get("/models/{model}", name="model")
    def model(request: Request, model: str, history: str = str(DEFAULT_HISTORY),
              rollback_run: Annotated[str | None, Query(max_length=250)] = None,
              rollback_to: int | None = None) -> Response:
        limit = None if history == "all" else _int(history, DEFAULT_HISTORY)
        page = pages.model_page(model, history=limit)
        return render(request, "model.html", page=page, history_limit=limit,
                      rollback_run=rollback_run if rollback_run and RUN_ID.fullmatch(rollback_run) else None,
                      rollback_to=rollback_to, rollback_dag=links.ROLLBACK_DAG)

    @app.post("/models/{model}/rollback", name="rollback")
    def rollback(request: Request, model: str, to_version: Annotated[int, Form()],
                 reason: Annotated[str, Form(max_length=_MAX_REASON)] = "",
                 who: Any = Depends(current_user)) -> Response:  # noqa: B008 - see below
        # A default, not Annotated[...]: with postponed annotations FastAPI cannot resolve create_app's locals.
        _same_origin(request)
        targets = pages.rollback_targets(model)
        if to_version not in targets:
            offered = ", ".join(map(str, targets)) or "none"
            return message(request, 400, "Rollback refused",
                           f"{model} version {to_version} is not a version a rollback may go to now (offered: "
                           f"{offered}): it must be on disk, have passed staging validation and not be stable")
        token = request_token(request)
        if token is None:
            raise HTTPException(401, "Not authenticated")
        why = reason.strip() or "on-call rollback"
        conf = {"model": model, "to_version": to_version,
                "reason": f"{why} (by {user_name(who)} from the models page)"}
        try:
            run_id = client.trigger(token, links.ROLLBACK_DAG, conf)
        except AirflowRefused as exc:
            return message(request, exc.status if exc.status in (400, 403, 409) else 502, "Airflow refused",
                           f"triggering {links.ROLLBACK_DAG} for {model} -> {to_version}: {exc.detail}")
        except PipelineError as exc:
            return message(request, 502, "Airflow unreachable", str(exc))
        log.info("%s triggered %s run %s: %s", user_name(who), links.ROLLBACK_DAG, run_id, conf)
        return RedirectResponse(path_for(request, "model", {"rollback_run": run_id, "rollback_to": to_version},
                                         model=model), status_code=303)

    @app.get("/models/{model}/versions/{version}/verdicts/{gate}", name="verdict")
    def verdict(request: Request, model: str, version: int, gate: str) -> Response:
        view = pages.verdict(model, version, gate)
        return render(request, "verdict.html", view=view)

    @app.get("/models/{model}/versions/{version}/live.png", name="live_plot")
    def live_plot(model: str, version: int) -> Response:
        from pipeline.ui.plots import live_canary_png

        phases = pages.live_phases(model, version)
        png = live_canary_png(phases, f"{model} version {version}: live canary")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/reports/{model}/data/{sha256}/{path:path}", name="data_docs")
    def data_docs(model: str, sha256: str, path: str) -> Response:
        checked_name(model, MODEL_NAME, "model name")
        docs = pages.data_docs_dir(model, sha256)
        return FileResponse(safe_file(docs, path or "index.html", pages.paths.home))

    @app.get("/reports/{model}/runs/{run_id}/{file_name}", name="run_file")
    def run_file(model: str, run_id: str, file_name: str) -> Response:
        checked_name(model, MODEL_NAME, "model name")
        if file_name not in _RUN_FILES:
            raise Refused(f"a training run's reports are {sorted(_RUN_FILES)}, not {file_name!r}")
        return FileResponse(safe_file(pages.training_dir(model, run_id), file_name, pages.paths.home))

    @app.get("/reports/{model}/monitor/{run_id}/{file_name}", name="monitor_file")
    def monitor_file(model: str, run_id: str, file_name: str) -> Response:
        from pipeline.monitoring.report import REPORT_FILES

        checked_name(model, MODEL_NAME, "model name")
        checked_name(run_id, RUN_ID, "run id")
        if file_name not in REPORT_FILES:
            raise Refused(f"a monitor run's reports are {sorted(REPORT_FILES)}, not {file_name!r}")
        root = pages.paths.home / "reports" / model / "monitor" / run_id
        return FileResponse(safe_file(root, file_name, pages.paths.home), headers={"Cache-Control": "no-store"})

    @app.get("/runs/report", name="task_report")
    def task_report(request: Request, dag_id: Annotated[str, Query(max_length=250)],
                    run_id: Annotated[str, Query(max_length=250)], task_id: Annotated[str, Query(max_length=250)],
                    kind: str) -> Response:
        token = request_token(request)
        if token is None:
            raise HTTPException(401, "Not authenticated")
        def to(name: str, **params: Any) -> str:
            return path_for(request, name, **params)

        return RedirectResponse(_find_report(to, pages, client, token, dag_id, run_id, task_id, kind),
                                status_code=303)

    route_paths = {route.name: route.path_format for route in app.routes if isinstance(route, APIRoute)}
    return app


def _find_report(to: Callable[..., str], pages: Pages, client: Airflow, token: str, dag_id: str, run_id: str,
                 task_id: str, kind: str) -> str:
    """The page of ``kind`` for a task of a run: the run's own results first (XCom), the registry's record of the
    version the run registered next.

    Raises:
        NotFound: the run has no such report (yet), or the DAG is not one of ours.
    """
    if kind not in links.reports_of_task(dag_id, task_id):
        raise NotFound(f"task {task_id} of {dag_id} has no {kind!r} report")
    if kind == links.MONITOR_REPORT:  # the drift task names its model; the run id names the report
        watched = links.monitored_model(task_id)
        if watched is None or not RUN_ID.fullmatch(run_id):
            raise NotFound(f"task {task_id} of {dag_id} has no monitor report")
        if not (pages.paths.home / "reports" / watched / "monitor" / run_id / "index.html").is_file():
            raise NotFound(f"run {run_id} of {task_id} wrote no report (yet)")
        return to("monitor_file", model=watched, run_id=run_id, file_name="index.html")
    model = links.release_model(dag_id)
    if model is None:  # model_rollback / canary_monitor: the run's conf names the model, when it does
        conf_model = client.run_conf(token, dag_id, run_id).get("model")
        if isinstance(conf_model, str) and MODEL_NAME.fullmatch(conf_model):
            return to("model", model=conf_model)
        return to("models")
    pages.config(model)
    if kind == links.MODEL_PAGE:
        return to("model", model=model)
    record = pages.version_of_run(model, run_id)
    if kind == links.DATA_DOCS:
        prepared = client.xcom_result(token, dag_id, run_id, "prepare_data") or {}
        sha = prepared.get("sha256") if isinstance(prepared, dict) else None
        sha = sha or (record.data_sha256 if record else None)
        if not sha:
            raise NotFound(f"run {run_id} has no data snapshot yet (prepare_data has no result)")
        return to("data_docs", model=model, sha256=sha, path="index.html")
    if kind in links.TRAINING_FILES:
        trained = client.xcom_result(token, dag_id, run_id, "train") or {}
        training_run = trained.get("run_id") if isinstance(trained, dict) else None
        training_run = training_run or (record.training_run_id if record else None)
        if not training_run:
            raise NotFound(f"run {run_id} has no training run yet (train has no result)")
        return to("run_file", model=model, run_id=training_run, file_name=links.TRAINING_FILES[kind])
    exported = client.xcom_result(token, dag_id, run_id, "export") or {}
    version = exported.get("version") if isinstance(exported, dict) else None
    version = version if isinstance(version, int) else (record.version if record else None)
    gate = links.gate_of_task(task_id)
    if version is None or gate is None:
        raise NotFound(f"run {run_id} exported no version, so {task_id} judged none")
    return to("verdict", model=model, version=version, gate=checked_name(gate, GATE, "gate"))


def _app_path(request: Request) -> str:
    """The request's path inside the app (without the mount prefix), with its query."""
    root_path = request.scope.get("root_path", "")
    path = request.url.path
    inner = path[len(root_path):] if root_path and path.startswith(root_path) else path
    return f"{inner}?{request.url.query}" if request.url.query else inner


def _same_origin(request: Request) -> None:
    """Refuse a form posted from another site (the UI's cookie is SameSite=Lax already; this is belt and braces).

    Raises:
        HTTPException: 403 when an ``Origin`` header names another host.
    """
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, f"cross-site form post from {origin} refused")


def _airflow_api_root() -> str:
    """The path of Airflow's ``[api] base_url`` (``/`` unless Airflow is served under a sub-path)."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "/").path or "/"


def _int(value: str, default: int) -> int:
    try:
        return max(0, int(value))
    except ValueError:
        return default


def _segment(value: str) -> str:
    """A value (a run id) as one URL path segment."""
    return quote(value, safe="")


class LazyApp:
    """An ASGI app that builds the models pages on their first request.

    Airflow imports the plugin in every process that loads plugins (scheduler, DAG processor, task runners), but
    only the API server serves the pages: building them there, on first use, keeps the others from importing the
    API server's security module.
    """

    def __init__(self, factory: Callable[[], FastAPI]) -> None:
        self._factory = factory
        self._app: FastAPI | None = None
        self._guard = threading.Lock()

    @property
    def app(self) -> FastAPI:
        with self._guard:
            if self._app is None:
                self._app = self._factory()
            return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
