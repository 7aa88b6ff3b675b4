"""``--serving_processes``: several processes serve the same ports as one server (reloads, status, metrics)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_status_pb2

from pipeline.embedded_server import READY_PREFIX, parse_flags
from pipeline.embedded_server.metrics import (
    REQUEST_COUNT,
    REQUEST_LATENCY,
    ServerMetrics,
    merge_snapshots,
    snapshot_from_json,
    snapshot_to_json,
)
from pipeline.embedded_server.processes import member_of, merge_status
from pipeline.util.net import free_port
from pipeline.util.polling import poll_until
from pipeline.wire.model_config import single_model_config, write_config
from pipeline.wire.status import ServingError

MODEL = "half_plus_two"
_START_TIMEOUT_S = 300.0  # two TensorFlow processes start one after the other on a busy 2-core machine
_FRESH_CONNECTIONS = 24  # the kernel spreads connections over the processes: 24 miss one with odds 2 ** -23


# ------------------------------------------------------------------ fast


def test_the_flag_defaults_to_one_process_and_refuses_zero() -> None:
    assert parse_flags(["--model_base_path=/m"]).serving_processes == 1
    options = parse_flags(["--model_base_path=/m", "--serving_processes=2"])
    assert (options.serving_processes, options.argv) == (2, ("--model_base_path=/m", "--serving_processes=2"))
    with pytest.raises(SystemExit):
        parse_flags(["--model_base_path=/m", "--serving_processes=0"])


def test_member_of_reads_index_and_address_and_refuses_anything_else() -> None:
    assert member_of("2@127.0.0.1:4000") == (2, "127.0.0.1:4000")
    for bad in ("127.0.0.1:4000", "0@127.0.0.1:1", "x@h:1", "1@"):
        with pytest.raises(ServingError, match="serving_process_of"):
            member_of(bad)


def _status(*versions: tuple[int, str, int]) -> Any:
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, code in versions:
        entry = response.model_version_status.add()
        entry.version, entry.state = version, get_model_status_pb2.ModelVersionStatus.State.Value(state)
        entry.status.error_code = code
    return response


def _states(response: Any) -> dict[int, str]:
    name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {entry.version: name(entry.state) for entry in response.model_version_status}


def test_merged_status_holds_back_what_another_process_has_not_caught_up_with() -> None:
    mine = _status((1, "AVAILABLE", 0), (2, "AVAILABLE", 0), (3, "END", 0), (4, "AVAILABLE", 0))
    merge_status(mine, _status((1, "AVAILABLE", 0), (2, "LOADING", 0), (3, "AVAILABLE", 0)))
    assert _states(mine) == {1: "AVAILABLE", 2: "LOADING", 3: "UNLOADING", 4: "LOADING"}
    failed = _status((5, "END", 0))
    merge_status(failed, _status((5, "END", 3)))
    assert failed.model_version_status[0].status.error_code == 3  # their error is kept


def test_metrics_of_several_processes_add_up_cell_by_cell() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    first.request_succeeded("m", "1", "Predict", "GRPC", 0.001)
    second.request_succeeded("m", "1", "Predict", "GRPC", 0.001)
    second.request_succeeded("m", "2", "predict", "REST", 0.5)
    second.request_failed("m", "1", "NOT_FOUND")
    shipped = snapshot_from_json(snapshot_to_json(second.snapshot()))
    assert shipped == second.snapshot()  # the JSON round trip keeps labels and cells
    merged = merge_snapshots([first.snapshot(), shipped])
    assert merged[REQUEST_COUNT] == {("m", "OK", "1"): 2, ("m", "OK", "2"): 1, ("m", "NOT_FOUND", "1"): 1}
    cell = merged[REQUEST_LATENCY][("m", "Predict", "GRPC", "1")]
    assert cell[0] == 2000 and sum(cell[1:]) == 2  # sums and buckets both added
    page = first.render([shipped]).decode()
    counts = {tuple(s.labels.values()): s.value for f in text_string_to_metric_families(page)
              if f.name == REQUEST_COUNT for s in f.samples}
    assert counts[("m", "OK", "1")] == 2


# ------------------------------------------------------------------ the group's logic, in this process


def test_the_first_process_fails_to_start_when_another_exits_before_joining() -> None:
    from pipeline.embedded_server.processes import ProcessGroup, _Member

    group = ProcessGroup(parse_flags(["--model_base_path=/m", "--serving_processes=3"]), None, None)
    waiting, exited = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["false"])
    exited.wait(timeout=30)
    try:
        group._members = {1: _Member(1, waiting), 2: _Member(2, exited)}
        with pytest.raises(ServingError, match="serving process 2 exited with 1 while starting"):
            group._all_joined()
        group._members = {1: _Member(1, waiting)}
        assert group._all_joined() == (None, "waiting for process(es) [1]")
    finally:
        waiting.kill()
        waiting.wait(timeout=10)



@pytest.fixture
def group_with_a_member(make_base_path: Any, half_plus_two_dir: Path, half_plus_three_dir: Path) -> Any:
    """A ProcessGroup and one member (its peer port in this process; a ``sleep`` stands in for its process)."""
    from pipeline.embedded_server.manager import ModelManager
    from pipeline.embedded_server.processes import MemberPeer, ProcessGroup, _Member

    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    first, second = ModelManager(), ModelManager()
    first.apply_config(single_model_config(MODEL, base, [1, 2], {}))
    first.apply_config(single_model_config(MODEL, base, [1, 2], {"stable": 1}))
    options = parse_flags([f"--model_base_path={base}", "--serving_processes=2"])
    group = ProcessGroup(options, first, None)
    stand_in = subprocess.Popen(["sleep", "600"])
    group._members[1] = _Member(1, stand_in)
    peer = MemberPeer(second, None)
    yield group, peer, second, stand_in, base
    stand_in.kill()
    stand_in.wait(timeout=10)
    peer.stop()
    first.close()
    second.close()


def test_a_joining_process_gets_the_config_in_effect_labels_included(group_with_a_member: Any) -> None:
    group, peer, second, _, _ = group_with_a_member
    group._join(f"1 {peer.address}".encode())
    assert second.config == group.manager.config
    assert second.get_servable(MODEL, label="stable").version == 1


def test_a_reload_reaches_every_process_and_one_that_cannot_take_it_is_stopped(group_with_a_member: Any) -> None:
    group, peer, second, stand_in, base = group_with_a_member
    group._join(f"1 {peer.address}".encode())
    group.reload_config(single_model_config(MODEL, base, [1, 2], {"stable": 1, "canary": 2}))
    assert second.get_servable(MODEL, label="canary").version == 2
    assert _states(group.model_status(_status_request())) == {1: "AVAILABLE", 2: "AVAILABLE"}
    peer.stop()  # the member can no longer be reached: the next reload stops it (its watcher restarts it)
    group.reload_config(single_model_config(MODEL, base, [2], {"stable": 2}))
    assert group.manager.get_servable(MODEL, label="stable").version == 2
    assert stand_in.wait(timeout=30) == -signal.SIGTERM
    assert _states(group.model_status(_status_request())) == {2: "AVAILABLE", 1: "END"}  # the gone one is skipped


def _status_request() -> Any:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    return request


# ------------------------------------------------------------------ the real processes


@pytest.fixture
def two_processes(make_base_path: Any, half_plus_two_dir: Path, half_plus_three_dir: Path, tmp_path: Path) -> Any:
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    config = tmp_path / "models.config"
    write_config(config, single_model_config(MODEL, base, [1, 2], {}))
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    grpc_port, rest_port = free_port(), free_port()
    # labels come with a reload, once the versions are loaded (TF Serving's rule): a joining process gets both
    labelled = single_model_config(MODEL, base, [1, 2], {"stable": 1})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.embedded_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}", f"--monitoring_config_file={monitoring}", "--serving_processes=2",
         "--pin_serving_processes", "--file_system_poll_wait_seconds=0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ready once every process joined
            if line.startswith(READY_PREFIX):
                break
        else:
            pytest.fail(f"server exited with {process.wait(timeout=10)} before it was ready")
        _reload(grpc_port, labelled)
        yield process, grpc_port, rest_port, base
    finally:
        others = psutil.Process(process.pid).children() if process.poll() is None else []
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for other in others:
            if other.is_running():
                other.kill()


def _thread_affinities(pid: int) -> set[frozenset[int]]:
    """The CPU sets of a process's threads (one that ends meanwhile is left out)."""
    seen = set()
    for thread in psutil.Process(pid).threads():
        try:
            seen.add(frozenset(os.sched_getaffinity(thread.id)))
        except ProcessLookupError:
            continue
    return seen


def _reload(grpc_port: int, config: Any) -> None:
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=120)


def _listening_pids(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
            and c.status == psutil.CONN_LISTEN and c.pid is not None}


def _predict(rest_port: int, target: str) -> dict:
    """One predict on a connection of its own (so the kernel may hand it to any process)."""
    response = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}{target}:predict",
                             json={"instances": [1.0]}, headers={"Connection": "close"}, timeout=60)
    return {"status": response.status_code, "body": response.json()}


@pytest.mark.slow
def test_both_processes_serve_and_a_reload_reaches_every_one(two_processes: Any) -> None:
    process, grpc_port, rest_port, _ = two_processes
    others = psutil.Process(process.pid).children()
    assert len(others) == 1
    for port in (grpc_port, rest_port):
        assert _listening_pids(port) == {process.pid, others[0].pid}
    cpus = sorted(os.sched_getaffinity(0))  # each process on a CPU of its own, every thread of it
    for pid, cpu in ((process.pid, cpus[0]), (others[0].pid, cpus[1 % len(cpus)])):
        assert _thread_affinities(pid) == {frozenset({cpu})}

    _reload(grpc_port, single_model_config(MODEL, two_processes[3], [1, 2], {"stable": 1, "canary": 2}))
    # every fresh connection, whichever process takes it, knows the new label at once
    answers = [_predict(rest_port, "/labels/canary") for _ in range(_FRESH_CONNECTIONS)]
    assert answers == [{"status": 200, "body": {"predictions": [3.5]}}] * _FRESH_CONNECTIONS
    statuses = {requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}/labels/canary",
                             headers={"Connection": "close"}, timeout=60).text for _ in range(8)}
    assert len(statuses) == 1 and '"AVAILABLE"' in statuses.pop()


@pytest.mark.slow
def test_metrics_count_the_requests_every_process_served(two_processes: Any) -> None:
    process, _, rest_port, _ = two_processes
    assert all(_predict(rest_port, "/labels/stable")["status"] == 200 for _ in range(_FRESH_CONNECTIONS))
    for _ in range(6):  # each scrape on its own connection: whichever process answers, it sums them all
        page = requests.get(f"http://127.0.0.1:{rest_port}/metrics", headers={"Connection": "close"},
                            timeout=60).text
        counts = {tuple(s.labels.values()): s.value for f in text_string_to_metric_families(page)
                  if f.name == REQUEST_COUNT for s in f.samples}
        assert counts == {(MODEL, "OK", "1"): _FRESH_CONNECTIONS}


@pytest.mark.slow
def test_a_killed_process_is_restarted_and_all_stop_with_the_first(two_processes: Any) -> None:
    process, _, rest_port, _ = two_processes
    killed = psutil.Process(process.pid).children()[0]
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)

    def restarted() -> tuple[int | None, str]:
        pids = _listening_pids(rest_port) - {process.pid}
        return (pids.pop() if pids else None), f"REST listeners {sorted(_listening_pids(rest_port))}"

    new_pid = poll_until(restarted, _START_TIMEOUT_S, "another serving process listening again", interval_s=0.5)
    assert new_pid != killed.pid
    assert [_predict(rest_port, "/labels/stable")["status"] for _ in range(_FRESH_CONNECTIONS)] == \
        [200] * _FRESH_CONNECTIONS
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
