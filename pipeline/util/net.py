"""Free loopback ports, picked the one way every server start, test and bench uses."""

from __future__ import annotations

import contextlib
import socket

_PROBE_TIMEOUT_S = 0.5


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free now: every probe stays bound until all are picked.

    A port may still be taken before its server binds it; callers that start servers retry or fail with the
    server's own error.
    """
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port(host: str = "127.0.0.1") -> int:
    """One free port (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT_S)
        return probe.connect_ex((host, port)) == 0
