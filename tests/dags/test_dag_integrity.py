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
    assert {"mnist_release", "spam_release", "model_rollback", "canary_monitor"} <= set(dagbag.dag_ids)


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
    order = ["check_conf", "prepare_data", "validate_data", "train", "evaluate", "export", "has_new_version",
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


def test_live_phases_are_sensors_that_free_their_slot_between_looks(dagbag):
    dag = dagbag.dags["mnist_release"]
    for task_id in ("shadow", "canary_5pct", "canary_25pct", "canary_50pct"):
        sensor = dag.get_task(task_id)
        assert sensor.mode == "reschedule", task_id
        assert sensor.poke_interval > 0 and sensor.timeout > 0
        assert task_id in dag.get_task("restore_production").upstream_task_ids


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("learning_rate", 2), ("data_source", "ftp"), ("force", "yes"), ("inject_fault", "meteor"),
])
def test_params_schema_refuses_bad_conf(dagbag, field, value):
    from airflow.sdk.definitions.param import ParamValidationError

    param = dagbag.dags["mnist_release"].params.get_param(field)
    param.resolve(param.value)  # the default is valid
    with pytest.raises(ParamValidationError):
        param.resolve(value)


def test_fault_injection_only_where_config_allows(dagbag):
    schema = dagbag.dags["mnist_release"].params.get_param("inject_fault").schema
    assert "label_shift" in schema["enum"]


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
    command = getattr(container, "command", None) or [*container.cmds, *container.arguments]
    assert command[-4:] == ["pipeline", "train", "mnist", "--json"]
