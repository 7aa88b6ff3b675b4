"""A small typed wrapper around supervisord: the one way the stack keeps its long-running helper processes running.

Each :class:`Supervisor` owns one supervisord, whose files all lie in its runtime directory::

    supervisord.conf        written at each start of supervisord; includes programs/*.conf
    programs/<name>.conf    one [program:<name>] section per program, written by Supervisor.run
    logs/<name>.log         the program's stdout and stderr together (bounded: supervisord rotates it)
    supervisord.pid, supervisord.log, supervisord.out (what supervisord printed before it daemonized)
    supervisor.sock         the XML-RPC socket (under a short temp directory when this path is too long)
    supervisor.lock         serializes changes made by several processes

Config files are written 0600 (a program's ``env`` may hold what only its owner should read).
The embedded stack runs all its long-running processes under one supervisord: :func:`stack_supervisor`.

supervisord daemonizes into its own session, so it and its programs outlive the process that started them, and any
other :class:`Supervisor` on the same directory, in any process, attaches to it. Everything goes through
supervisord's XML-RPC interface (``reloadConfig``, ``addProcessGroup``, ``startProcess``, ...), never
``supervisorctl``.

A program starts only when :meth:`Supervisor.run` asks (``autostart=false``: a restarted supervisord brings nothing
up on its own); once started, supervisord starts it again whenever it exits. It is stopped with its whole process
group (``stopasgroup``/``killasgroup``): its stop signal first, SIGKILL after ``stop_wait_s``. Programs inherit the
environment of the process that started supervisord, plus their own ``env`` and ``PYTHONUNBUFFERED=1`` (so a
Python helper's output reaches its log line by line).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import Faults, SupervisorTransport

from pipeline.errors import ConfigError, DeadlineExceeded, PipelineError
from pipeline.util.files import file_lock, write_atomically
from pipeline.util.polling import poll_until

RUNNING = "RUNNING"
STARTING = "STARTING"
BACKOFF = "BACKOFF"
STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})  # no process left (supervisord's STOPPED_STATES)
# A process now or soon: EXITED is followed by a restart (autorestart=true), BACKOFF by another try.
ALIVE_STATES = frozenset({RUNNING, STARTING, BACKOFF, "EXITED"})
# What a Python program of ours takes from the process that defines it, whoever started supervisord.
_PYTHON_ENV = ("PYTHONPATH",)

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What may stand in supervisord's config as it is: no whitespace (the include list splits on it), no ';' or '#'
# (comments), no '%' (supervisord expands %(name)s).
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./@+,=:-]*")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_./@+,=:-]")  # left as it is in a command line, every other one is escaped
_FORBIDDEN_CHARS = ("\0", "\n", "\r")  # a config line cannot hold them, argv and the environment not NUL
_MAX_SOCKET_PATH = 100  # AF_UNIX takes 108 bytes with the NUL; a little margin
_RPC_TIMEOUT_S = 10.0
_REMOVE_TIMEOUT_S = 60.0
_POLL_S = 0.1
_LOG_MAX_BYTES = "10MB"
_LOG_BACKUPS = 3
_START_RETRIES = 3  # restarts of a program that exits while STARTING, before FATAL (run() stops at the first)
_TAIL_LINES = 20
_TAIL_BYTES = 16 * 1024
_CONFIG_MODE = 0o600
# supervisord not answering: no socket, nobody listening, a broken or timed-out answer.
_UNREACHABLE = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)


@dataclass(frozen=True)
class Program:
    """One long-running process under supervisord.

    Attributes:
        name: ``[a-z][a-z0-9_-]*``, 64 characters at most: its name in supervisord and its log's.
        command: the argv, run without a shell (any characters but NUL and line breaks).
        env: variables added to supervisord's environment for this program.
        cwd: its working directory (default: the runtime directory); a relative one is resolved now.
        stop_signal: the signal that asks it to stop (``TERM``, ``INT``, ``QUIT``...: a name without ``SIG``).
        stop_wait_s: how long it may take to stop before SIGKILL (supervisord counts whole seconds: rounded up).
        start_s: how long it must stay up to count as started (supervisord's ``startsecs``, rounded up).

    Raises:
        ConfigError: a field supervisord cannot take; the message names it.
    """

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    stop_signal: str = "TERM"
    stop_wait_s: float = 10.0
    start_s: float = 1.0

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", dict(self.env))  # a copy: the caller's later changes do not leak in
        if self.cwd is not None:
            object.__setattr__(self, "cwd", Path(self.cwd).resolve())
        object.__setattr__(self, "stop_signal", _signal_name(self.stop_signal))
        if not self.command or not all(isinstance(arg, str) for arg in self.command):
            raise ConfigError(f"program {self.name}: command must be a non-empty argv of strings")
        if "=" in self.command[0]:
            raise ConfigError(f"program {self.name}: the executable {self.command[0]!r} must not contain '='")
        for text in (*self.command, *self.env.values(), str(self.cwd or "")):
            if any(char in text for char in _FORBIDDEN_CHARS):
                raise ConfigError(f"program {self.name}: {text!r} holds a NUL or line break")
        for key in self.env:
            if not _ENV_NAME.fullmatch(key):
                raise ConfigError(f"program {self.name}: env name {key!r} is not a variable name")
        if self.stop_wait_s <= 0 or self.start_s < 0:
            raise ConfigError(f"program {self.name}: stop_wait_s must be positive and start_s not negative")


def python_env(names: tuple[str, ...] = ()) -> dict[str, str]:
    """The variables of this process a Python program we define needs (``PYTHONPATH``, plus ``names``), for its
    ``env``: supervisord's own environment is that of whichever process started it."""
    return {name: os.environ[name] for name in (*_PYTHON_ENV, *names) if name in os.environ}


def stack_supervisor(home: Path) -> Supervisor:
    """The one supervisord of the embedded stack whose pipeline home is ``home`` (``<home>/supervisor``): the
    servers, the proxy, the capture service, Prometheus and Airflow's components all run under it."""
    return Supervisor(Path(home) / "supervisor")


class Supervisor:
    """One supervisord and its programs, all in ``runtime_dir`` (created when supervisord first starts).

    Several objects, in one process or several, may share a directory: they talk to the same supervisord.

    Raises:
        ConfigError: the directory's path cannot stand in supervisord's config (whitespace, ``;``, ``#``, ``%``...).
    """

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = Path(runtime_dir).resolve()
        if not _SAFE_PATH.fullmatch(str(self.runtime_dir)):
            raise ConfigError(f"supervisor runtime directory {self.runtime_dir} has characters supervisord's config "
                              "cannot hold; use letters, digits and _ . / @ + , = : -")
        self.config_path = self.runtime_dir / "supervisord.conf"
        self.socket_path = _socket_path(self.runtime_dir)
        self._identifier = f"pipeline:{self.runtime_dir}"  # tells our supervisord from any other on that socket

    # ---- supervisord itself -------------------------------------------------------------------------------

    def ensure_running(self, timeout_s: float = 30.0) -> None:
        """Start supervisord unless it already runs for this directory; return once its XML-RPC answers.

        Raises:
            PipelineError: supervisord exited while starting (what it printed is in the message).
            DeadlineExceeded: it did not answer within ``timeout_s``.
        """
        with self._locked():
            self._ensure_running(timeout_s)

    def is_running(self) -> bool:
        """Whether this directory's supervisord answers (one that is shutting down does not)."""
        try:
            with self._rpc() as rpc:
                return bool(rpc.getIdentification() == self._identifier and rpc.getState()["statename"] == RUNNING)
        except (xmlrpc.client.Fault, *_UNREACHABLE):  # a Fault: shutting down
            return False

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every program, then supervisord, and wait until none of their processes is left. Idempotent.

        Each program gets its stop signal and its ``stop_wait_s``; whatever is left of supervisord or its programs
        after ``timeout_s`` is killed.
        """
        if not self.runtime_dir.exists():
            return  # never started: nothing to stop (and no directory made just to say so)
        with self._locked():
            self._shutdown(timeout_s)

    def shutdown_if_idle(self, timeout_s: float = 30.0) -> bool:
        """Shut supervisord down when it runs and none of its programs has a process (or is about to get one);
        whether it did.

        Whoever stops one program calls it, so that stopping the last one leaves nothing running.
        """
        if not self.runtime_dir.exists():
            return False
        with self._locked():
            if not self.is_running() or any(state not in STOPPED_STATES for state in self.programs().values()):
                return False
            self._shutdown(timeout_s)
            return True

    # ---- programs -----------------------------------------------------------------------------------------

    def run(self, program: Program, timeout_s: float = 60.0) -> None:
        """Make ``program`` run as defined, and return once it is RUNNING (up for its ``start_s``).

        Idempotent: a running program with the same definition is left alone; a changed definition replaces the
        old one, whose process is stopped first. Starts supervisord when it is not running.

        Raises:
            ConfigError: supervisord refused the program's config.
            PipelineError: it exited while starting (BACKOFF, FATAL) or could not be spawned; the message holds the
                last lines of its log. It is left stopped.
            DeadlineExceeded: it was not RUNNING within ``timeout_s`` (the last lines of its log are in the
                message); it is left stopped.
        """
        deadline = time.monotonic() + timeout_s
        with self._locked():
            self._ensure_running(timeout_s)
            self._define(program, deadline)
            self._start(program.name)
            self._wait_started(program.name, deadline)

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop one program and its process group; nothing happens when it is unknown or not running.

        Raises:
            DeadlineExceeded: it had not stopped after ``timeout_s``.
        """
        _check_name(name)
        if not self.runtime_dir.exists():
            return
        with self._locked():
            self._stop(name, time.monotonic() + timeout_s)

    def remove(self, *names: str) -> None:
        """Stop programs (all at once) and forget them (their logs stay); nothing happens for an unknown one."""
        for name in names:
            _check_name(name)
        if not self.runtime_dir.exists():
            return
        with self._locked():
            for name in names:
                self._program_path(name).unlink(missing_ok=True)
            if not self.is_running():
                return
            self._stop(names, time.monotonic() + _REMOVE_TIMEOUT_S)
            self._reload()  # supervisord forgets the definitions (their files are gone)...
            for name in names:
                with self._rpc() as rpc, _unless_fault(Faults.BAD_NAME):
                    rpc.removeProcessGroup(name)  # ...and the stopped process groups

    def status(self, name: str) -> str | None:
        """supervisord's state of a program (``RUNNING``, ``STARTING``, ``BACKOFF``, ``STOPPED``, ``EXITED``,
        ``FATAL``...); None when it is unknown or supervisord is not running."""
        info = self._info(name)
        return None if info is None else str(info["statename"])

    def pid(self, name: str) -> int | None:
        """The process id of a program now; None when it has no process."""
        info = self._info(name)
        if info is None or not info["pid"]:  # supervisord reports 0 for a program without a process
            return None
        return int(info["pid"])

    def programs(self) -> dict[str, str]:
        """Every program supervisord knows, by name, with its state; empty when supervisord is not running."""
        try:
            with self._rpc() as rpc:
                return {str(info["name"]): str(info["statename"]) for info in rpc.getAllProcessInfo()}
        except (xmlrpc.client.Fault, *_UNREACHABLE):
            return {}

    def log_path(self, name: str) -> Path:
        """Where a program's stdout and stderr go."""
        _check_name(name)
        return self.runtime_dir / "logs" / f"{name}.log"

    def log_tail(self, name: str) -> str:
        """The last lines of a program's log, as a sentence for an error message."""
        path = self.log_path(name)
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - _TAIL_BYTES))
                lines = handle.read().decode("utf-8", errors="replace").splitlines()[-_TAIL_LINES:]
        except OSError:
            return f"It wrote no log ({path})."
        if not lines:
            return f"Its log is empty ({path})."
        return f"The last lines of {path}:\n" + "\n".join(lines)

    # ---- the steps ----------------------------------------------------------------------------------------

    def _shutdown(self, timeout_s: float) -> None:
        daemon = self._daemon_process()
        if daemon is not None:
            processes = _with_descendants(daemon)
            try:
                with self._rpc() as rpc:
                    rpc.shutdown()
            except xmlrpc.client.Fault:
                pass  # already shutting down
            except _UNREACHABLE:
                with contextlib.suppress(psutil.Error):
                    daemon.terminate()  # SIGTERM: supervisord shuts down the same way
            _end(processes, timeout_s)
        self.socket_path.unlink(missing_ok=True)
        if self.socket_path.parent != self.runtime_dir:
            with contextlib.suppress(OSError):
                self.socket_path.parent.rmdir()

    def _ensure_running(self, timeout_s: float) -> None:
        if self.is_running():
            return
        deadline = time.monotonic() + timeout_s
        leftover = self._daemon_process()
        if leftover is not None:  # shutting down, or hung: let it finish before a new one takes the socket
            _end([leftover], max(0.0, deadline - time.monotonic()), kill=False)
        for directory in (self.runtime_dir / "programs", self.runtime_dir / "logs"):
            directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self.config_path, self._supervisord_config(), mode=_CONFIG_MODE)
        output = self.runtime_dir / "supervisord.out"
        command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config_path)]
        with open(output, "wb") as out:
            # The foreground supervisord binds the socket, then forks the daemon (setsid) and exits.
            try:
                started = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.runtime_dir, start_new_session=True, check=False,
                                         timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise DeadlineExceeded(f"supervisord did not daemonize within {timeout_s:g}s; see {output}") from None
        if started.returncode != 0:
            raise PipelineError(f"supervisord did not start (exit status {started.returncode}): "
                                f"{output.read_text(errors='replace').strip()}")

        def answering() -> tuple[bool | None, str]:
            return (True if self.is_running() else None), "no answer on " + str(self.socket_path)

        poll_until(answering, max(0.0, deadline - time.monotonic()), "supervisord not answering",
                   interval_s=_POLL_S, hint=f"see {self.runtime_dir / 'supervisord.log'}")

    def _define(self, program: Program, deadline: float) -> None:
        """Write the program's config and make supervisord's process group match it."""
        path = self._program_path(program.name)
        text = _program_config(program, self.log_path(program.name))
        previous = path.read_text() if path.exists() else None
        if text != previous:
            write_atomically(path, text, mode=_CONFIG_MODE)
        try:
            added, changed = self._reload()
        except ConfigError:
            if previous is None:  # leave supervisord's config readable for the next caller
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, previous, mode=_CONFIG_MODE)
            raise
        if program.name in changed:
            self._stop(program.name, deadline)
            with self._rpc() as rpc, _unless_fault(Faults.BAD_NAME):
                rpc.removeProcessGroup(program.name)
        if program.name in added or program.name in changed:
            with self._rpc() as rpc, _unless_fault(Faults.ALREADY_ADDED):
                rpc.addProcessGroup(program.name)

    def _reload(self) -> tuple[list[str], list[str]]:
        """Have supervisord re-read the program files; the names of the groups added and changed since."""
        try:
            with self._rpc() as rpc:
                [[added, changed, _removed]] = rpc.reloadConfig()
        except xmlrpc.client.Fault as fault:
            raise ConfigError(f"supervisord refused its config: {fault.faultString}") from None
        return list(added), list(changed)

    def _start(self, name: str) -> None:
        state = self.status(name)
        if state in (RUNNING, STARTING):
            return
        if state == BACKOFF:  # waiting to retry a failed start: start afresh, now
            self._stop(name, time.monotonic() + _RPC_TIMEOUT_S)
        try:
            with self._rpc() as rpc, _unless_fault(Faults.ALREADY_STARTED):
                rpc.startProcess(name, False)  # no wait here: _wait_started polls with the caller's deadline
        except xmlrpc.client.Fault as fault:  # no such file, not executable, could not spawn
            self._stop_quietly(name)
            raise PipelineError(f"program {name} could not be started: {fault.faultString}. "
                                f"{self.log_tail(name)}") from None

    def _wait_started(self, name: str, deadline: float) -> None:
        def started() -> tuple[bool | None, str]:
            info = self._info(name)
            state = "unknown" if info is None else str(info["statename"])
            if state == RUNNING:
                return True, state
            if state != STARTING:
                self._stop_quietly(name)  # BACKOFF would retry on its own: the caller decides what comes next
                details = "" if info is None else _exit_details(info)
                raise PipelineError(f"program {name} did not start: {state}{details}. {self.log_tail(name)}")
            return None, state

        try:
            poll_until(started, max(0.0, deadline - time.monotonic()), f"program {name} not RUNNING",
                       interval_s=_POLL_S)
        except DeadlineExceeded as exc:
            self._stop_quietly(name)
            raise DeadlineExceeded(f"{exc}. {self.log_tail(name)}") from None

    def _stop(self, names: str | tuple[str, ...], deadline: float) -> None:
        """Ask each program to stop (its stop signal, SIGKILL after its stop_wait_s), then wait for them all."""
        names = (names,) if isinstance(names, str) else names
        stopping = []
        for name in names:
            try:
                with self._rpc() as rpc:
                    rpc.stopProcess(name, False)  # no wait here: polled below, with the caller's deadline
                stopping.append(name)
            except xmlrpc.client.Fault as fault:
                if fault.faultCode not in (Faults.BAD_NAME, Faults.NOT_RUNNING):
                    raise PipelineError(f"could not stop program {name}: {fault.faultString}") from None
            except _UNREACHABLE:
                return  # no supervisord: nothing of it runs

        def stopped() -> tuple[bool | None, str]:
            left = {name: state for name in stopping
                    if (state := self.status(name)) is not None and state not in STOPPED_STATES}
            return (True if not left else None), str(left)

        poll_until(stopped, max(0.0, deadline - time.monotonic()), f"programs {', '.join(stopping)} not stopped",
                   interval_s=_POLL_S, hint=f"a stop signal may be ignored; see {self.runtime_dir / 'logs'}")

    def _stop_quietly(self, name: str) -> None:
        """Stop a program that failed to start, when it can be; the caller raises the error that matters."""
        with contextlib.suppress(PipelineError):
            self._stop(name, time.monotonic() + _RPC_TIMEOUT_S)

    # ---- helpers ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _rpc(self) -> Iterator[Any]:
        """supervisord's ``supervisor.*`` XML-RPC namespace, over the unix socket."""
        transport = _Transport(self.socket_path, _RPC_TIMEOUT_S)
        with xmlrpc.client.ServerProxy("http://localhost", transport=transport) as proxy:
            yield proxy.supervisor

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.runtime_dir / "supervisor.lock"):
            yield

    def _info(self, name: str) -> dict[str, Any] | None:
        _check_name(name)
        try:
            with self._rpc() as rpc:
                return dict(rpc.getProcessInfo(name))
        except (xmlrpc.client.Fault, *_UNREACHABLE):  # BAD_NAME, shutting down, not running
            return None

    def _program_path(self, name: str) -> Path:
        return self.runtime_dir / "programs" / f"{name}.conf"

    def _daemon_process(self) -> psutil.Process | None:
        """The supervisord of this directory, when one is alive (answering or not)."""
        try:
            process = psutil.Process(int((self.runtime_dir / "supervisord.pid").read_text().strip()))
            alive = process.status() != psutil.STATUS_ZOMBIE
            return process if alive and str(self.config_path) in process.cmdline() else None
        except (OSError, ValueError, psutil.Error):  # no pid file, a dead pid, another program's pid
            return None

    def _supervisord_config(self) -> str:
        return "\n".join([
            "; Written by pipeline.util.supervisor at each start of supervisord: do not edit.",
            "[unix_http_server]",
            f"file={self.socket_path}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.runtime_dir / 'supervisord.log'}",
            f"logfile_maxbytes={_LOG_MAX_BYTES}",
            f"logfile_backups={_LOG_BACKUPS}",
            f"pidfile={self.runtime_dir / 'supervisord.pid'}",
            f"directory={self.runtime_dir}",
            f"childlogdir={self.runtime_dir / 'logs'}",
            f"identifier={self._identifier}",
            "nodaemon=false",
            'environment=PYTHONUNBUFFERED="1"',
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[include]",
            f"files={self.runtime_dir / 'programs'}/*.conf",
            "",
        ])


# ---- rendering ------------------------------------------------------------------------------------------------


def _program_config(program: Program, log_path: Path) -> str:
    """The ``[program:<name>]`` section of ``program``."""
    return "\n".join([
        "; Written by pipeline.util.supervisor (Supervisor.run): do not edit.",
        f"[program:{program.name}]",
        f"command={command_line(program)}",
        "autostart=false",
        "autorestart=true",
        f"startsecs={math.ceil(program.start_s)}",
        f"startretries={_START_RETRIES}",
        f"stopsignal={program.stop_signal}",
        f"stopwaitsecs={math.ceil(program.stop_wait_s)}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_path}",
        f"stdout_logfile_maxbytes={_LOG_MAX_BYTES}",
        f"stdout_logfile_backups={_LOG_BACKUPS}",
        "",
    ])


def command_line(program: Program) -> str:
    """The ``command=`` value that supervisord reads back (``%`` expansion, then ``shlex.split``) as the program's
    argv: every character but letters, digits and ``_./@+,=:-`` is backslash-escaped, so no whitespace stands
    before ``;`` or ``#`` (the config parser would cut a comment there), and ``%`` is doubled.

    With ``env`` or ``cwd``, the argv is run through env(1), which exec()s it (same process, same group): the
    values never meet supervisord's ``environment=`` syntax, which cannot hold every string (quotes at either end,
    ``' ;'``).
    """
    argv = list(program.command)
    if program.env or program.cwd is not None:
        wrapper = [_env_binary()]
        if program.cwd is not None:
            wrapper.append(f"--chdir={program.cwd}")
        argv = [*wrapper, "--", *(f"{key}={value}" for key, value in sorted(program.env.items())), *argv]
    return " ".join(_config_word(arg) for arg in argv)


def _config_word(arg: str) -> str:
    if not arg:
        return "''"
    escaped = "".join(char if _WORD_CHAR.fullmatch(char) else "\\" + char for char in arg)
    return escaped.replace("%", "%%")


@functools.cache
def _env_binary() -> str:
    found = shutil.which("env") or "/usr/bin/env"
    if not _SAFE_PATH.fullmatch(found):
        raise ConfigError(f"env(1) at {found} cannot stand in supervisord's config")
    return found


def _socket_path(runtime_dir: Path) -> Path:
    """The XML-RPC socket: in the runtime directory when the path fits AF_UNIX's limit, else in a short temp
    directory named after a hash of the runtime directory (the same for every process using that directory)."""
    inside = runtime_dir / "supervisor.sock"
    if len(os.fsencode(inside)) <= _MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(runtime_dir)).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"pipeline-supervisor-{digest}" / "supervisor.sock"
    if len(os.fsencode(short)) > _MAX_SOCKET_PATH or not _SAFE_PATH.fullmatch(str(short)):
        raise ConfigError(f"no usable socket path for supervisord: {inside} is too long and so is {short}")
    return short


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"program name {name!r}: expected [a-z][a-z0-9_-]*, at most 64 characters")


def _signal_name(name: str) -> str:
    bare = name.upper().removeprefix("SIG")
    if f"SIG{bare}" not in signal.Signals.__members__:
        raise ConfigError(f"stop_signal {name!r} is not a signal name (TERM, INT, QUIT, HUP, KILL, USR1, USR2)")
    return bare


def _exit_details(info: Mapping[str, Any]) -> str:
    details = [f"exit status {info['exitstatus']}"] if info.get("exitstatus") else []
    if info.get("spawnerr"):
        details.append(str(info["spawnerr"]))
    return f" ({'; '.join(details)})" if details else ""


# ---- processes and the socket ---------------------------------------------------------------------------------


def _with_descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def _end(processes: list[psutil.Process], timeout_s: float, kill: bool = True) -> None:
    """Wait up to ``timeout_s`` for ``processes`` to exit; then SIGKILL what is left, or raise.

    Raises:
        DeadlineExceeded: some are left and ``kill`` is False.
    """
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    alive = [process for process in alive if _is_alive(process)]  # a zombie is gone, its parent just did not reap
    if not alive:
        return
    if not kill:
        raise DeadlineExceeded(f"supervisord (pid {alive[0].pid}) still running after {timeout_s:g}s")
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5.0)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def _unless_fault(code: int) -> Iterator[None]:
    """Ignore an XML-RPC fault with ``code`` (e.g. ALREADY_ADDED when another caller was first)."""
    try:
        yield
    except xmlrpc.client.Fault as fault:
        if fault.faultCode != code:
            raise


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, with a deadline on connecting and on each read."""

    def __init__(self, socket_path: Path, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):
    """supervisor's XML-RPC transport, on connections with a timeout (its own have none: a stuck supervisord would
    hang the caller forever)."""

    def __init__(self, socket_path: Path, timeout_s: float) -> None:
        super().__init__(serverurl=f"unix://{socket_path}")
        self._get_connection = functools.partial(_UnixConnection, socket_path, timeout_s)
