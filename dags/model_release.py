"""DAG factory: one ``<model>_release`` DAG per ``configs/models/<model>.yaml``.

Orchestration only: the tasks and their order are :mod:`pipeline.flow`'s (the same steps ``pipeline release``
runs in one process); every task body is one call into :mod:`pipeline.tasks`, imported inside the task so
parsing this file never loads TensorFlow, numpy or pandas.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import pendulum
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    PokeReturnValue,
    TaskGroup,
    task,
    teardown,
)

from pipeline.assets import raw_data_asset, served_inlets
from pipeline.conf_schema import conf_fields, field_schema
from pipeline.config import LiveCanaryConfig
from pipeline.dag_specs import ReleaseSpec, release_specs
from pipeline.flow import GROUP_TOOLTIPS, OWNER, Step, StepInput, release_steps, restore_step
from pipeline.notify import RELEASE_FAILED, alert_notifiers, note_and_log
from pipeline.refusals import refusal_retry_policy, refusals_end_quietly
from pipeline.util.native_stderr import route_native_startup
from pipeline.wire.grpc_io import prefer_classic_io

log = logging.getLogger(__name__)

# Airflow's standard provider imports its own deprecated alias when task.sensor loads: one WARNING in every task's log
# that nobody here can act on (airflow.providers.standard.sensors.python, provider 1.21).
warnings.filterwarnings("ignore", message=r"The `airflow\.utils\.operator_helpers\.determine_kwargs` attribute is "
                                          r"deprecated")

_START = pendulum.datetime(2026, 1, 1, tz="UTC")
_IDEMPOTENT = {"retries": 1, "retry_delay": pendulum.duration(seconds=10)}

_DOC = """
### {model} release

check_conf → **data** (prepare_data → validate_data: Great Expectations, blocking) → **training** (train →
evaluate: floor, no regression vs production → export `<base>/{model}/<N>/`, atomic → has_new_version) →
**staging** (deploy_staging → validate_staging → unless_dry_run) → **production** (promote_canary: the canary
instance beside production, `canary` → N → canary_check: fails ⇒ automatic rollback → **live**: shadow, then
each weighted step of live traffic → finalize: `stable` → N, previous stable kept loaded).
`restore_production` (a teardown) makes sure no canary of this run is left serving and frees the release lock,
whatever happened. Each task's docs say what it does and where its report is.

Starts on its schedule, on new data (an event of the `{model}_raw_data` asset, posted by `pipeline ingest {model}`
once enough new labelled examples came in; it trains on the newest data version), or by hand: the form, or
`airflow dags trigger {model}_release --conf '{{"epochs": 3}}'`.
Conf: `epochs`, `learning_rate`, `batch_size`, `data_source`, `data_path`, `force` (skip the baseline gate),
`dry_run` (stop after staging), `inject_fault` (only where the config allows it; no gate is ever overridden for
it: `label_shift` is refused by evaluate, `input_convention` (image models: trained on raw 0..255 pixels while
clients send pixels / 255) passes evaluation and staging on its own and is left to the live canary).
On-call: the `model_rollback` DAG or `pipeline rollback {model}`; state: `pipeline status {model}`.
"""


def _on_failure(context) -> None:
    """Record the failure in the registry, write its one-line reason as the run's note, log it for on-call.

    The alerts (e-mail, webhook) are the notifiers after this callback in the list (pipeline.notify)."""
    from pipeline.tasks import record_task_failure

    ti = context["ti"]
    model = context["dag"].dag_id.removesuffix("_release")
    log.error(record_task_failure(model, context["run_id"], ti.task_id, str(context.get("exception"))))
    note_and_log(context, RELEASE_FAILED)


def _params(spec: ReleaseSpec) -> dict[str, Param]:
    """The trigger form: one Param per field of the release's conf schema (:mod:`pipeline.conf_schema`, which the
    CLI's ``--conf`` is validated against too), with its title, description and bounds."""
    return {name: Param(field["default"], **field_schema(field)) for name, field in conf_fields(spec).items()}


def _schedule(spec: ReleaseSpec, raw_data: Asset):
    """The config's cron schedule or new raw data, whichever comes first.

    ``PIPELINE_SCHEDULES=off`` keeps only the asset trigger (the demo triggers by hand and must not race a
    scheduled run).
    """
    if spec.schedule is None or os.environ.get("PIPELINE_SCHEDULES", "on") == "off":
        return [raw_data]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"), assets=[raw_data])


_CONTAINER_DOC = ("Trains in the pipeline image (`pipeline train <model> --snapshot <validated snapshot> --json`), "
                  "writing the run into the shared pipeline home; the `train` task after it finds the finished run "
                  "and reuses it.")


def _container_training(spec: ReleaseSpec):
    """The operator that trains in the pipeline image, when the config says so (else None).

    The container trains on the snapshot validate_data passed and writes the run into the shared pipeline home;
    the ``train`` task after it then finds the finished run and reuses it.
    """
    if spec.train_runner == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator

        from pipeline.containers import VALIDATED_SNAPSHOT, docker_operator_kwargs

        return DockerOperator(task_id="train_in_container", doc_md=_CONTAINER_DOC,
                              **docker_operator_kwargs(spec.model, VALIDATED_SNAPSHOT))
    if spec.train_runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        from pipeline.containers import VALIDATED_SNAPSHOT, kubernetes_pod_operator_kwargs

        return KubernetesPodOperator(task_id="train_in_container", doc_md=_CONTAINER_DOC,
                                     **kubernetes_pod_operator_kwargs(spec.model, VALIDATED_SNAPSHOT))
    return None


def _conf(context) -> dict:
    """The trigger conf as validated Params, plus any unknown key (check_conf refuses those)."""
    raw = dict(context["dag_run"].conf or {})
    return {**raw, **{k: v for k, v in context["params"].items()}}


def _phase_sensor(task_id: str, run, poke_interval_s: float, timeout_s: float):
    """A live phase: each poke looks for a while (``pipeline.tasks.LIVE_LOOK_BUDGET_S``), then frees its worker slot
    until the next poke (reschedule mode); it fails at once when the phase fails (the rollback is done by then)."""

    def poke(upstream: dict, **context) -> PokeReturnValue:
        result = run(upstream, **context)
        return PokeReturnValue(is_done=bool(result["done"]), xcom_value=result)

    poke.__name__ = task_id
    poke.__doc__ = run.__doc__
    return task.sensor(task_id=task_id, mode="reschedule", poke_interval=poke_interval_s, timeout=timeout_s)(poke)


def _step_task(model: str, step: Step, canary: LiveCanaryConfig | None = None):
    """The Airflow task of one flow step: pull what it needs from its upstream tasks, call :mod:`pipeline.tasks`."""

    def run(upstream: dict, **context) -> object:
        prefer_classic_io()  # this task process may start gRPC clients: before grpc loads
        route_native_startup()  # TensorFlow's C++ start-up lines: logged at their level, not as stderr (ERROR)
        from pipeline import tasks

        pulled = {name: context["ti"].xcom_pull(task_ids=name) for name in _PULLED.get(step.task_id, ())}
        return step.call(tasks, StepInput(model, _conf(context), context["run_id"], {**pulled, **upstream}))

    run.__name__ = step.task_id
    run.__doc__ = step.doc or None  # the task's docs in the UI (Airflow's task decorator reads it as doc_md)
    run = refusals_end_quietly(run)  # a refused gate ends the task as one ERROR line, no traceback
    retries = _IDEMPOTENT if step.idempotent else {}
    if step.waits:
        canary = canary or LiveCanaryConfig()
        # The analysis calls a phase undecided at bake_s; the sensor's own timeout is only a backstop for a
        # stalled scheduler (the teardown then rolls the canary back).
        return _phase_sensor(step.task_id, run, canary.poll_s, timeout_s=2 * canary.bake_s + 300)
    if step.short_circuit:
        return task.short_circuit(task_id=step.task_id, **retries)(run)
    return task(task_id=step.task_id, inlets=served_inlets(model, step.task_id), **retries)(run)


# The teardown reads export's result without depending on it (a teardown must run whatever happened upstream).
_PULLED = {"restore_production": ("export",)}


def build_release_dag(spec: ReleaseSpec) -> DAG:
    """The release DAG of one model: the tasks and order of :func:`pipeline.flow.release_steps`."""
    model = spec.model
    steps = release_steps(spec.canary)
    restore_spec = restore_step(steps)
    raw_data = raw_data_asset(model)
    with DAG(
        dag_id=f"{model}_release",
        schedule=_schedule(spec, raw_data),
        start_date=_START,
        catchup=False,
        max_active_runs=1,
        params=_params(spec),
        description=f"Release {model} to TF Serving: data, training, staging, then production through a live canary; "
                    "any failed gate rolls back",
        doc_md=_DOC.format(model=model),
        tags=["release", model],
        default_args={"owner": OWNER,
                      "on_failure_callback": [_on_failure, *alert_notifiers(RELEASE_FAILED)], "retries": 0,
                      "retry_policy": refusal_retry_policy()},
    ) as dag:
        outputs: dict = {}
        groups: dict[tuple[str, ...], TaskGroup] = {}
        for step in steps:
            with _in_group(groups, step.group):
                outputs[step.task_id] = _step_task(model, step, spec.canary)(
                    upstream={name: outputs[name] for name in step.needs})
        with _in_group(groups, next(step.group for step in steps if step.task_id == "train")):
            container = _container_training(spec)
        if container is not None:
            outputs["validate_data"] >> container >> outputs["train"]
        with _in_group(groups, restore_spec.group):
            restore = teardown(_step_task(model, restore_spec))(upstream={})
        [outputs[name] for name in restore_spec.needs] >> restore
    return dag


def _in_group(groups: dict[tuple[str, ...], TaskGroup], path: tuple[str, ...]):
    """Enter the task group at ``path`` (made on first use, inside its parent); the DAG itself for ``()``.

    Groups keep their tasks' plain ids (``prefix_group_id=False``): XCom pulls, :mod:`pipeline.flow`, the CLI,
    tests and docs name tasks as before.
    """
    if not path:
        return contextlib.nullcontext()
    if path not in groups:
        parent = _in_group(groups, path[:-1]) if len(path) > 1 else None
        groups[path] = TaskGroup(path[-1], tooltip=GROUP_TOOLTIPS.get(path[-1], ""), prefix_group_id=False,
                                 parent_group=parent)
    return groups[path]


for _spec in release_specs():
    globals()[f"{_spec.model}_release"] = build_release_dag(_spec)
