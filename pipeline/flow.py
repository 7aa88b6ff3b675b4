"""The release flow as data: the one place that says which task runs after which, and what each reads.

The ``<model>_release`` DAG is built from :func:`release_steps` and :func:`restore_step` (``dags/model_release.py``),
and :func:`run_release` walks the same steps in one process (``pipeline release``, tests, debugging). Each
step is one call into :mod:`pipeline.tasks`, which is handed in at run time, so this module stays light enough
for a DAG file to import at parse time. The live canary's phases (shadow, then each weighted step of the model's
``canary.steps``) are one waiting step each: a sensor in the DAG (reschedule mode: no worker slot is held
between looks), a loop here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pipeline.config import LiveCanaryConfig
from pipeline.live.phases import PhaseSpec, live_phases
from pipeline.util.ids import unique_run_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInput:
    """What a step gets: the model, the trigger conf, the run id, and the results of the steps it needs."""

    model: str
    conf: dict[str, Any]
    run_id: str
    results: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, task_id: str) -> Any:
        return self.results[task_id]


@dataclass(frozen=True)
class Step:
    """One task of the release DAG.

    Attributes:
        task_id: the Airflow task id.
        call: ``call(tasks_module, step_input) -> result`` (a small JSON-able dict for XCom, or a bool).
        needs: steps whose results this one reads; each is also its upstream task.
        short_circuit: a False result skips everything after it (the run still succeeds).
        idempotent: safe to retry (the DAG gives it one retry).
        waits: a phase that waits on live traffic: ``call`` looks for a while and returns ``{"done": bool, ...}``;
            it is called again until done (it raises on a failure).
        group: the DAG's task group path it sits in (``("production", "live")``); ``()`` for none.
        doc: what it does and where to look, in a few lines of Markdown (the task's docs in the Airflow UI).
    """

    task_id: str
    call: Callable[[ModuleType, StepInput], Any]
    needs: tuple[str, ...] = ()
    short_circuit: bool = False
    idempotent: bool = False
    waits: bool = False
    group: tuple[str, ...] = ()
    doc: str = ""


# Who answers for the release, rollback and monitor DAGs (Airflow's owner column, the DAGs' default_args).
OWNER = "ml-platform"

# The release DAG's task groups, in order, so its graph reads stage by stage; the live phases sit inside production.
DATA = ("data",)
TRAINING = ("training",)
STAGING = ("staging",)
PRODUCTION = ("production",)
LIVE = ("production", "live")
GROUP_TOOLTIPS: dict[str, str] = {
    "data": "raw source -> content-addressed snapshot -> Great Expectations validation (blocking)",
    "training": "seeded training, the evaluation gate, export as the next version",
    "staging": "staging serves the new version; the staging gate judges it there",
    "production": "canary beside production, the live phases, then stable; restore_production after any failure",
    "live": "shadow, then each weighted step of live traffic, each judged on live predictions",
}


_BUILD_AND_STAGE: tuple[Step, ...] = (
    Step("check_conf", lambda t, s: t.check_conf(s.model, s.conf),
         doc="Refuses a bad trigger conf (an unknown field, a bad value, a fault the model's config does not allow) "
             "before anything happens, naming the field."),
    Step("reconcile", lambda t, s: t.reconcile(s.model, s.run_id), ("check_conf",), idempotent=True,
         doc="A canary a release that died left serving (production's `canary` label, the canary instance, the "
             "registry's `canary`) is rolled back and recorded before this release starts; a release still running "
             "(its process or Airflow run alive) is left alone. `pipeline recover <model>` does the same by hand."),
    Step("prepare_data", lambda t, s: t.prepare_data(s.model, s.conf), ("reconcile",), idempotent=True,
         group=DATA,
         doc="Raw source -> deduplicated, stratified, seeded split -> content-addressed snapshot "
             "(`var/data/<model>/<sha256>/manifest.json`); reused when the source is unchanged."),
    Step("validate_data", lambda t, s: t.validate_data(s.model, s.conf, s["prepare_data"]["snapshot"]),
         ("prepare_data",), idempotent=True, group=DATA,
         doc="**Blocking** Great Expectations suites on the snapshot: value ranges, label set, nulls, class balance, "
             "minimum rows, no example shared between splits. Data Docs: `<snapshot>/validation/index.html`."),
    Step("train", lambda t, s: t.train(s.model, s.conf, s["prepare_data"]["snapshot"]),
         ("prepare_data", "validate_data"), idempotent=True, group=TRAINING,
         doc="Seeded Keras training with early stopping, one log line per epoch; the same data and params reuse the "
             "finished run. `var/runs/<model>/<run_id>/`: metrics, training curve, confusion matrix."),
    Step("evaluate", lambda t, s: t.evaluate(s.model, s.conf, s["train"]["run_dir"]), ("train",), group=TRAINING,
         doc="Gate: the config's absolute floor, and no regression against production's stable version beyond the "
             "tolerance (`force` skips only the latter). `evaluation.json` in the run directory."),
    Step("export", lambda t, s: t.export(s.model, s.conf, s["train"]["run_dir"], s["prepare_data"]["snapshot"],
                                         s.run_id), ("train", "prepare_data", "evaluate"), idempotent=True,
         group=TRAINING,
         doc="SavedModel written under a hidden temp name, then renamed to the next integer version "
             "(`var/models/<model>/<N>/`) with warmup requests, metadata and the golden set; registered with its "
             "lineage."),
    Step("has_new_version", lambda t, s: t.has_new_version(s["export"]), ("export",), short_circuit=True,
         group=TRAINING,
         doc="Stops the run here, successfully, when the export is a model that was already released (a retrain on "
             "unchanged data and params)."),
    Step("deploy_staging", lambda t, s: t.deploy_staging(s.model, s["export"]["version"], s.run_id),
         ("export", "has_new_version"), idempotent=True, group=STAGING,
         doc="Takes the model's release lock for this run, then staging serves exactly the new version."),
    Step("validate_staging", lambda t, s: t.validate_staging(s.model, s.conf, s["export"]["version"], s.run_id),
         ("export", "deploy_staging"), group=STAGING,
         doc="Gate on staging: AVAILABLE, signature, golden predictions == offline over REST and gRPC, accuracy "
             "through serving, p95 latency, a malformed request gets a 4xx. Verdict: "
             "`var/serving/verdicts/<model>/<N>/staging.json`."),
    Step("unless_dry_run", lambda t, s: t.should_promote(s.conf), ("validate_staging",), short_circuit=True,
         group=STAGING, doc="A dry run (`dry_run`) stops here, successfully: production is not touched."),
    Step("promote_canary", lambda t, s: t.promote_canary(s.model, s["export"]["version"], s.run_id),
         ("export", "unless_dry_run"), group=PRODUCTION,
         doc="The canary instance beside production serves production's models plus N (`stable` -> S, `canary` -> N); "
             "no live request reaches it yet. A first release goes to production under the `canary` label."),
    Step("canary_check", lambda t, s: t.canary_check(s.model, s["export"]["version"], s.run_id),
         ("export", "promote_canary"), group=PRODUCTION,
         doc="Gate through the `canary` label: golden correctness, held-out accuracy, agreement with `stable`, no "
             "errors, latency. A failure rolls the canary back in this step. Verdict: `.../<N>/canary.json`."),
)
_SERVER_STEPS = ("deploy_staging", "validate_staging", "promote_canary", "canary_check")


def _phase_doc(phase: PhaseSpec) -> str:
    judged = ("Ends as soon as the sequential live analysis decides; a failure, or too little traffic to decide, sets "
              "the split to 0 and rolls the canary back at once, with a root cause. Verdict: "
              f"`.../<N>/live_{phase.task_id}.json`.")
    if phase.canary_percent == 0:
        return (f"Shadow: {phase.mirror_percent:g} % of live requests are mirrored to the capture service, which asks "
                f"both versions; N is judged on real inputs and no user sees its answers. {judged}")
    return f"{phase.canary_percent:g} % of live requests are answered by N (REST and gRPC). {judged}"


def _phase_step(phase: PhaseSpec, after: str) -> Step:
    return Step(phase.task_id, lambda t, s: t.live_phase(s.model, s["export"]["version"], s.run_id, phase.name),
                ("export", after), idempotent=True, waits=True, group=LIVE, doc=_phase_doc(phase))


def release_steps(canary: LiveCanaryConfig | None = None) -> tuple[Step, ...]:
    """Every step of a model's release in order, its live phases from ``canary`` (default: the default config)."""
    steps = list(_BUILD_AND_STAGE)
    for phase in live_phases(canary or LiveCanaryConfig()):
        steps.append(_phase_step(phase, after=steps[-1].task_id))
    steps.append(Step("finalize", lambda t, s: t.finalize(s.model, s["export"]["version"], s.run_id),
                      ("export", steps[-1].task_id), group=PRODUCTION,
                      doc="Production `stable` -> N (the previous stable stays loaded for an instant rollback), then "
                          "the split goes to 0 and N leaves the canary instance; retention keeps the last versions. "
                          "Frees the release lock."))
    return tuple(steps)


def restore_step(steps: Sequence[Step]) -> Step:
    """Runs after the steps that touch servers, whatever happened to them (an Airflow teardown): no canary of this
    run is left serving, the split routes nothing to it, and the locks are free. It reads export's result if any."""
    touching = [s.task_id for s in steps if s.task_id in _SERVER_STEPS or s.waits or s.task_id == "finalize"]
    return Step("restore_production",
                lambda t, s: t.restore_production(s.model, (s.results.get("export") or {}).get("version"), s.run_id),
                needs=tuple(touching), group=PRODUCTION,
                doc="Teardown: runs whatever happened before it. No canary of this run is left serving, the split "
                    "routes nothing to it, and the release locks are free.")


def steps_for_model(model: str) -> tuple[Step, ...]:
    """The release steps of ``model``, its live phases from its config."""
    from pipeline.steps import resolve_config

    return release_steps(resolve_config(model).canary)


RELEASE_STEPS: tuple[Step, ...] = release_steps()  # with the default live phases (tests, docs)
RESTORE: Step = restore_step(RELEASE_STEPS)


def new_run_id(prefix: str = "manual") -> str:
    """A run id no other run shares (it is the run's lock owner): the time for people, a random suffix for
    uniqueness (:func:`pipeline.util.ids.unique_run_id`)."""
    return unique_run_id(prefix)


def run_release(model: str, conf: dict[str, Any] | None = None, run_id: str | None = None,
                on_task: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Every release step in order, in this process, then the restore step once a server-touching step ran.

    Returns each step's result by task id (and ``run_id``). A failing step is recorded as the DAG's failure
    callback records it, then the error propagates. A waiting step is called again until it is done.
    """
    from pipeline import tasks

    run_id = run_id or new_run_id()
    conf = conf or {}
    results: dict[str, Any] = {"run_id": run_id}
    release = steps_for_model(model)
    restore = restore_step(release)

    def run(step: Step) -> Any:
        log.info("%s release %s: %s starts", model, run_id, step.task_id)
        start = time.perf_counter()
        results[step.task_id] = step.call(tasks, StepInput(model, conf, run_id, results))
        while step.waits and not results[step.task_id]["done"]:
            results[step.task_id] = step.call(tasks, StepInput(model, conf, run_id, results))
        if on_task:
            on_task(step.task_id, time.perf_counter() - start)
        return results[step.task_id]

    failure: Exception | None = None
    try:
        for step in release:
            if not run(step) and step.short_circuit:
                break
    except Exception as exc:  # noqa: BLE001 - recorded, restored after, then raised again
        failure = exc
        log.error(tasks.record_task_failure(model, run_id, step.task_id, str(exc)))
    touched = step.task_id in restore.needs or any(name in results for name in restore.needs)
    if touched:  # a step that touches servers ran (or failed): restore, as the DAG's teardown does
        try:
            run(restore)
        except Exception:
            if failure is None:
                raise
            log.exception("restore_production failed too, after %s failed", step.task_id)
    if failure is not None:
        raise failure
    return results
