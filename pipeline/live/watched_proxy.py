"""The compose router: moves the live split of an nginx that runs in another container, by rewriting its config.

In docker-compose nginx runs in the ``proxy`` service (``configs/proxy/compose-entrypoint.sh``). It watches
``nginx.conf`` in the runtime directory, a volume the Airflow containers mount at the same path (so every path in
the config, pid, logs and temp files, names the same file in both), checks a changed file with ``nginx -t``,
reloads on it and records what became of it in ``reload.status``. This side renders the config with
:func:`~pipeline.live.proxy.render_config`, as the embedded proxy does, writes it atomically and polls the proxy's
``GET /_proxy/health`` until the new config's generation is served.

The split in effect is recorded beside the config in ``router.json``: the spec and generation the proxy serves,
and the highest generation ever written (a failed attempt's number is never reused, so an answer of an abandoned
config cannot pass for a later one). airflow-init writes the first one (:func:`write_initial_config`). A file lock
keeps two pipeline processes from interleaving; ``nginx.conf`` always holds the rendering of ``router.json``'s
spec, except while a change is waited on.

The canary upstream is named only while the canary gets a share: a 0 % config names production alone, so putting
the split back to 0 never depends on the canary's host name resolving when nginx loads it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound
from pipeline.live.endpoints import TrafficSplit
from pipeline.live.proxy import ProxySpec, UpstreamSpec, _RuntimePaths, render_config
from pipeline.util.files import file_lock, write_atomically
from pipeline.util.polling import poll_until

STATE_FILE = "router.json"
RELOAD_STATUS = "reload.status"  # written by compose-entrypoint.sh
_GENERATION_HEADER = "X-Proxy-Config"
_POLL_S = 0.1
_HEALTH_TIMEOUT_S = 2.0
# After a reload the old workers may take a new connection for a moment yet: the new generation must answer on
# this many fresh connections in a row before new requests count as following it.
_CONFIRMATIONS = 3


@dataclass(frozen=True)
class RouterState:
    """What ``router.json`` records: the config the proxy serves, and the last generation written."""

    generation: int
    spec: dict[str, Any]
    written: int

    def __post_init__(self) -> None:
        self.proxy_spec  # noqa: B018 (a state whose spec is not valid is refused when read, not at first use)

    @property
    def proxy_spec(self) -> ProxySpec:
        return ProxySpec.model_validate(self.spec)


def write_initial_config(runtime_dir: Path, spec: ProxySpec) -> bool:
    """Write the proxy's first config and ``router.json``, unless the router has written its state already.

    A config without a state file can only be an earlier first config (nothing else writes there without one),
    so it is replaced, one generation up. Returns whether anything was written.

    Raises:
        ConfigError: ``spec`` cannot be rendered (ports unset, an unsafe runtime path).
    """
    paths = _RuntimePaths(runtime_dir)
    with _locked(paths):
        if paths.root.joinpath(STATE_FILE).exists():
            return False
        generation = _config_generation(paths.config) + 1
        # The config before the state: a state without its config would leave the proxy waiting for ever.
        write_atomically(paths.config, render_config(spec, generation, paths.root))
        _write_state(paths, RouterState(generation, spec.model_dump(mode="json"), generation))
        return True


class WatchedNginxRouter:
    """The :class:`~pipeline.live.endpoints.TrafficRouter` of an nginx in another container (module docstring).

    Args:
        runtime_dir: the directory shared with the proxy container, at the same path in both.
        health_url: the proxy's ``/_proxy/health`` on its REST port, as this container reaches it.
        canary: the canary TF Serving, named in the config while the canary gets a share (default: the one the
            state file names, if any).
        mirror_url: the capture service, named while a share is mirrored (default: the state file's).
    """

    def __init__(self, runtime_dir: Path, health_url: str, canary: UpstreamSpec | None = None,
                 mirror_url: str | None = None):
        self.paths = _RuntimePaths(Path(runtime_dir))
        self.health_url = health_url
        self.canary = canary
        self.mirror_url = mirror_url

    @property
    def runtime_dir(self) -> Path:
        return self.paths.root

    @property
    def access_log_path(self) -> Path:
        """The proxy's JSON-lines access log (the embedded proxy's name; the live analysis reads it)."""
        return self.paths.access_log

    @property
    def state_path(self) -> Path:
        return self.paths.root / STATE_FILE

    @property
    def status_path(self) -> Path:
        return self.paths.root / RELOAD_STATUS

    def current_split(self) -> TrafficSplit:
        state = _read_state(self.state_path)
        if state is None:
            return TrafficSplit(0.0, 0.0)
        spec = state.proxy_spec
        return TrafficSplit(spec.canary_percent, spec.mirror_percent)

    def spec(self) -> ProxySpec:
        """The spec the proxy serves.

        Raises:
            NotFound: the proxy's first config was never written.
        """
        return self._require_state().proxy_spec

    def set_split(self, split: TrafficSplit, timeout_s: float) -> None:
        """Render the split's config, write it, and return once the proxy serves it.

        Raises:
            NotFound: no first config (airflow-init writes it), or a share needs a canary or mirror target that
                neither this router nor the state names.
            ConfigError: the proxy's ``nginx -t`` refused the config; it keeps serving the old one.
            DeadlineExceeded: the new generation was not served within ``timeout_s``; the config file is put back
                to the old spec, which ``router.json`` still records.
        """
        with _locked(self.paths):
            state = self._require_state()
            running = state.proxy_spec
            wanted = self._spec_for(running, split)
            if (wanted.canary_percent, wanted.mirror_percent) == (running.canary_percent, running.mirror_percent):
                return
            generation = state.written + 1
            text = render_config(wanted, generation, self.paths.root)
            # Record the number before the file appears, so that no later attempt reuses it.
            _write_state(self.paths, RouterState(state.generation, state.spec, generation))
            try:
                write_atomically(self.paths.config, text)
                self._wait_served(generation, _signature(self.paths.config), timeout_s)
            except BaseException:
                # The proxy keeps (or gets back) the old config: the file says so again, for its next start too.
                write_atomically(self.paths.config, render_config(running, state.generation, self.paths.root))
                raise
            _write_state(self.paths, RouterState(generation, wanted.model_dump(mode="json"), generation))

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _require_state(self) -> RouterState:
        state = _read_state(self.state_path)
        if state is None:
            raise NotFound(f"the proxy's first config was never written ({self.state_path} is missing): "
                           "airflow-init writes it (pipeline.live.watched_proxy.write_initial_config)")
        return state

    def _spec_for(self, running: ProxySpec, split: TrafficSplit) -> ProxySpec:
        canary = (self.canary or running.canary) if split.canary_percent > 0 else None
        mirror_url = self.mirror_url or running.mirror_url
        if split.canary_percent > 0 and canary is None:
            raise NotFound("no canary upstream to send a share to: the profile has no canary instance")
        if split.mirror_percent > 0 and mirror_url is None:
            raise NotFound("no mirror target to copy a share to: the profile names no capture service")
        fields = {**running.model_dump(), "canary": canary, "mirror_url": mirror_url,
                  "canary_percent": split.canary_percent, "mirror_percent": split.mirror_percent}
        return ProxySpec.model_validate(fields)

    def _wait_served(self, generation: int, signature: tuple[int, int, int], timeout_s: float) -> None:
        """Poll the health URL until ``generation`` answers :data:`_CONFIRMATIONS` times in a row.

        Raises:
            ConfigError: ``reload.status`` says the proxy refused this very file.
            DeadlineExceeded: not served in time; with the last answer, the reload status and the error log.
        """
        in_a_row = 0

        def check() -> tuple[bool | None, str]:
            nonlocal in_a_row
            refusal = _refusal(self.status_path, signature)
            if refusal is not None:
                raise ConfigError(f"the proxy refused config generation {generation} ({self.paths.config}) and "
                                  f"keeps the one in effect: {refusal}")
            served, answer = _served_generation(self.health_url)
            in_a_row = in_a_row + 1 if served == generation else 0
            return (True if in_a_row >= _CONFIRMATIONS else None), answer

        try:
            poll_until(check, timeout_s, f"proxy config generation {generation} not served at {self.health_url}",
                       interval_s=_POLL_S, hint="is the proxy container running? (docker compose ps proxy)")
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"{exc}; {self.status_path}: {_tail(self.status_path)}; "
                                   f"{self.paths.error_log}: {_tail(self.paths.error_log)}") from None


# ---- state and files ------------------------------------------------------------------------------------------


def _locked(paths: _RuntimePaths) -> contextlib.AbstractContextManager[None]:
    return file_lock(paths.root / ".lock")  # the embedded proxy's lock file: one writer of the directory


def _read_state(path: Path) -> RouterState | None:
    """The state, None when there is none.

    Raises:
        ConfigError: the file is not a router state (it is only ever written whole, so someone else wrote it).
    """
    try:
        return RouterState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, ValidationError) as exc:
        raise ConfigError(f"{path} is not the router's state ({exc}); remove it and rerun airflow-init") from None


def _write_state(paths: _RuntimePaths, state: RouterState) -> None:
    write_atomically(paths.root / STATE_FILE, json.dumps(asdict(state), indent=2))


def _config_generation(config: Path) -> int:
    """The generation a rendered config says it is (its header comment), 0 when there is none."""
    with contextlib.suppress(OSError):
        for line in config.read_text().splitlines()[:5]:
            if ": generation " in line:
                with contextlib.suppress(ValueError):
                    return int(line.rsplit(": generation ", 1)[1].split(".")[0])
    return 0


def _signature(path: Path) -> tuple[int, int, int]:
    """(inode, mtime in ns, size): what the entrypoint's ``stat -c '%i %y %s'`` prints, as numbers."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _parse_signature(words: list[str]) -> tuple[int, int, int] | None:
    """The numbers of ``<inode> <YYYY-MM-DD> <HH:MM:SS.nnnnnnnnn> <+zzzz> <size>`` (GNU stat's ``%y``)."""
    try:
        inode, day, clock, zone, size = words
        whole, _, fraction = clock.partition(".")
        seconds = datetime.strptime(f"{day} {whole} {zone}", "%Y-%m-%d %H:%M:%S %z").timestamp()
        return int(inode), round(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9]), int(size)
    except ValueError:
        return None


def _refusal(status_path: Path, signature: tuple[int, int, int]) -> str | None:
    """nginx's message when ``reload.status`` says the file with ``signature`` was refused, else None."""
    try:
        text = status_path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    words = text.split(" ", 5)
    if len(words) < 6 or _parse_signature(words[:5]) != signature:
        return None  # about another file (an earlier one), or not yet written
    outcome = words[5].strip()
    return outcome.removeprefix("refused:").strip() if outcome.startswith("refused") else None


def _served_generation(url: str) -> tuple[int | None, str]:
    """(the generation the proxy answers with on a new connection, a few words on the answer)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=_HEALTH_TIMEOUT_S)
    try:
        connection.request("GET", parts.path or "/", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(4096).decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return None, f"no answer ({type(exc).__name__}: {exc})"
    finally:
        connection.close()
    answer = f"HTTP {response.status} {_GENERATION_HEADER}={response.getheader(_GENERATION_HEADER)} {body.strip()[:200]}"
    if response.status != 200:
        return None, answer
    return _generation_of(response.getheader(_GENERATION_HEADER), body), answer


def _generation_of(header: str | None, body: str) -> int | None:
    """The header's generation, else the JSON body's."""
    if header and header.strip().isdigit():
        return int(header)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        value = json.loads(body).get("generation")
        return value if isinstance(value, int) else None
    return None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except FileNotFoundError:
        return "(none)"

