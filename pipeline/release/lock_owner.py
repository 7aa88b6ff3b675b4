"""Who holds a registry lock, and whether that holder is still alive.

Each lock row records its holder (:class:`Holder`): the host, the process id and the process's start time, what
it holds the lock for (a release, a rollback, a reconcile), and inside an Airflow task the DAG id, run id and task
id that Airflow exports to every task process (``AIRFLOW_CTX_DAG_ID``, ``AIRFLOW_CTX_DAG_RUN_ID``,
``AIRFLOW_CTX_TASK_ID``). :func:`liveness` judges a holder:

- its process still runs on this host (the same pid with the same start time) -> alive;
- it ran in an Airflow task: the lock belongs to the whole DAG run (one task takes it, later tasks of the run use
  it, the teardown frees it), so the run's state is asked of Airflow's REST API when it is reachable
  (:mod:`pipeline.airflow_rest`): queued or running -> alive; finished -> dead;
- it ran outside Airflow on this host and its pid is gone, or now belongs to a process started at another time
  (a reused pid) -> dead;
- anything else (another host, Airflow unreachable, a row written before holders were recorded) -> unknown: the
  lock's expiry decides, as before.

Light: stdlib at module level; psutil and the Airflow client are imported when a holder is judged.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

_START_TIME_TOLERANCE_S = 1.0  # psutil's create_time is derived from boot time and clock ticks
_AIRFLOW_RUNNING = frozenset({"queued", "running"})

# What a lock is held for. A rollback preempts a release (on-call always wins); nothing preempts a rollback.
RELEASE = "release"
ROLLBACK = "rollback"
RECONCILE = "reconcile"


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Holder:
    """The process holding a lock, as recorded in the lock row."""

    host: str
    pid: int
    started: float  # the process's start time (epoch seconds): a reused pid has another one
    purpose: str = RELEASE
    dag_id: str | None = None
    dag_run_id: str | None = None
    task_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Holder | None:
        """The holder a lock row recorded, or None (no record, or a shape this version does not read)."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), started=float(raw["started"]),
                       purpose=str(raw.get("purpose") or RELEASE), dag_id=raw.get("dag_id"),
                       dag_run_id=raw.get("dag_run_id"), task_id=raw.get("task_id"))
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def in_airflow(self) -> bool:
        return bool(self.dag_id and self.dag_run_id)

    def same_run(self, other: Holder | None) -> bool:
        """False only when both ran in Airflow and in different DAG runs: two DAGs may share a run id
        (``scheduled__<time>``), and a lock owner is a run id."""
        if other is None or not (self.in_airflow and other.in_airflow):
            return True
        return (self.dag_id, self.dag_run_id) == (other.dag_id, other.dag_run_id)

    def describe(self) -> str:
        where = f"{self.purpose} pid {self.pid} on {self.host}"
        if self.in_airflow:
            where += f", Airflow {self.dag_id} run {self.dag_run_id}" + (f" task {self.task_id}" if self.task_id else "")
        return where


def this_process(purpose: str = RELEASE) -> Holder:
    """The holder this process records when it takes a lock."""
    return Holder(host=socket.gethostname(), pid=os.getpid(), started=_start_time(os.getpid()) or 0.0,
                  purpose=purpose, dag_id=os.environ.get("AIRFLOW_CTX_DAG_ID") or None,
                  dag_run_id=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or None,
                  task_id=os.environ.get("AIRFLOW_CTX_TASK_ID") or None)


def liveness(holder: Holder | None, ask_airflow: bool = True) -> tuple[Liveness, str]:
    """Whether ``holder`` still runs, and why it is judged so (for the log line of a takeover).

    ``ask_airflow``: whether an Airflow holder's run may be asked of the REST API now (the caller throttles it).
    """
    if holder is None:
        return Liveness.UNKNOWN, "the lock row records no holder"
    if holder.host == socket.gethostname():
        process = _process_liveness(holder)
        if process is Liveness.ALIVE:
            return process, f"pid {holder.pid} still runs"
        if not holder.in_airflow:
            return Liveness.DEAD, _why_dead(holder)
    if holder.in_airflow and ask_airflow:
        return _airflow_liveness(holder)
    return Liveness.UNKNOWN, f"{holder.describe()} cannot be checked from {socket.gethostname()}"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _process_liveness(holder: Holder) -> Liveness:
    started = _start_time(holder.pid)
    if started is None:
        return Liveness.DEAD
    return Liveness.ALIVE if abs(started - holder.started) <= _START_TIME_TOLERANCE_S else Liveness.DEAD


def _why_dead(holder: Holder) -> str:
    started = _start_time(holder.pid)
    if started is None:
        return f"pid {holder.pid} is gone"
    return f"pid {holder.pid} is now another process (started at {started:.0f}, not {holder.started:.0f})"


def _airflow_liveness(holder: Holder) -> tuple[Liveness, str]:
    """The DAG run's state from Airflow's REST API; unknown when Airflow cannot be asked."""
    from urllib.parse import quote

    from pipeline.airflow_rest import AirflowRest, ApiError, api_access

    access = api_access()
    if access is None:
        return Liveness.UNKNOWN, "no Airflow API configured to ask about the holder's run"
    client = AirflowRest(access)
    path = f"/dags/{quote(str(holder.dag_id), safe='')}/dagRuns/{quote(str(holder.dag_run_id), safe='')}"
    try:
        state = str((client.call("GET", path) or {}).get("state"))
    except ApiError as exc:
        return Liveness.UNKNOWN, f"Airflow could not say whether run {holder.dag_run_id} runs: {exc}"
    finally:
        client.close()
    if state in _AIRFLOW_RUNNING:
        return Liveness.ALIVE, f"Airflow run {holder.dag_run_id} is {state}"
    return Liveness.DEAD, f"Airflow run {holder.dag_id}/{holder.dag_run_id} is {state}, no longer running"
