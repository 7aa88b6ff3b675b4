"""Release benchmark: the MNIST release through the Airflow scheduler, rollback times, failed requests under load.

In a fresh temporary pipeline home, on ports of its own (Airflow and both embedded TF Serving instances), it:

1. starts the stack and runs ``airflow dags trigger mnist_release`` (release 1): wall time of the whole run
   and of each task, from the task instances' start and end;
2. starts a steady load on production's ``stable`` label (REST and gRPC threads, bounded in time and count)
   that runs through everything after;
3. release 2, a good one (``{"epochs": <default + 1>}``): stable moves 1 -> 2 under load (the promote window);
4. on-call rollback ``pipeline rollback mnist`` as a subprocess: from the command's start to a client seeing
   the old version on the ``stable`` label (2 -> 1, still loaded);
5. release 3 with ``{"inject_fault": "label_shift"}``: the canary fails; from the decision (the canary
   verdict's mtime) to clients seeing production back on the last good version (the ``canary`` label gone,
   the bad version unloaded).

Then it times a fresh process importing TF Serving's gRPC reload API, which every rollback in a new process
(an Airflow task, the CLI) pays first. Failed requests are counted overall and in each window where
production's config changed (two promotions, two rollbacks); the load client never retries.
Prints JSON, then a table. The whole bench stops by itself within ``--budget-s`` and always stops what it
started. Usage: ``.venv/bin/python bench/release.py [--keep] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.util.net import free_ports  # noqa: E402 - after the path insert; stdlib-only, imports nothing heavy

_MODEL = "mnist"
_DAG = "mnist_release"
_FAULT_CONF = {"inject_fault": "label_shift"}
_DEFAULT_BUDGET_S = 570.0  # the whole bench, start to stop; the issue asks for < 10 minutes
_DEFAULT_LOAD_THREADS = 4  # half REST, half gRPC; a steady trickle, not a stress test on 2 shared cores
_DEFAULT_LOAD_PAUSE_S = 0.1  # per thread between requests: ~40 req/s in all
_MAX_REQUESTS_PER_THREAD = 20_000
_WATCH_POLL_S = 0.01  # how often a watcher asks production what a label names
_CLIENT_TIMEOUT_S = 5.0
_ROLLBACK_VISIBLE_TIMEOUT_S = 60.0
_STOP_RESERVE_S = 40.0  # kept back from the budget for `down()`
_TARGETS = {"release_wall_s": 120.0, "canary_rollback_visible_s": 2.0, "failed_requests": 0}


# ---- the sandbox: temp home, configs with our own ports --------------------------------------------------------


def make_config_dir(target: Path, ports: dict[str, int]) -> Path:
    """A copy of ``configs/`` whose embedded serving profile uses ``ports`` (keys ``<instance>_<rest|grpc>``)."""
    import yaml

    shutil.copytree(REPO / "configs", target)
    profile_path = target / "serving" / "embedded.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    for instance, spec in profile["instances"].items():
        spec["rest_port"], spec["grpc_port"] = ports[f"{instance}_rest"], ports[f"{instance}_grpc"]
    profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return target


def prepare_home(home: Path) -> None:
    """An empty pipeline home, with the npm download cache copied in so that nothing is fetched again."""
    home.mkdir(parents=True, exist_ok=True)
    cached = REPO / "var" / "cache" / "npm"
    if cached.is_dir():
        shutil.copytree(cached, home / "cache" / "npm")


def sandbox_environment(home: Path, config_dir: Path, airflow_port: int) -> None:
    """Point this process, and through ``airflow_env`` every Airflow process, at the sandbox."""
    os.environ.update({
        "PIPELINE_HOME": str(home),
        "PIPELINE_CONFIG_DIR": str(config_dir),
        "PIPELINE_AIRFLOW_PORT": str(airflow_port),
        "PIPELINE_SERVING_PROFILE": "embedded",
        "PIPELINE_SCHEDULES": "off",  # only our triggers run (canary_monitor included)
    })  # fmt: skip
    os.environ.pop("PIPELINE_REGISTRY_URL", None)  # the sandbox's own SQLite registry, never a shared one


# ---- clients: steady load and label watchers -----------------------------------------------------------------


def production_client(ports: dict[str, int], timeout_s: float = _CLIENT_TIMEOUT_S) -> Any:
    """A client of the sandbox's production server that never retries: every failure is one a caller sees."""
    from pipeline.serving.client import NO_RETRY, ServingClient

    return ServingClient(rest_url=f"http://127.0.0.1:{ports['production_rest']}",
                         grpc_target=f"127.0.0.1:{ports['production_grpc']}", timeout_s=timeout_s, retry=NO_RETRY)


@dataclass
class Request:
    """One predict of the load generator, wall-clock times (``time.time()``, as Airflow and mtimes are)."""

    started: float
    ended: float
    protocol: str
    error: str | None = None


class SteadyLoad:
    """Threads predicting on production's ``stable`` label until stopped, a deadline, or a request count."""

    def __init__(self, ports: dict[str, int], threads: int, pause_s: float, deadline: float) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.inputs = (rng.integers(0, 256, size=(1, 784)) / 255.0).astype(np.float32)
        self.ports, self.pause_s, self.deadline = ports, pause_s, deadline
        self.records: list[list[Request]] = [[] for _ in range(threads)]  # one list per thread: no sharing
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, ("rest", "grpc")[i % 2]), daemon=True)
                         for i in range(threads)]  # fmt: skip

    def start(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * _CLIENT_TIMEOUT_S)

    def requests(self) -> list[Request]:
        return sorted((r for records in self.records for r in records), key=lambda r: r.started)

    def _run(self, index: int, protocol: str) -> None:
        records = self.records[index]
        with production_client(self.ports) as client:
            while not self._stop.is_set() and time.time() < self.deadline and len(records) < _MAX_REQUESTS_PER_THREAD:
                started = time.time()
                try:
                    if protocol == "rest":
                        client.predict(_MODEL, instances=self.inputs, label="stable", protocol="rest")
                    else:
                        client.predict(_MODEL, inputs={"images": self.inputs}, label="stable", protocol="grpc")
                    records.append(Request(started, time.time(), protocol))
                except Exception as exc:  # noqa: BLE001 - a failed request is what we count
                    records.append(Request(started, time.time(), protocol, f"{type(exc).__name__}: {exc}"[:200]))
                self._stop.wait(self.pause_s)


class Watcher:
    """A thread asking production one question every few ms; keeps each change of the answer with its time."""

    def __init__(self, ports: dict[str, int], probe: Callable[[Any], Hashable]) -> None:
        self.ports, self.probe = ports, probe
        self.changes: list[tuple[float, Hashable]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * _CLIENT_TIMEOUT_S)

    def _run(self) -> None:
        with production_client(self.ports, timeout_s=1.0) as client:
            while not self._stop.is_set():
                answer = self.probe(client)
                if not self.changes or self.changes[-1][1] != answer:
                    self.changes.append((time.time(), answer))
                self._stop.wait(_WATCH_POLL_S)

    def first(self, answer: Hashable, after: float = 0.0) -> float | None:
        """When the answer first became ``answer`` at or after ``after`` (None if it never did)."""
        return next((t for t, a in self.changes if a == answer and t >= after), None)

    def wait_for(self, answer: Hashable, after: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.first(answer, after)
            if seen is not None:
                return seen
            time.sleep(_WATCH_POLL_S)
        return None


def label_version(label: str) -> Callable[[Any], Hashable]:
    """Probe: the version ``label`` names on production (None when the label does not resolve)."""
    def probe(client: Any) -> Hashable:
        try:
            statuses = client.model_status(_MODEL, label=label, protocol="rest")
        except Exception:  # noqa: BLE001 - NOT_FOUND (no such label) and timeouts alike: clients can't use it
            return None
        return statuses[0].version if statuses else None

    return probe


def available_versions(client: Any) -> Hashable:
    """Probe: the versions production reports AVAILABLE (() when it can't say)."""
    try:
        return tuple(sorted(s.version for s in client.model_status(_MODEL, protocol="rest") if s.available))
    except Exception:  # noqa: BLE001
        return ()


# ---- releases through the scheduler ----------------------------------------------------------------------------


def _epoch(iso: str | None) -> float | None:
    return None if not iso else datetime.fromisoformat(iso).timestamp()


def run_release(api: Any, conf: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Trigger ``mnist_release`` with ``conf`` as a person would, wait, and time the run and each task."""
    from pipeline.airflow_api import trigger_dag

    triggered = time.time()
    run_id = trigger_dag(api.paths, _DAG, conf)
    run = api.wait_for_run(_DAG, run_id, timeout_s=timeout_s)
    seen_done = time.time()
    tasks = {}
    for ti in sorted(api.task_instances(_DAG, run_id), key=lambda t: t.get("start_date") or "~"):
        start, end = _epoch(ti.get("start_date")), _epoch(ti.get("end_date"))
        tasks[ti["task_id"]] = {"state": ti.get("state"), "start": start, "end": end,
                                "seconds": round(end - start, 2) if start and end else None}  # fmt: skip
    run_start, run_end = _epoch(run.get("start_date")), _epoch(run.get("end_date"))
    return {
        "conf": conf, "run_id": run_id, "state": run["state"], "tasks": tasks,
        # A person's view: from typing `airflow dags trigger` to the run's end (the CLI itself takes seconds).
        "wall_s": round((run_end or seen_done) - triggered, 2),
        "trigger_to_running_s": round(run_start - triggered, 2) if run_start else None,
        "run_s": round(run_end - run_start, 2) if run_start and run_end else None,
    }  # fmt: skip


def _window(run: dict[str, Any], first_task: str, last_task: str, last_edge: str = "end") -> tuple[float, float] | None:
    tasks = run["tasks"]
    if first_task not in tasks or last_task not in tasks:
        return None
    start, end = tasks[first_task]["start"], tasks[last_task][last_edge]
    return (start, end) if start and end else None


# ---- the two rollbacks ---------------------------------------------------------------------------------------


def canary_rollback(api: Any, ports: dict[str, int], home: Path, timeout_s: float) -> dict[str, Any]:
    """A release with a bad model; decision (the canary verdict written) -> production back on last good."""
    from pipeline.release.registry import Registry, State
    from pipeline.settings import Paths

    with Watcher(ports, label_version("canary")) as canary, Watcher(ports, available_versions) as loaded:
        run = run_release(api, _FAULT_CONF, timeout_s)
        time.sleep(0.5)  # let the watchers see the last change after the run's end
    version = next((v for _, v in canary.changes if v is not None), None)
    result: dict[str, Any] = {"run": run, "canary_version": version}
    verdict = home / "serving" / "verdicts" / _MODEL / str(version) / "canary.json"
    if version is None or not verdict.is_file():
        result["error"] = "the canary never showed on production, or no canary verdict was written"
        return result
    decided = verdict.stat().st_mtime
    label_gone = canary.first(None, after=decided)
    unloaded = next((t for t, v in loaded.changes if t >= decided and version not in v and v), None)
    recorded = next((t.at.timestamp() for t in Registry(Paths(home).registry_url).history(_MODEL)
                     if t.version == version and t.to_state is State.ROLLED_BACK), None)
    result.update({
        "decided_at": decided, "canary_label_gone_at": label_gone, "unloaded_at": unloaded,
        "canary_blessed": json.loads(verdict.read_text()).get("blessed"),
        "decision_to_canary_label_gone_s": _since(decided, label_gone),
        "decision_to_version_unloaded_s": _since(decided, unloaded),
        "decision_to_registry_rolled_back_s": _since(decided, recorded),
        "canary_seen_for_s": _since(canary.first(version), label_gone),
    })  # fmt: skip
    return result


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def oncall_rollback(ports: dict[str, int]) -> dict[str, Any]:
    """``pipeline rollback mnist`` as on-call types it; start -> a client sees the old version on ``stable``."""
    from pipeline.settings import get_paths
    from pipeline.stack import airflow_env

    with production_client(ports) as client:
        before = label_version("stable")(client)
    with Watcher(ports, label_version("stable")) as stable:
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "rollback", _MODEL], env=airflow_env(get_paths()),
                              capture_output=True, text=True, timeout=_ROLLBACK_VISIBLE_TIMEOUT_S, check=False)
        exited = time.time()
        answer = _json_tail(proc.stdout)
        target = answer.get("to")
        visible = stable.wait_for(target, started, _ROLLBACK_VISIBLE_TIMEOUT_S) if target is not None else None
    result = {"from": before, "to": target, "returncode": proc.returncode, "started_at": started,
              "exited_at": exited, "visible_at": visible,
              "command_to_visible_s": _since(started, visible), "command_s": _since(started, exited),
              "in_process_s": answer.get("seconds")}  # fmt: skip
    if proc.returncode != 0:
        result["error"] = proc.stderr.strip()[-500:]
    return result


_NO_ONCALL = {"from": None, "to": None, "command_to_visible_s": None, "command_s": None, "in_process_s": None,
              "error": "not run: release 2 failed, so there was no earlier good version to go back to"}


def cold_reload_api_import() -> float:
    """Seconds a fresh process spends readying our gRPC reload (client + TF-free reload messages).

    Every process that changes a server's config pays this once: an Airflow task, ``pipeline rollback``.
    (TF Serving's generated ``model_service_pb2_grpc`` would import all of TensorFlow, about 4 s here.)
    """
    code = ("import time; t = time.perf_counter(); from pipeline.serving.client import ServingClient; "
            "from pipeline.wire import reload_rpc; reload_rpc.messages(); print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return round(float(proc.stdout.strip().splitlines()[-1]), 2)


def _json_tail(stdout: str) -> dict[str, Any]:
    """The JSON object the CLI prints last (its logs go to stderr, but be lenient)."""
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


# ---- failed requests per window ---------------------------------------------------------------------------------


def failures_in(requests: list[Request], window: tuple[float, float] | None) -> dict[str, Any]:
    """Requests overlapping ``window`` (all of them when None) and how many failed."""
    chosen = requests if window is None else [r for r in requests if r.ended >= window[0] and r.started <= window[1]]
    failed = [r for r in chosen if r.error]
    return {"requests": len(chosen), "failed": len(failed), "first_errors": [r.error for r in failed[:3]],
            "window_s": None if window is None else round(window[1] - window[0], 2)}  # fmt: skip


def load_windows(good: dict[str, Any], oncall: dict[str, Any], fault: dict[str, Any]) -> dict[str, Any]:
    """The windows in which production's config changed under load: two promotes and two rollbacks."""
    fault_run = fault["run"]
    decided = fault.get("decided_at")
    return {
        "promote_good_release": _window(good, "promote_canary", "finalize"),
        "promote_fault_canary": (_window(fault_run, "promote_canary", "canary_check", "start")
                                 if decided is None else (fault_run["tasks"]["promote_canary"]["start"], decided)),
        "rollback_oncall": (oncall["started_at"], oncall["visible_at"] or oncall["exited_at"]),
        "rollback_canary": None if decided is None else (decided, fault_run["tasks"]["canary_check"]["end"] or decided),
    }  # fmt: skip


# ---- report -----------------------------------------------------------------------------------------------------


def summarize(first: dict[str, Any], fault: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """The headline figures against the issue's targets."""
    figures = {
        "release_wall_s": first["wall_s"],
        "canary_rollback_visible_s": fault.get("decision_to_canary_label_gone_s"),
        "failed_requests": load["overall"]["failed"],
    }
    return {name: {"value": value, "target": _TARGETS[name], "met": value is not None and value <= _TARGETS[name]}
            for name, value in figures.items()}  # fmt: skip


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: dict[str, Any]) -> str:
    """A readable view of the report."""
    lines = []
    releases = report["releases"]
    header = f"{'task':<20}" + "".join(f"{name:>17}" for name in releases)
    lines += ["Task wall time through the scheduler (s; state when not success)", header, "-" * len(header)]
    task_ids = list(dict.fromkeys(t for run in releases.values() for t in run["tasks"]))
    for task_id in task_ids:
        cells = []
        for run in releases.values():
            task = run["tasks"].get(task_id)
            text = "-" if task is None else _fmt(task["seconds"])
            if task is not None and task["state"] != "success":  # a task that never ran has no duration
                text = f"{text} {task['state']}" if task["state"] == "failed" else str(task["state"])
            cells.append(f"{text:>17}")
        lines.append(f"{task_id:<20}" + "".join(cells))
    for key, title in (("trigger_to_running_s", "trigger->running"), ("run_s", "run start->end"),
                       ("wall_s", "WHOLE (trigger->end)")):  # fmt: skip
        lines.append(f"{title:<20}" + "".join(f"{_fmt(run[key]):>17}" for run in releases.values()))
    lines.append(f"{'run state':<20}" + "".join(f"{run['state']:>17}" for run in releases.values()))
    fault, oncall = report["canary_rollback"], report["oncall_rollback"]
    lines += ["", f"Failing canary (v{fault.get('canary_version')}): decision -> canary label gone "
              f"{_fmt(fault.get('decision_to_canary_label_gone_s'), '.3f')} s, -> bad version unloaded "
              f"{_fmt(fault.get('decision_to_version_unloaded_s'), '.3f')} s, -> registry rolled_back "
              f"{_fmt(fault.get('decision_to_registry_rolled_back_s'), '.3f')} s",
              f"On-call `pipeline rollback mnist` (v{oncall['from']} -> v{oncall['to']}): command start -> clients see "
              f"v{oncall['to']} on stable {_fmt(oncall['command_to_visible_s'], '.3f')} s (command exits after "
              f"{_fmt(oncall['command_s'], '.3f')} s; the server change itself "
              f"{_fmt(oncall['in_process_s'], '.3f')} s)",
              f"  (a fresh process readying the reload call, no TensorFlow: "
              f"{_fmt(report['cold_reload_api_import_s'])} s, paid inside each rollback)",
              "", "Requests on label stable under steady load (REST + gRPC)"]
    for name, item in report["load"].items():
        span = "" if item["window_s"] is None else f" over {item['window_s']:.2f} s"
        lines.append(f"  {name:<22} {item['failed']:>4} failed of {item['requests']:>6}{span}")
    lines.append("")
    for name, item in report["summary"].items():
        lines.append(f"{name:<26} {_fmt(item['value'], '')} (target <= {item['target']}): "
                     f"{'met' if item['met'] else 'MISSED'}")
    lines.append(f"(shared machine: {os.cpu_count()} cores, load average at the end {report['load_average']})")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=_DEFAULT_BUDGET_S, help="stop everything after this")
    parser.add_argument("--load-threads", type=int, default=_DEFAULT_LOAD_THREADS)
    parser.add_argument("--load-pause-s", type=float, default=_DEFAULT_LOAD_PAUSE_S)
    parser.add_argument("--keep", action="store_true", help="keep the temporary pipeline home (logs, registry)")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def bench(api: Any, ports: dict[str, int], home: Path, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Releases 1-3 and the on-call rollback, with the steady load on from release 1's end."""
    from pipeline.steps import resolve_config

    def remaining() -> float:
        left = deadline - time.time()
        if left <= 10:
            raise TimeoutError("the bench ran out of its time budget")
        return left

    api.wait_for_dag(_DAG, timeout_s=min(180.0, remaining()))
    first = run_release(api, {}, remaining())
    if first["state"] != "success":
        raise RuntimeError(f"release 1 {first['state']}: see the task logs under {home / 'airflow' / 'logs'}")
    load = SteadyLoad(ports, args.load_threads, args.load_pause_s, deadline).start()  # stable exists from here on
    try:
        good = run_release(api, {"epochs": resolve_config(_MODEL).train.epochs + 1}, remaining())
        oncall = oncall_rollback(ports) if good["state"] == "success" else _NO_ONCALL
        fault = canary_rollback(api, ports, home, remaining())
    finally:
        load.stop()
    cold_import_s = cold_reload_api_import()
    requests = load.requests()
    windows = load_windows(good, oncall, fault) if "started_at" in oncall and "decided_at" in fault else {}
    return {
        "releases": {"1 (default)": first, "2 (epochs+1)": good, "3 (label_shift)": fault.pop("run")},
        "canary_rollback": fault, "oncall_rollback": oncall, "cold_reload_api_import_s": cold_import_s,
        "load": {"overall": failures_in(requests, None), **{k: failures_in(requests, w) for k, w in windows.items()}},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pipeline.wire.grpc_io import prefer_classic_io

    prefer_classic_io()  # the load clients here, like the stack's processes, on grpc's classic I/O path
    started = time.time()
    deadline = started + args.budget_s - _STOP_RESERVE_S
    workdir = Path(tempfile.mkdtemp(prefix="bench-release-"))
    names = ("airflow", "staging_rest", "staging_grpc", "production_rest", "production_grpc")
    # Fixed at start: Airflow's task processes must find the same servers.
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    home = workdir / "home"
    prepare_home(home)
    sandbox_environment(home, make_config_dir(workdir / "configs", ports), ports["airflow"])

    from pipeline import stack
    from pipeline.airflow_api import AirflowApi
    from pipeline.settings import get_paths

    paths, ok = get_paths(), False
    try:
        stack_started = time.time()
        where = stack.up(paths)
        stack_s = round(time.time() - stack_started, 1)
        report = {"home": str(home), "ports": ports, "stack_up_s": stack_s,
                  **bench(AirflowApi(where["airflow_ui"], paths), ports, home, args, deadline)}  # fmt: skip
        ok = True
    finally:
        stack.down(paths)
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (logs under home/airflow/logs, home/supervisor/logs)", file=sys.stderr)
    report["summary"] = summarize(report["releases"]["1 (default)"], report["canary_rollback"], report["load"])
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2, default=str))
    print(render_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
