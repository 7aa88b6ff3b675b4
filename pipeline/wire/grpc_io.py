"""Which I/O path grpc core takes in our processes: its classic poller, not the EventEngine client and listener.

grpcio 1.85 reads and writes sockets for clients (``event_engine_client``) and servers (``event_engine_listener``) on
an EventEngine thread pool, so each unary call crosses extra threads on both ends. On the 2-vCPU machines this
project runs on, a gRPC echo took 0.59 ms p50 with grpc's defaults and 0.34 ms with both experiments off on both
ends; ``bench/serving.py`` puts gRPC's batch-1 overhead at +0.92 to +1.07 ms with grpc's defaults and +0.72 to
+0.90 ms without them (alternating runs; ``--grpc-event-engine`` runs the former).

grpc core reads ``GRPC_EXPERIMENTS`` (documented in grpc's ``doc/environment_variables.md``) once, when grpcio
is imported, and has no per-channel switch. So the places where our servers and clients start set a default for
it before grpc loads: the ``pipeline`` CLI, the embedded server's ``main``, the environment the local backend
starts servers with, the Airflow stack's environment (its task processes inherit it), the DAG tasks, the benches
and the tests. A value the operator set, even an empty one, is left alone (``GRPC_EXPERIMENTS=`` keeps grpc's own
defaults). Importing a library module never changes ``os.environ``; a process that imported grpc before
setting it keeps the path it started with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

ENV_VAR = "GRPC_EXPERIMENTS"
CLASSIC_IO = "-event_engine_client,-event_engine_listener"


def prefer_classic_io(environ: MutableMapping[str, str] = os.environ) -> str:
    """Default ``GRPC_EXPERIMENTS`` to grpc's classic I/O path; the value in effect afterwards."""
    return environ.setdefault(ENV_VAR, CLASSIC_IO)


def classic_io_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of ``environ`` for a child process, with the classic I/O path as the default."""
    env = dict(environ)
    prefer_classic_io(env)
    return env
