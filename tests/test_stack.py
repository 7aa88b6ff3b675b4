"""The local stack: Airflow's components as supervised programs bound to 127.0.0.1, the admin password in a 0600
file and never printed, and `down` leaving nothing running (a real Airflow in the slow test)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline import stack
from pipeline.settings import get_paths
from pipeline.util.net import free_port
from pipeline.util.supervisor import stack_supervisor

_START_TIMEOUT_S = 400.0  # Airflow's four components and a migration on 2 shared cores


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_admin_password_file_is_0600_and_kept(tmp_path: Path) -> None:
    paths = get_paths(tmp_path)
    path = stack.ensure_admin_password(paths)
    assert path == stack.admin_password_file(paths) and _mode(path) == 0o600
    password = stack.admin_password(paths)
    assert password and len(password) >= 16 and json.loads(path.read_text()) == {"admin": password}
    path.chmod(0o644)  # as an older stack (or Airflow itself) wrote it
    assert stack.ensure_admin_password(paths) == path and _mode(path) == 0o600
    assert stack.admin_password(paths) == password  # the same login after a restart


def test_airflow_runs_as_four_programs_listening_on_loopback_only(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_CALLER_SECRET", "do-not-copy")
    programs = {program.name: program for program in stack.airflow_programs(get_paths(tmp_path), port=18080)}
    assert set(programs) == {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
    api = programs["airflow-api-server"].command
    assert api[api.index("--host") + 1] == "127.0.0.1" and api[api.index("--port") + 1] == "18080"
    # The log servers bind every interface (Airflow has no setting for their host): never started.
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert "--skip-serve-logs" in programs[name].command
    for program in programs.values():
        assert program.env["AIRFLOW__API__HOST"] == "127.0.0.1"
        assert program.env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
        assert "SOME_CALLER_SECRET" not in program.env  # the caller's other variables stay out of config files
        assert program.command[1:3] == ("-m", "airflow")


def test_up_says_where_the_password_is_never_what_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = get_paths(tmp_path)
    monkeypatch.setattr(stack, "start_servers", lambda paths: {"staging": "http://s", "production": "http://p"})
    monkeypatch.setattr(stack, "live_path_in_profile", lambda: None)
    monkeypatch.setattr(stack, "start_airflow", lambda paths: (stack.ensure_admin_password(paths), "http://a")[1])
    where = stack.up(paths)
    password = stack.admin_password(paths)
    assert password and not any(password in value for value in where.values())
    assert str(stack.admin_password_file(paths)) in where["login"]


def test_the_env_file_holds_the_stacks_settings_and_none_of_the_callers(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_AIRFLOW_API_PASSWORD", "caller-secret")
    monkeypatch.setenv("AIRFLOW__SOMETHING__TOKEN", "caller-token")
    text = stack.write_env_file(get_paths(tmp_path)).read_text()
    assert "caller-secret" not in text and "caller-token" not in text
    assert "export AIRFLOW__API__HOST=127.0.0.1" in text and f"export PIPELINE_HOME={tmp_path}" in text


def _listening(pids: list[int]) -> list[tuple[str, Any]]:
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found += [(process.name(), c.laddr) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.xdist_group("stacks")
def test_a_real_airflow_binds_loopback_prints_no_password_and_stops_completely(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", str(free_port()))
    paths = get_paths(tmp_path / "home")
    supervisor = stack_supervisor(paths.home)
    pids: list[int] = []
    try:
        url = stack.start_airflow(paths, timeout_s=_START_TIMEOUT_S)
        assert url.startswith("http://127.0.0.1:")
        daemon = psutil.Process(int((supervisor.runtime_dir / "supervisord.pid").read_text()))
        pids += [daemon.pid, *(child.pid for child in daemon.children(recursive=True))]
        listening = _listening(pids)
        assert listening and all(address.ip == "127.0.0.1" for _, address in listening), listening
        password = stack.admin_password(paths)
        assert password and _mode(stack.admin_password_file(paths)) == 0o600
        for path in paths.home.rglob("*"):
            if path.is_file() and path != stack.admin_password_file(paths) and os.access(path, os.R_OK):
                assert password not in path.read_text(errors="replace"), f"the password is in {path}"
    finally:
        stack.down(paths)
    assert not supervisor.is_running()
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
