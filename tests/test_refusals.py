"""A refusal (a gate's no, a refused conf) ends an Airflow task as one ERROR line, without a traceback.

The fast tests check the wrapper and the retry policy; the slow one runs a small DAG through Airflow's own task
runner (``airflow dags test``) and reads what the task log says.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, NotFound, Preempted, ValidationFailed
from pipeline.gates import Verdict
from pipeline.refusals import Refused, refusal_retry_policy, refusals_end_quietly

_REASON = "validate_staging: NOT_BLESSED (p95 latency 12.0 ms > budget 10.0 ms)"


def _refusing_gate(upstream: dict, **context) -> dict:
    Verdict("validate_staging", False, ["p95 latency 12.0 ms > budget 10.0 ms"]).raise_if_failed()
    return {}


def test_a_refused_gate_becomes_a_refusal_whose_text_is_the_verdict():
    body = refusals_end_quietly(_refusing_gate)
    with pytest.raises(Refused) as caught:
        body({}, run_id="r1")
    refusal = caught.value
    assert isinstance(refusal, SystemExit) and not isinstance(refusal, Exception)
    assert str(refusal) == _REASON and refusal.code == _REASON and refusal.kind == "ValidationFailed"
    assert refusal.__cause__ is None and refusal.__suppress_context__


def test_a_refused_conf_is_a_refusal_too_and_anything_else_keeps_its_type():
    def refuse_conf() -> None:
        raise ConfigError("conf: unknown field(s) ['colour']")

    def crash() -> None:
        raise NotFound("production is not running")

    with pytest.raises(Refused, match="colour") as caught:
        refusals_end_quietly(refuse_conf)()
    assert caught.value.kind == "ConfigError"
    with pytest.raises(NotFound):
        refusals_end_quietly(crash)()


def test_a_release_preempted_by_a_rollback_stops_as_a_refusal():
    def preempted() -> None:
        raise Preempted("mnist: release 'r1' was preempted by 'rollback__x'")

    with pytest.raises(Refused, match="preempted by 'rollback__x'") as caught:
        refusals_end_quietly(preempted)()
    assert caught.value.kind == "Preempted"


def test_the_wrapped_body_keeps_the_signature_airflow_reads_and_its_name():
    body = refusals_end_quietly(_refusing_gate)
    assert inspect.signature(body) == inspect.signature(_refusing_gate)
    assert body.__name__ == "_refusing_gate"
    assert refusals_end_quietly(lambda x=2, **context: x * 2)() == 4


def test_the_retry_policy_fails_a_refusal_at_once_and_leaves_other_errors_to_the_task_retries():
    from airflow.sdk.definitions.retry_policy import RetryAction

    policy = refusal_retry_policy()
    assert policy.evaluate(Refused(_REASON), try_number=1, max_tries=2).action is RetryAction.FAIL
    assert policy.evaluate(ValueError("flaky"), try_number=1, max_tries=2).action is RetryAction.DEFAULT
    assert policy.evaluate(ValidationFailed("raw"), try_number=1, max_tries=2).action is RetryAction.DEFAULT


_DAG = '''
import json
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from pipeline.errors import ValidationFailed
from pipeline.gates import Verdict
from pipeline.refusals import refusal_retry_policy, refusals_end_quietly

SEEN = Path({seen!r})


def _record(kind):
    def callback(context):
        exc = context.get("exception")
        with SEEN.open("a") as out:
            out.write(json.dumps({{"task": context["ti"].task_id, "callback": kind, "type": type(exc).__name__,
                                  "text": str(exc)}}) + "\\n")
    return callback


def _deep(n):
    if n == 0:
        Verdict("validate_staging", False, ["p95 latency 12.0 ms > budget 10.0 ms"]).raise_if_failed()
    _deep(n - 1)


with DAG("refusals", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         default_args={{"on_failure_callback": _record("failure"), "on_retry_callback": _record("retry"),
                        "retries": 1, "retry_delay": pendulum.duration(seconds=0),
                        "retry_policy": refusal_retry_policy()}}) as dag:

    @task
    @refusals_end_quietly
    def refused():
        _deep(5)

    @task
    @refusals_end_quietly
    def crashed():
        raise RuntimeError("an unexpected crash keeps its traceback")

    refused()
    crashed()
'''


@pytest.mark.slow
def test_in_airflows_task_runner_a_refusal_is_one_error_line_fails_without_retry_and_reaches_the_callback(tmp_path):
    home, dags = tmp_path / "airflow", tmp_path / "dags"
    dags.mkdir()
    seen = tmp_path / "seen.jsonl"
    (dags / "refusals.py").write_text(textwrap.dedent(_DAG.format(seen=str(seen))))
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, check=True, timeout=600)
    run = subprocess.run([*airflow, "dags", "test", "refusals"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    log = run.stdout + run.stderr
    refused = log[log.index("starting task_id=refused"):]
    refused = refused[:refused.index("end task task_id=refused")]
    assert "Task exited" in refused and _REASON in refused, refused
    assert "Traceback" not in refused and "_deep" not in refused and "Task failed with exception" not in refused
    crashed = log[log.index("starting task_id=crashed"):]
    assert "Traceback" in crashed and "an unexpected crash keeps its traceback" in crashed

    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    refused_calls = [c for c in calls if c["task"] == "refused"]
    # The policy failed it at once (no retry callback first), and the failure callback got the reason.
    assert refused_calls == [{"task": "refused", "callback": "failure", "type": "Refused", "text": _REASON}]
    assert [c["callback"] for c in calls if c["task"] == "crashed"][0] == "retry"  # other errors keep their retries
