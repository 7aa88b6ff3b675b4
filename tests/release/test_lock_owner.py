"""A lock holder's identity and how its liveness is judged (the registry's takeovers are tested with the registry)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.release.lock_owner import Holder, Liveness, liveness, this_process


@pytest.fixture(autouse=True)
def outside_airflow(monkeypatch):
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID", "PIPELINE_AIRFLOW_API_URL"):
        monkeypatch.delenv(name, raising=False)


def test_this_process_is_alive_and_round_trips_through_its_row():
    me = this_process("rollback")
    assert me.pid == os.getpid() and me.started > 0 and me.purpose == "rollback" and not me.in_airflow
    assert Holder.from_dict(me.as_dict()) == me
    assert liveness(me) == (Liveness.ALIVE, f"pid {me.pid} still runs")


@pytest.mark.parametrize("raw", [None, "pid 3", {"host": "h"}, {"host": "h", "pid": "x", "started": 1}])
def test_a_row_without_a_readable_holder_is_unknown(raw):
    assert Holder.from_dict(raw) is None
    assert liveness(None)[0] is Liveness.UNKNOWN


def test_a_finished_process_is_dead_and_a_reused_pid_too():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = Holder(this_process().host, child.pid, 1.0)
    assert liveness(gone) == (Liveness.DEAD, f"pid {child.pid} is gone")
    reused = Holder(this_process().host, os.getpid(), this_process().started - 600)
    verdict, why = liveness(reused)
    assert verdict is Liveness.DEAD and "is now another process" in why


def test_another_host_cannot_be_judged_without_airflow():
    assert liveness(Holder("elsewhere", 1, 1.0))[0] is Liveness.UNKNOWN


def test_an_airflow_holder_is_judged_by_its_run_and_only_when_airflow_may_be_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))  # no local stack: no API to ask
    holder = Holder("elsewhere", 1, 1.0, dag_id="mnist_release", dag_run_id="r1", task_id="deploy_staging")
    assert liveness(holder)[1] == "no Airflow API configured to ask about the holder's run"
    assert "cannot be checked" in liveness(holder, ask_airflow=False)[1]


def test_two_dags_sharing_a_run_id_are_not_the_same_run():
    a = Holder("h", 1, 1.0, dag_id="mnist_release", dag_run_id="scheduled__t")
    b = Holder("h", 2, 2.0, dag_id="spam_release", dag_run_id="scheduled__t")
    assert a.same_run(Holder("h", 3, 3.0, dag_id="mnist_release", dag_run_id="scheduled__t"))
    assert not a.same_run(b) and a.same_run(None) and Holder("h", 1, 1.0).same_run(b)
