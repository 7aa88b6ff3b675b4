"""plugins/pipeline_ui.py: what it registers, that its links point at the right report, and that Airflow loads it
from the folder the stack configures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import namedtuple

import pytest

from pipeline.settings import REPO_ROOT
from pipeline.ui import links

TiKey = namedtuple("TiKey", "dag_id task_id run_id try_number map_index")
LINK_NAMES = ["Data Docs", "Training curve", "Confusion matrix", "Verdict", "Model page", "Monitor report"]


@pytest.fixture(scope="module")
def plugin_module():
    spec = importlib.util.spec_from_file_location("pipeline_ui_plugin_under_test", REPO_ROOT / "plugins" / "pipeline_ui.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plugin_mounts_the_pages_and_puts_models_in_the_navigation(plugin_module):
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    plugin = plugin_module.PipelineUiPlugin
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == links.APP_PREFIX
    assert not any(app["url_prefix"].startswith(reserved) for reserved in RESERVED_URL_PREFIXES)
    assert app["app"]._app is None  # built on the first request, in the API server only
    (view,) = plugin.external_views
    assert view == {"name": "Models", "href": "pipeline/models", "icon": "pipeline/icon.svg", "url_route": "models",
                    "destination": "nav"}
    assert [link.name for link in plugin.global_operator_extra_links] == LINK_NAMES


def test_each_release_task_links_to_its_report_and_other_dags_get_none(plugin_module):
    by_name = {link.name: link for link in plugin_module.PipelineUiPlugin.global_operator_extra_links}
    run = "manual__2026-01-01T00:00:00+00:00"

    def link(name: str, task: str, dag: str = "mnist_release") -> str:
        return by_name[name].get_link(None, ti_key=TiKey(dag, task, run, 1, -1))

    assert link("Data Docs", "validate_data") == links.task_report_link("mnist_release", run, "validate_data",
                                                                        links.DATA_DOCS)
    assert link("Training curve", "train").startswith("plugin/models/pipeline/runs/report?")
    for task in ("validate_staging", "canary_check", "shadow", "canary_5pct", "canary_50pct", "evaluate"):
        assert "kind=verdict" in link("Verdict", task)
    assert link("Verdict", "train") == "" and link("Data Docs", "train") == ""  # not drawn on other tasks
    assert link("Model page", "rollback", "model_rollback") != ""
    assert "kind=monitor_report" in link("Monitor report", "drift_mnist", "canary_monitor")
    assert link("Monitor report", "probe_mnist", "canary_monitor") == ""
    assert all(link(name, "train", "someone_elses_dag") == "" for name in LINK_NAMES)


def test_the_pages_are_built_on_first_use(plugin_module):
    from fastapi import FastAPI

    lazy = plugin_module.LazyApp(lambda: FastAPI(title="built"))
    assert lazy._app is None
    assert lazy.app.title == "built" and lazy.app is lazy.app


@pytest.mark.slow
def test_airflow_loads_the_plugin_from_the_folder_the_stack_sets(tmp_path):
    from pipeline.settings import get_paths
    from pipeline.stack import airflow_env

    env = airflow_env(get_paths(tmp_path / "home"))
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    proc = subprocess.run([sys.executable, "-m", "airflow", "plugins", "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = next(line for line in proc.stdout.splitlines() if line.startswith("["))
    (plugin,) = [p for p in json.loads(answer) if p["name"] == "pipeline_ui"]
    assert plugin["fastapi_apps"] == [{"app": "pipeline.ui.app.LazyApp", "url_prefix": "/pipeline",
                                       "name": "Models (pipeline)"}]
    assert plugin["external_views"][0]["url_route"] == "models"
    assert [entry.split(".")[-1].split()[0] for entry in plugin["global_operator_extra_links"]] == [
        "DataDocsLink", "TrainingCurveLink", "ConfusionMatrixLink", "VerdictLink", "ModelPageLink",
        "MonitorReportLink"]
    assert "Failed to import" not in proc.stderr and "pipeline_ui" not in proc.stderr
