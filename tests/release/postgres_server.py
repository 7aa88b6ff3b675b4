"""A throw-away PostgreSQL server for the registry's tests: Debian's ``postgresql`` package, started in a temp dir.

``initdb`` + ``pg_ctl start`` on a free loopback port, with its unix socket in the temp dir, trust authentication
for one role, no fsync (scratch data). PostgreSQL refuses to run as root, so as root every server command runs as
the ``postgres`` system user (``runuser -u postgres --``), which the package creates. Each test gets a database of
its own (:meth:`PostgresServer.create_database`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.util.net import free_port

ROLE = "pipeline"
_START_TIMEOUT_S = 120  # initdb and the first start on 2 busy cores
_SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``, else ``initdb`` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(part) if part.isdigit() else 0 for part in Path(p).parts[4].split(".")])
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def missing_reason() -> str | None:
    """Why no server can be started here (names the missing thing), or None."""
    if find_bin_dir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y --no-install-recommends "
                "postgresql (or set PIPELINE_TEST_POSTGRES_URL)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser not found: PostgreSQL refuses to run as root and there is no way to drop to another user"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return f"no {_SERVER_USER!r} system user to run PostgreSQL as (it refuses to run as root)"
    return None


@dataclass
class PostgresServer:
    """One running server; :meth:`stop` removes everything it wrote."""

    root: Path
    port: int
    bin_dir: Path

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(missing_reason() or "no PostgreSQL binaries")
        root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
        server = cls(root, free_port(), bin_dir)
        if os.geteuid() == 0:
            shutil.chown(root, user=_SERVER_USER)
        try:
            server._run("initdb", "-D", str(server.data_dir), "-U", ROLE, "-A", "trust", "--no-sync",
                        "--encoding=UTF8", "--locale=C")
            options = (f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            server._run("pg_ctl", "-D", str(server.data_dir), "-o", options, "-l", str(root / "server.log"), "-w",
                        "-t", str(_START_TIMEOUT_S), "start")
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(self._command("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"),
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres",
                             autocommit=True, connect_timeout=30) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", _SERVER_USER, "--", *command] if os.geteuid() == 0 else command

    def _run(self, program: str, *args: str) -> None:
        proc = subprocess.run(self._command(program, *args), capture_output=True, text=True,
                              timeout=_START_TIMEOUT_S + 30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{program} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}\n{self.log_tail()}")
