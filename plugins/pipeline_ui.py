"""The models pages in the Airflow UI, and every report one click from the task that made it.

- ``fastapi_apps``: the pages (:mod:`pipeline.ui.app`) on Airflow's API server at ``/pipeline``, behind Airflow's
  own login; built on their first request, so the other Airflow processes that load plugins stay light.
- ``external_views``: "Models" in the UI's navigation; the UI frames the pages at ``/plugin/models``.
- ``global_operator_extra_links``: from a release's ``validate_data`` to the snapshot's Data Docs, from ``train`` to
  the training curve and the confusion matrix, from ``evaluate``, ``validate_staging``, ``canary_check``, ``shadow``
  and each ``canary_<k>pct`` to the gate's verdict page, from ``canary_monitor``'s ``drift_<model>`` to the monitor
  run's report, and from every task of our DAGs to its model's page. A link
  names the run, the task and the report; the pages find the artifact when it is clicked.

The stack points ``AIRFLOW__CORE__PLUGINS_FOLDER`` here (``pipeline/stack.py``); check with ``airflow plugins``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from pipeline.ui import links
from pipeline.ui.app import LazyApp


@cache
def _api_root() -> str:
    """The path of Airflow's ``[api] base_url`` (``/`` by default)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "/").path or "/"


def _build_app() -> Any:
    from pipeline.ui.app import create_app

    return create_app()


class _ReportLink(BaseOperatorLink):
    kind = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return links.task_report_link(ti_key.dag_id, ti_key.run_id, ti_key.task_id, self.kind, _api_root()) or ""


class DataDocsLink(_ReportLink):
    name = links.LINK_NAMES[links.DATA_DOCS]
    kind = links.DATA_DOCS


class TrainingCurveLink(_ReportLink):
    name = links.LINK_NAMES[links.TRAINING_CURVE]
    kind = links.TRAINING_CURVE


class ConfusionMatrixLink(_ReportLink):
    name = links.LINK_NAMES[links.CONFUSION_MATRIX]
    kind = links.CONFUSION_MATRIX


class VerdictLink(_ReportLink):
    name = links.LINK_NAMES[links.VERDICT]
    kind = links.VERDICT


class ModelPageLink(_ReportLink):
    name = links.LINK_NAMES[links.MODEL_PAGE]
    kind = links.MODEL_PAGE


class MonitorReportLink(_ReportLink):
    name = links.LINK_NAMES[links.MONITOR_REPORT]
    kind = links.MONITOR_REPORT


class PipelineUiPlugin(AirflowPlugin):
    name = "pipeline_ui"
    fastapi_apps = [{"app": LazyApp(_build_app), "url_prefix": links.APP_PREFIX, "name": "Models (pipeline)"}]
    external_views = [{
        "name": "Models",
        "href": f"{links.APP_PREFIX.strip('/')}/models",  # relative: the UI resolves it against its base URL
        "icon": f"{links.APP_PREFIX.strip('/')}/icon.svg",
        "url_route": links.NAV_ROUTE,
        "destination": "nav",
    }]
    global_operator_extra_links = [DataDocsLink(), TrainingCurveLink(), ConfusionMatrixLink(), VerdictLink(),
                                   ModelPageLink(), MonitorReportLink()]
