"""Which report each task of a release links to, and where the plugin's pages live (light: every Airflow process
that loads plugins imports it, so stdlib only).

The models pages are the plugin's FastAPI app, mounted on Airflow's API server at :data:`APP_PREFIX`, and shown
inside the Airflow UI through an external view at ``plugin/<NAV_ROUTE>``: the UI frames ``<APP_PREFIX>/...`` there,
and keeps the framed path in its own URL (``/plugin/models/pipeline/models/mnist``), so a link to that URL opens the
page inside Airflow's navigation.

A task's extra link carries no lookup: it names the run, the task and the report, and the app's ``/runs/report``
route finds the artifact when someone clicks (the run's results may not exist yet when the link is drawn).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

APP_PREFIX = "/pipeline"  # where Airflow's API server mounts the app
NAV_ROUTE = "models"  # the external view's route in the Airflow UI: /plugin/models
RELEASE_DAG_SUFFIX = "_release"
ROLLBACK_DAG = "model_rollback"
MONITOR_DAG = "canary_monitor"

DATA_DOCS = "data_docs"
TRAINING_CURVE = "training_curve"
CONFUSION_MATRIX = "confusion_matrix"
VERDICT = "verdict"
MODEL_PAGE = "model"
MONITOR_REPORT = "monitor_report"
REPORT_KINDS = (DATA_DOCS, TRAINING_CURVE, CONFUSION_MATRIX, VERDICT, MODEL_PAGE, MONITOR_REPORT)
LINK_NAMES = {DATA_DOCS: "Data Docs", TRAINING_CURVE: "Training curve", CONFUSION_MATRIX: "Confusion matrix",
              VERDICT: "Verdict", MODEL_PAGE: "Model page", MONITOR_REPORT: "Monitor report"}
DRIFT_TASK_PREFIX = "drift_"  # canary_monitor's drift_<model> tasks write reports/<model>/monitor/<run_id>/
TRAINING_FILES = {TRAINING_CURVE: "training_curve.png", CONFUSION_MATRIX: "confusion_matrix.png"}

# Gates whose verdict a task writes (pipeline.release: serving/verdicts/<model>/<N>/<gate>.json; evaluate writes
# the run's evaluation.json). Live phases write live_<task_id>: live_shadow, live_canary_5pct, ...
_TASK_GATES = {"evaluate": "evaluate", "validate_staging": "staging", "canary_check": "canary"}
_PHASE_TASK = re.compile(r"^(shadow|canary_\d+pct)$")
_TASK_REPORTS: dict[str, tuple[str, ...]] = {"validate_data": (DATA_DOCS,), "train": (TRAINING_CURVE, CONFUSION_MATRIX)}


def release_model(dag_id: str) -> str | None:
    """The model a ``<model>_release`` DAG releases (None for any other DAG)."""
    if dag_id.endswith(RELEASE_DAG_SUFFIX) and len(dag_id) > len(RELEASE_DAG_SUFFIX):
        return dag_id.removesuffix(RELEASE_DAG_SUFFIX)
    return None


def monitored_model(task_id: str) -> str | None:
    """The model a ``canary_monitor`` drift task watches (None for any other task)."""
    model = task_id.removeprefix(DRIFT_TASK_PREFIX)
    return model if model != task_id and re.fullmatch(r"[a-z][a-z0-9_]{0,62}", model) else None


def gate_of_task(task_id: str) -> str | None:
    """The gate whose verdict ``task_id`` writes: ``staging``, ``canary``, ``evaluate``, ``live_shadow``, ..."""
    if task_id in _TASK_GATES:
        return _TASK_GATES[task_id]
    if _PHASE_TASK.match(task_id):
        return f"live_{task_id}"
    return None


def reports_of_task(dag_id: str, task_id: str) -> tuple[str, ...]:
    """The report kinds a task of ``dag_id`` links to (none for DAGs that are not ours)."""
    if release_model(dag_id) is not None:
        kinds = _TASK_REPORTS.get(task_id, ()) + ((VERDICT,) if gate_of_task(task_id) else ())
        return (*kinds, MODEL_PAGE)
    if dag_id == MONITOR_DAG and monitored_model(task_id) is not None:
        return (MONITOR_REPORT, MODEL_PAGE)
    if dag_id in (ROLLBACK_DAG, MONITOR_DAG):
        return (MODEL_PAGE,)
    return ()


def ui_path(app_path: str, api_root: str = "/") -> str:
    """The Airflow UI's URL (relative to its ``<base href>``) that shows the app's ``app_path`` in its navigation.

    Args:
        app_path: a path of the app, without the mount prefix (``/models/mnist``), with its query string.
        api_root: the path of Airflow's ``[api] base_url`` (``/`` by default).
    """
    root = api_root.strip("/")
    framed = f"{root}/" if root else ""
    return f"plugin/{NAV_ROUTE}/{framed}{APP_PREFIX.strip('/')}{app_path}"


def task_report_link(dag_id: str, run_id: str, task_id: str, kind: str, api_root: str = "/") -> str | None:
    """The extra link of one task for one report kind, or None where the task has no such report."""
    if kind not in reports_of_task(dag_id, task_id):
        return None
    query = urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "kind": kind})
    return ui_path(f"/runs/report?{query}", api_root)
