"""DAG files: no import errors, fast to parse, nothing heavy imported, the shapes the issue asks for."""

import subprocess
import sys
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if p.name != "__init__.py")  # __init__: for lint-imports
_HEAVY = ("tensorflow", "keras", "numpy", "pandas", "great_expectations")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"mnist_release", "spam_release", "model_rollback", "canary_monitor", "production_changes"} <= set(
        dagbag.dag_ids)


def test_production_changes_runs_on_every_production_asset_event(dagbag):
    from pipeline.assets import asset_name
    from pipeline.config import list_models

    dag = dagbag.dags["production_changes"]
    names = {asset.name for asset in dag.timetable.asset_condition.objects}
    assert names == {asset_name(model, "production") for model in list_models()}
    (task,) = dag.tasks
    assert [type(n).__name__ for n in task.on_success_callback] == ["SmtpAlertNotifier", "WebhookNotifier"]


def test_each_file_parses_fast_and_imports_nothing_heavy():
    # One fresh interpreter that already has Airflow loaded, as the DAG processor does, parses the files one
    # after the other: the first file that pulls in a heavy module is the one named.
    code = (
        "import sys, time, runpy\n"
        "import airflow.sdk\n"
        "from airflow.sdk import DAG, Asset, Param, task\n"
        f"for path in {[str(p) for p in DAG_FILES]!r}:\n"
        "    start = time.perf_counter()\n"
        "    runpy.run_path(path)\n"
        f"    heavy = ','.join(m for m in {_HEAVY!r} if m in sys.modules)\n"
        "    print(path, time.perf_counter() - start, heavy or '-')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Airflow's own deprecation notices (e.g. from the standard provider's sensor module) may be logged too.
    paths = {str(p) for p in DAG_FILES}
    parsed = [line.split(" ") for line in out.strip().splitlines() if line.split(" ", 1)[0] in paths]
    assert [Path(path).name for path, _, _ in parsed] == [p.name for p in DAG_FILES]
    for path, seconds, heavy in parsed:
        assert float(seconds) < 1.0, f"{Path(path).name} took {float(seconds):.2f}s to parse"
        assert heavy == "-", f"parsing {Path(path).name} imported {heavy}"


def test_release_dag_shape(dagbag):
    dag = dagbag.dags["mnist_release"]
    order = ["check_conf", "reconcile", "prepare_data", "validate_data", "train", "evaluate", "export", "has_new_version",
             "deploy_staging", "validate_staging", "unless_dry_run", "promote_canary", "canary_check",
             "shadow", "canary_5pct", "canary_25pct", "canary_50pct", "finalize"]
    assert set(order) | {"restore_production"} == set(dag.task_ids)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream}"
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and "release" in dag.tags
    assert dag.get_task("restore_production").is_teardown
    assert "finalize" in dag.get_task("restore_production").upstream_task_ids
    assert dag.get_task("prepare_data").retries == 1 and dag.get_task("canary_check").retries == 0
    assert dag.get_task("train").on_failure_callback


def test_release_tasks_sit_in_stage_groups_and_keep_their_ids(dagbag):
    dag = dagbag.dags["mnist_release"]
    groups = {task.task_id: task.task_group.group_id for task in dag.tasks}
    assert groups == {
        "check_conf": None, "reconcile": None,
        "prepare_data": "data", "validate_data": "data",
        "train": "training", "evaluate": "training", "export": "training", "has_new_version": "training",
        "deploy_staging": "staging", "validate_staging": "staging", "unless_dry_run": "staging",
        "promote_canary": "production", "canary_check": "production", "finalize": "production",
        "restore_production": "production",
        "shadow": "live", "canary_5pct": "live", "canary_25pct": "live", "canary_50pct": "live",
    }
    live = dag.task_group.get_task_group_dict()["live"]
    assert live.parent_group.group_id == "production"
    top = [child.group_id if hasattr(child, "children") else child.task_id for child in dag.task_group.children.values()]
    assert top == ["check_conf", "reconcile", "data", "training", "staging", "production"]  # the graph's one readable row
    assert all(group.tooltip for group in dag.task_group.get_task_group_dict().values() if group.group_id)


def test_every_dag_says_what_it_does_and_who_owns_it(dagbag):
    for dag_id in ("mnist_release", "spam_release", "model_rollback", "canary_monitor"):
        dag = dagbag.dags[dag_id]
        assert dag.description and dag.description != dag_id, dag_id
        assert dag.owner == "ml-platform", (dag_id, dag.owner)
        for task in dag.tasks:
            assert task.doc_md and len(task.doc_md) > 40, f"{dag_id}.{task.task_id} has no task docs"


def test_every_param_has_a_title_and_a_description(dagbag):
    for dag_id in ("mnist_release", "spam_release", "model_rollback"):
        for name, param in dagbag.dags[dag_id].params.items():
            assert param.schema.get("title") and param.schema["title"] != name, f"{dag_id}.{name}: no title"
            assert param.description, f"{dag_id}.{name}: no description"


def test_no_drop_down_offers_null_and_no_number_field_clamps(dagbag):
    """The form shows an enum's ``None`` by its values_display label ("null" without one), and its number input
    clamps a typed value into ``minimum``/``maximum`` (-1 epochs became 1): bounds must be exclusive."""
    for dag_id in ("mnist_release", "spam_release", "model_rollback"):
        for name, param in dagbag.dags[dag_id].params.items():
            schema = param.schema
            if None in schema.get("enum", ()):
                label = schema.get("values_display", {}).get(None)
                assert label and label.lower() not in ("null", "none"), f"{dag_id}.{name} offers {label!r}"
            assert not {"minimum", "maximum"} & set(schema), f"{dag_id}.{name}: the form would clamp into {schema}"
    schema = dagbag.dags["mnist_release"].params.get_param("inject_fault").schema
    assert set(schema["values_display"]) == set(schema["enum"])  # every choice has its label


def test_the_api_refuses_what_the_form_used_to_clamp(dagbag):
    """What the trigger endpoint does with a conf: the serialized DAG's params, merged with it, validated."""
    import json

    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dagbag.dags["mnist_release"]))))
    with pytest.raises(Exception, match="epochs"):
        dag.params.deep_merge({"epochs": -1}).validate()
    assert dag.params.deep_merge({"epochs": 1, "inject_fault": "input_convention"}).validate()["epochs"] == 1
    assert dag.params.deep_merge({"inject_fault": None}).validate()["inject_fault"] is None
    assert dag.params.get_param("inject_fault").schema["values_display"]["None"] == "none: a normal release"
    rollback = dagbag.dags["model_rollback"].params.get_param("to_version")
    with pytest.raises(ParamValidationError):
        rollback.resolve(0)


def test_live_phases_are_sensors_that_free_their_slot_between_looks(dagbag):
    dag = dagbag.dags["mnist_release"]
    for task_id in ("shadow", "canary_5pct", "canary_25pct", "canary_50pct"):
        sensor = dag.get_task(task_id)
        assert sensor.mode == "reschedule", task_id
        assert sensor.poke_interval > 0 and sensor.timeout > 0
        assert task_id in dag.get_task("restore_production").upstream_task_ids


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("epochs", -1), ("epochs", 1001), ("epochs", 2.5), ("learning_rate", 2), ("learning_rate", 0),
    ("batch_size", 0), ("batch_size", -32), ("data_source", "ftp"), ("force", "yes"), ("inject_fault", "meteor"),
    ("inject_fault", "null"), ("inject_fault", ""),
])
def test_params_schema_refuses_bad_conf(dagbag, field, value):
    from airflow.sdk.definitions.param import ParamValidationError

    param = dagbag.dags["mnist_release"].params.get_param(field)
    param.resolve(param.value)  # the default is valid
    with pytest.raises(ParamValidationError):
        param.resolve(value)


@pytest.mark.parametrize("field,value", [("epochs", 1), ("epochs", 1000), ("batch_size", 1), ("batch_size", None),
                                         ("inject_fault", None), ("inject_fault", "label_shift")])
def test_params_schema_accepts_the_edges(dagbag, field, value):
    assert dagbag.dags["mnist_release"].params.get_param(field).resolve(value) == value


@pytest.mark.parametrize("field,value", [
    ("force", "false"), ("force", "true"), ("force", 1), ("force", True), ("dry_run", "no"), ("dry_run", False),
    ("epochs", True), ("epochs", 1), ("epochs", 2.0), ("epochs", 2.5), ("epochs", "3"), ("epochs", 0),
    ("epochs", 1001), ("epochs", None), ("learning_rate", 0.5), ("learning_rate", 1), ("learning_rate", "0.1"),
    ("batch_size", None), ("batch_size", 0), ("batch_size", 16), ("batch_size", False), ("data_source", "ftp"),
    ("data_source", "keras"), ("data_path", 7), ("inject_fault", "meteor"), ("inject_fault", "label_shift"),
    ("inject_fault", None), ("inject_fault", ""),
])
def test_the_cli_conf_is_refused_exactly_where_the_dag_params_refuse(dagbag, field, value):
    from airflow.sdk.definitions.param import ParamValidationError

    from pipeline import tasks
    from pipeline.errors import ConfigError

    param = dagbag.dags["mnist_release"].params.get_param(field)
    try:
        param.resolve(value)
        dag_accepts = True
    except ParamValidationError:
        dag_accepts = False
    try:
        tasks.parse_conf("mnist", {field: value})
        cli_accepts = True
    except ConfigError as exc:
        cli_accepts = False
        assert str(exc).startswith(f"conf.{field}"), exc  # the field is named first
    assert cli_accepts == dag_accepts, f"{field}={value!r}: the DAG {'accepts' if dag_accepts else 'refuses'} it"


def test_fault_injection_only_where_config_allows(dagbag):
    import dataclasses
    import runpy

    from pipeline.dag_specs import release_specs

    schema = dagbag.dags["mnist_release"].params.get_param("inject_fault").schema
    assert "label_shift" in schema["enum"]
    spec = dataclasses.replace(next(s for s in release_specs() if s.model == "mnist"), allow_fault_injection=False)
    dag = runpy.run_path(str(DAGS_DIR / "model_release.py"))["build_release_dag"](spec)
    schema = dag.params.get_param("inject_fault").schema
    assert schema["enum"] == [None] and "allow_fault_injection" in schema["values_display"][None]


@pytest.mark.parametrize("environ,minutes", [
    ({}, 5), ({"PIPELINE_MONITOR_MINUTES": "2"}, 2), ({"PIPELINE_MONITOR_MINUTES": "off"}, None),
    ({"PIPELINE_SCHEDULES": "off"}, None), ({"PIPELINE_SCHEDULES": "off", "PIPELINE_MONITOR_MINUTES": "5"}, 5),
])
def test_canary_monitor_schedule_and_what_its_description_says(environ, minutes, monkeypatch):
    import runpy

    for name in ("PIPELINE_SCHEDULES", "PIPELINE_MONITOR_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    dag = runpy.run_path(str(DAGS_DIR / "canary_monitor.py"))["dag"]
    if minutes is None:
        assert type(dag.timetable).__name__ == "NullTimetable"
        assert dag.description.startswith("NOT SCHEDULED")
    else:
        assert dag.timetable.delta.total_seconds() == minutes * 60
        assert f"Every {minutes} min" in dag.description


@pytest.mark.parametrize("caller,monitor", [({}, "5"), ({"PIPELINE_SCHEDULES": "off"}, "off"),
                                            ({"PIPELINE_MONITOR_MINUTES": "off"}, "off")])
def test_the_stack_runs_the_monitor_on_its_schedule_and_releases_by_hand(caller, monitor, monkeypatch, tmp_path):
    from pipeline.settings import get_paths
    from pipeline.stack import airflow_env

    for name in ("PIPELINE_SCHEDULES", "PIPELINE_MONITOR_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in caller.items():
        monkeypatch.setenv(name, value)
    env = airflow_env(get_paths(tmp_path))
    assert env["PIPELINE_SCHEDULES"] == "off" and env["PIPELINE_MONITOR_MINUTES"] == monitor


def test_rollback_dag_params(dagbag):
    dag = dagbag.dags["model_rollback"]
    assert set(dag.params.keys()) == {"model", "to_version", "reason"}
    assert "mnist" in dag.params.get_param("model").schema["enum"]


def test_parsing_reads_no_network_and_no_tensorflow_in_a_clean_process():
    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; "
            f"b = DagBag(dag_folder={str(DAGS_DIR)!r}); "
            f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules), len(b.import_errors))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] 0"


@pytest.mark.parametrize("runner,operator", [("docker", "DockerOperator"), ("kubernetes", "KubernetesPodOperator")])
def test_training_in_a_container_when_configured(runner, operator, monkeypatch):
    import dataclasses
    import runpy

    from pipeline.dag_specs import release_specs

    monkeypatch.setenv("PIPELINE_IMAGE", "mlops-pipeline:0.1.0")
    spec = dataclasses.replace(next(s for s in release_specs() if s.model == "mnist"), train_runner=runner)
    dag = runpy.run_path(str(DAGS_DIR / "model_release.py"))["build_release_dag"](spec)
    container = dag.get_task("train_in_container")
    assert type(container).__name__ == operator
    assert container.upstream_task_ids == {"validate_data"} and container.downstream_task_ids == {"train"}
    assert container.task_group.group_id == "training" and container.doc_md
    command = getattr(container, "command", None) or [*container.cmds, *container.arguments]
    assert command[-7:] == ["-m", "pipeline", "train", "mnist", "--snapshot",  # what validate_data passed
                            "/opt/pipeline/var/data/mnist/{{ ti.xcom_pull(task_ids='prepare_data')['sha256'] }}",
                            "--json"]


def test_a_monitor_probe_is_retried_unless_refused(dagbag):
    from pipeline.refusals import Refused

    for task in dagbag.dags["canary_monitor"].tasks:
        assert task.retries == 2, task.task_id  # a probe whose process never started is tried again
        rule = task.retry_policy.rules[0]
        assert rule.exception is Refused and rule.action.name == "FAIL"  # a failed probe is not
