"""A Docker engine to run containers on: the one ``$DOCKER_HOST`` names, or a private ``dockerd`` we start.

The private daemon never touches the machine's firewall or its default socket: ``--iptables=false
--bridge=none`` (no default bridge, no NAT rules), its socket, exec root and pid file in a temporary directory.
Only its data root (images and build cache) lives in the cache directory, outside any work tree, so a fresh clone
reuses the images an earlier run built. One daemon at a time may own a data root (a flock): a second one started
meanwhile gets a data root of its own in its temp directory (cold) rather than share it.

Containers reach each other on user-defined networks (compose's) and the host through ``network_mode: host``;
the default ``bridge`` network does not exist on such a daemon.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pipeline.errors import SourceUnavailable
from pipeline.util.polling import poll_until

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0
_LOG_TAIL_CHARS = 2000


def cache_dir() -> Path:
    """Where images and their inputs are cached across clones: ``$PIPELINE_DOCKER_CACHE`` or
    ``$XDG_CACHE_HOME/mlops-pipeline`` (``~/.cache/mlops-pipeline``)."""
    explicit = os.environ.get("PIPELINE_DOCKER_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-pipeline"


@dataclass
class Engine:
    """A reachable Docker engine; ``process`` is set when we started it (and so must stop it)."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None
    data_root: Path | None = None
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def private(self) -> bool:
        return self.process is not None

    def client(self, timeout_s: int = 600) -> docker.DockerClient:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=timeout_s)

    def environment(self) -> dict[str, str]:
        """What a child process (docker CLI, docker-compose, Airflow's DockerOperator) needs to reach it."""
        return {"DOCKER_HOST": self.url}

    def stop(self) -> None:
        """Stop a private daemon, leaving no container, network or volume of ours and no process; a no-op for an
        engine someone else runs."""
        if self.process is None:
            return
        try:
            remove_everything(self.client(timeout_s=60))
        except Exception as exc:  # the daemon may already be gone: stopping it is what matters
            log.warning("could not clean the private docker engine before stopping it: %s", exc)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=_STOP_TIMEOUT_S)
        self.process = None
        if self._lock is not None:
            self._lock.close()  # frees the data root's flock
            self._lock = None
        if self.run_dir is not None:
            _unmount_under(self.run_dir)  # dockerd leaves its default netns bind-mounted in the exec root
            shutil.rmtree(self.run_dir, ignore_errors=True)


def remove_everything(client: docker.DockerClient) -> None:
    """Remove every container, user-defined network and volume of an engine (a private one: never call it on a
    shared engine), and the images no tag names any more (a rebuild's leftovers). Tagged images stay: the cache."""
    for container in client.containers.list(all=True):
        container.remove(force=True, v=True)
    for network in client.networks.list():
        if network.name not in ("bridge", "host", "none"):
            network.remove()
    client.volumes.prune()
    client.images.prune(filters={"dangling": True})


def reachable(url: str) -> str | None:
    """None when an engine answers a ping at ``url``, else why not."""
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{url}: {exc}"
    return None


def start_private_engine(timeout_s: float = _START_TIMEOUT_S) -> Engine:
    """Start a private ``dockerd`` (see the module's doc) and wait until it answers.

    Raises:
        SourceUnavailable: no ``dockerd`` binary, not root, or the daemon did not come up (with its log's end).
    """
    binary = shutil.which("dockerd")
    if binary is None:
        raise SourceUnavailable("no dockerd on PATH (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise SourceUnavailable("a private dockerd needs root (run the tests as root, or set DOCKER_HOST)")
    run_dir = Path(tempfile.mkdtemp(prefix="dkr-", dir="/tmp"))  # short: unix socket paths are limited
    data_root, lock = _claim_data_root(run_dir)
    url = f"unix://{run_dir}/docker.sock"
    log_path = run_dir / "dockerd.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [binary, "--host", url, "--data-root", str(data_root), "--exec-root", str(run_dir / "exec"),
             "--pidfile", str(run_dir / "docker.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--storage-driver", _storage_driver(), "--log-level", "warn"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(url, process, run_dir, data_root, lock)

    def answering() -> tuple[bool | None, str]:
        if process.poll() is not None:
            engine.stop()
            raise SourceUnavailable(f"dockerd exited with {process.returncode}: {_tail(log_path)}")
        why = reachable(url)
        return (True, "answering") if why is None else (None, why)

    try:
        poll_until(answering, timeout_s, f"the private dockerd did not answer at {url}", interval_s=0.5)
    except Exception:
        engine.stop()
        raise
    log.info("private docker engine at %s (data root %s)", url, data_root)
    return engine


def engine_for_tests() -> Engine:
    """``$DOCKER_HOST``'s engine when it answers, else a private one started here.

    Raises:
        SourceUnavailable: neither (the message says why each failed).
    """
    url = os.environ.get("DOCKER_HOST")
    if url:
        why = reachable(url)
        if why is None:
            return Engine(url)
        raise SourceUnavailable(f"DOCKER_HOST is set but no engine answers: {why}")
    try:
        return start_private_engine()
    except SourceUnavailable as exc:
        raise SourceUnavailable(f"no Docker engine: DOCKER_HOST is unset and a private dockerd did not start ({exc})")\
            from None


def _claim_data_root(run_dir: Path) -> tuple[Path, IO[str] | None]:
    """The cached data root if no other daemon holds it, else a fresh one inside ``run_dir``."""
    root = cache_dir() / "docker"
    root.mkdir(parents=True, exist_ok=True)
    handle = open(cache_dir() / "docker.lock", "a+")  # held while the daemon runs; the kernel frees it on exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        log.warning("another private dockerd holds %s: this one starts cold in %s", root, run_dir)
        return run_dir / "data", None
    return root, handle


def _unmount_under(directory: Path) -> None:
    """Unmount whatever is still mounted under ``directory``, deepest first."""
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        done = subprocess.run(["umount", point], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("could not unmount %s: %s", point, done.stderr.strip())


def _storage_driver() -> str:
    """overlay2 where the kernel mounts it (layers are diffs), else vfs (full copies: slow, but works anywhere)."""
    return os.environ.get("PIPELINE_DOCKER_STORAGE_DRIVER") or "overlay2"


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"
