"""The supervisord wrapper: programs and their command lines as supervisord reads them back (no supervisord), then a
real supervisord in a temp directory: run, attach from another object, replace a changed definition, a program that
exits at once, and stop/remove/shutdown leaving no process behind (checked with psutil)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.errors import ConfigError, PipelineError
from pipeline.util.polling import poll_until
from pipeline.util.supervisor import (
    STOPPED_STATES,
    Program,
    Supervisor,
    command_line,
    python_env,
    stack_supervisor,
)

_DEADLINE_S = 60.0  # supervisord and a Python program start in about a second, but the 2 shared cores may be busy
# Prints its pid, arguments, one variable and its directory as one JSON line, then sleeps until stopped.
_SLEEPER = ("import json, os, sys, time; print(json.dumps({'pid': os.getpid(), 'args': sys.argv[1:], "
            "'var': os.environ.get('VAR'), 'cwd': os.getcwd()})); time.sleep(3600)")
# Starts a child (in its process group, as children are), prints both pids, then sleeps.
_FAMILY = ("import os, subprocess, sys, time; "
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)']); "
           "print(f'pids {os.getpid()} {child.pid}'); time.sleep(3600)")
_STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
_TRICKY_ARGS = ("two words", " ;not a comment #either", "%(here)s", "'\"", "", "tab\there", "ünï")


def sleeper(name: str = "sleeper", *args: str, **fields: Any) -> Program:
    return Program(name, (sys.executable, "-c", _SLEEPER, *args), **fields)


def gone(pid: int) -> bool:
    """Whether no process has this pid (a zombie counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(*pids: int) -> None:
    def check() -> tuple[bool | None, str]:
        left = [pid for pid in pids if not gone(pid)]
        return (True if not left else None), f"still running: {left}"

    poll_until(check, _DEADLINE_S, "processes not gone")


def log_line(supervisor: Supervisor, name: str, prefix: str) -> str:
    """The last line of a program's log that starts with ``prefix``, once there is one."""
    def check() -> tuple[str | None, str]:
        path = supervisor.log_path(name)
        lines = [line for line in path.read_text().splitlines() if line.startswith(prefix)] if path.exists() else []
        return (lines[-1] if lines else None), f"no line starting {prefix!r} in {path}"

    return poll_until(check, _DEADLINE_S, f"{name} wrote nothing")


def printed(supervisor: Supervisor, name: str) -> dict[str, Any]:
    """What the sleeper running now as ``name`` printed (not an earlier run's line: the log is appended to)."""
    return dict(json.loads(log_line(supervisor, name, f'{{"pid": {supervisor.pid(name)},')))


def daemons(supervisor: Supervisor) -> list[psutil.Process]:
    """The supervisord processes of this runtime directory."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(supervisor.config_path) in (process.info["cmdline"] or []) and not gone(process.pid):
            found.append(process)
    return found


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """A supervisor in a temp directory, shut down at the end whatever happened."""
    supervisor = Supervisor(tmp_path / "supervisor")
    yield supervisor
    supervisor.shutdown()


# ---- programs and command lines (no supervisord) --------------------------------------------------------------


def test_program_fields_are_checked_and_normalized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv: Any = ["/bin/true"]  # a list is taken, and kept as a tuple
    program = Program("ok-name_2", argv, env={"A": "1"}, cwd=Path("sub"), stop_signal="SIGint")
    assert program.command == ("/bin/true",) and program.stop_signal == "INT"
    assert program.cwd == tmp_path.resolve() / "sub"
    bad: list[dict[str, Any]] = [
        {"name": "Upper"}, {"name": "1st"}, {"name": "a:b"}, {"name": "x" * 65},
        {"command": ()}, {"command": ("A=1",)}, {"command": ("/bin/echo", "line\nbreak")},
        {"env": {"1X": "v"}}, {"env": {"X": "nul\0"}}, {"stop_signal": "NOPE"}, {"stop_wait_s": 0}, {"start_s": -1},
    ]
    for fields in bad:
        with pytest.raises(ConfigError):
            Program(**{"name": "p", "command": ("/bin/true",), **fields})


def test_the_command_line_reads_back_as_the_argv() -> None:
    from supervisor.options import UnhosedConfigParser

    def read_back(program: Program) -> list[str]:
        # What supervisord does: parse the ini line (inline ';'/'#' comments), expand %(name)s, shlex.split.
        parser = UnhosedConfigParser()
        parser.read_string(f"[program:{program.name}]\ncommand={command_line(program)}\n")
        return shlex.split(parser.get(f"program:{program.name}", "command") % {"here": "/elsewhere"})

    plain = Program("p", ("/bin/echo", *_TRICKY_ARGS))
    assert read_back(plain) == ["/bin/echo", *_TRICKY_ARGS]
    wrapped = Program("p", ("/bin/echo", "x"), env={"B": "2", "A": " ;#'\"%(x)s"}, cwd=Path("/tmp/d ir"))
    argv = read_back(wrapped)
    assert argv[0].endswith("env") and argv[1:] == ["--chdir=/tmp/d ir", "--", "A= ;#'\"%(x)s", "B=2", "/bin/echo", "x"]


def test_a_long_runtime_dir_gets_a_short_socket_and_an_odd_one_is_refused(tmp_path: Path) -> None:
    long_dir = tmp_path / ("deep-" * 30)
    socket_path = Supervisor(long_dir).socket_path
    assert len(str(socket_path)) <= 100 and not socket_path.is_relative_to(long_dir)
    assert Supervisor(long_dir).socket_path == socket_path  # every object on that directory finds it
    assert Supervisor(tmp_path / ("other-" * 30)).socket_path != socket_path
    assert Supervisor(tmp_path / "short").socket_path == tmp_path.resolve() / "short" / "supervisor.sock"
    for odd in ("with space", "semi;colon", "per%cent"):
        with pytest.raises(ConfigError, match="runtime directory"):
            Supervisor(tmp_path / odd)


# ---- a real supervisord ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_starts_a_program_and_another_object_attaches(tmp_path: Path) -> None:
    runtime_dir = tmp_path / ("long-" * 20)  # the socket goes to a short temp directory
    first = Supervisor(runtime_dir)
    try:
        assert not first.is_running() and first.status("sleeper") is None and first.programs() == {}
        first.stop("sleeper")
        first.remove("sleeper")
        first.shutdown()
        assert not runtime_dir.exists()  # asking a supervisor that never ran changes nothing
        workdir = tmp_path / "work"
        workdir.mkdir()
        first.run(sleeper("sleeper", *_TRICKY_ARGS, env={"VAR": "a ;#'\" value"}, cwd=workdir), _DEADLINE_S)
        assert first.is_running() and first.status("sleeper") == "RUNNING"
        assert printed(first, "sleeper") == {"pid": first.pid("sleeper"), "args": list(_TRICKY_ARGS),
                                             "var": "a ;#'\" value", "cwd": str(workdir.resolve())}

        second = Supervisor(runtime_dir)
        second.ensure_running(_DEADLINE_S)  # attaches: no second supervisord
        assert second.is_running() and len(daemons(second)) == 1
        assert second.programs() == {"sleeper": "RUNNING"} and second.pid("sleeper") == first.pid("sleeper")
        pid = first.pid("sleeper")
        second.run(sleeper("sleeper", *_TRICKY_ARGS, env={"VAR": "a ;#'\" value"}, cwd=workdir), _DEADLINE_S)
        assert second.pid("sleeper") == pid  # the same definition: left running
    finally:
        first.shutdown()
    assert daemons(first) == []


@pytest.mark.slow
def test_a_changed_definition_replaces_the_running_program(supervisor: Supervisor) -> None:
    supervisor.run(sleeper(env={"VAR": "one"}), _DEADLINE_S)
    old_pid = supervisor.pid("sleeper")
    assert old_pid is not None and printed(supervisor, "sleeper")["var"] == "one"

    supervisor.run(sleeper(env={"VAR": "two"}), _DEADLINE_S)
    new_pid = supervisor.pid("sleeper")
    assert new_pid is not None and new_pid != old_pid
    wait_gone(old_pid)
    assert printed(supervisor, "sleeper")["var"] == "two"
    assert supervisor.programs() == {"sleeper": "RUNNING"}


@pytest.mark.slow
def test_a_program_that_exits_at_once_fails_with_its_log(supervisor: Supervisor, tmp_path: Path) -> None:
    crasher = Program("crasher", (sys.executable, "-c", "print('cannot bind: boom'); raise SystemExit(3)"))
    with pytest.raises(PipelineError, match=r"(?s)crasher did not start.*cannot bind: boom"):
        supervisor.run(crasher, _DEADLINE_S)
    assert supervisor.status("crasher") in STOPPED_STATES  # not left retrying

    missing = Program("missing", (str(tmp_path / "no-such-binary"),))
    with pytest.raises(PipelineError, match="no-such-binary"):
        supervisor.run(missing, _DEADLINE_S)
    through_env = Program("through-env", (str(tmp_path / "no-such-binary"),), env={"VAR": "1"})
    with pytest.raises(PipelineError, match="(?s)through-env did not start.*No such file"):
        supervisor.run(through_env, _DEADLINE_S)

    supervisor.run(sleeper(), _DEADLINE_S)  # the failures left supervisord serving
    assert supervisor.status("sleeper") == "RUNNING"


@pytest.mark.slow
def test_stop_remove_and_shutdown_leave_no_process(supervisor: Supervisor) -> None:
    family = Program("family", (sys.executable, "-c", _FAMILY), stop_wait_s=2)

    def start() -> list[int]:
        supervisor.run(family, _DEADLINE_S)
        pids = [int(pid) for pid in log_line(supervisor, "family", f"pids {supervisor.pid('family')} ").split()[1:]]
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
        return pids

    pids = start()
    supervisor.stop("family", _DEADLINE_S)
    wait_gone(*pids)  # the child too: the whole process group is stopped
    assert supervisor.status("family") == "STOPPED"
    supervisor.stop("family")  # stopped already
    supervisor.stop("unknown")

    pids = start()
    supervisor.remove("family")
    wait_gone(*pids)
    assert supervisor.status("family") is None and supervisor.programs() == {}
    supervisor.remove("family")

    supervisor.run(Program("stubborn", (sys.executable, "-c", _STUBBORN), stop_wait_s=1), _DEADLINE_S)
    pids = start()
    stubborn_pid = supervisor.pid("stubborn")
    daemon_pids = [process.pid for process in daemons(supervisor)]
    assert stubborn_pid is not None and len(daemon_pids) == 1
    supervisor.shutdown(_DEADLINE_S)
    wait_gone(*pids, stubborn_pid, *daemon_pids)  # the one ignoring its stop signal got SIGKILL
    assert not supervisor.is_running() and not supervisor.socket_path.exists()
    assert supervisor.status("family") is None and supervisor.programs() == {}
    supervisor.shutdown()  # idempotent


def test_the_stack_supervisor_lives_in_the_home_and_python_programs_get_this_pythonpath(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack_supervisor(tmp_path).runtime_dir == tmp_path.resolve() / "supervisor"
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("EXTRA_VAR", "x")
    monkeypatch.delenv("NOT_SET", raising=False)
    assert python_env(("EXTRA_VAR", "NOT_SET")) == {"PYTHONPATH": "/somewhere", "EXTRA_VAR": "x"}


@pytest.mark.slow
def test_programs_stop_together_and_the_last_one_takes_supervisord_along(supervisor: Supervisor) -> None:
    supervisor.run(sleeper("one", env={"VAR": "secret-ish"}), _DEADLINE_S)
    supervisor.run(sleeper("two"), _DEADLINE_S)
    for path in (supervisor.config_path, *(supervisor.runtime_dir / "programs").glob("*.conf")):
        assert path.stat().st_mode & 0o777 == 0o600, path  # a program's env may be for its owner only
    pids = [supervisor.pid("one"), supervisor.pid("two")]
    assert all(pids)
    daemon = [process.pid for process in daemons(supervisor)]

    supervisor.remove("one")
    assert not supervisor.shutdown_if_idle()  # "two" still runs
    assert supervisor.is_running() and supervisor.programs() == {"two": "RUNNING"}
    supervisor.run(sleeper("one"), _DEADLINE_S)
    pids.append(supervisor.pid("one"))
    supervisor.remove("one", "two")  # both asked at once
    assert supervisor.programs() == {}
    assert supervisor.shutdown_if_idle()
    wait_gone(*[pid for pid in pids if pid], *daemon)
    assert not supervisor.is_running() and not supervisor.shutdown_if_idle()
