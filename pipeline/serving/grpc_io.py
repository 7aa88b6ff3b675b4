"""Which I/O path grpc core takes in our processes: its classic poller, not the EventEngine client and listener.

grpcio 1.85 reads and writes sockets for clients (``event_engine_client``) and servers (``event_engine_listener``) on
an EventEngine thread pool, so each unary call crosses extra threads on both ends. On the 2-vCPU machines this
project runs on, a gRPC echo took 0.59 ms p50 with grpc's defaults and 0.34 ms with both experiments off on both
ends; ``bench/serving.py`` puts gRPC's batch-1 overhead at +0.92 to +1.07 ms with grpc's defaults and +0.72 to
+0.90 ms without them (alternating runs; ``--grpc-event-engine`` runs the former).

grpc core reads ``GRPC_EXPERIMENTS`` (documented in grpc's ``doc/environment_variables.md``) once, when grpcio
is imported, and has no per-channel switch. So importing :mod:`pipeline.serving` sets a default for it, which a
server started from this process inherits; a value the operator set, even an empty one, is left alone
(``GRPC_EXPERIMENTS=`` keeps grpc's own defaults). A process that imported grpc before this package keeps the path
it started with.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV_VAR = "GRPC_EXPERIMENTS"
CLASSIC_IO = "-event_engine_client,-event_engine_listener"


def prefer_classic_io(environ: MutableMapping[str, str] = os.environ) -> str:
    """Default ``GRPC_EXPERIMENTS`` to grpc's classic I/O path; the value in effect afterwards."""
    return environ.setdefault(ENV_VAR, CLASSIC_IO)
