"""Deploy a version to the staging TF Serving and validate it there (TFX InfraValidator's job, done fully).

Staging serves only the version under test (``specific`` policy). Validation checks, in order:
status AVAILABLE within the deadline → the served signature equals the exported one → golden requests
give the offline model's predictions through REST and gRPC → accuracy on a held-out sample through
serving ≥ the floor → p95 latency ≤ budget → a malformed request gets a 4xx. A failure marks the
version ``rejected``; production is never touched here.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import DeadlineExceeded, PipelineError
from pipeline.gates import Verdict
from pipeline.release.context import STAGING, Release
from pipeline.release.probes import (
    ProbeResult,
    Target,
    accuracy_probe,
    golden_probe,
    latency_probe,
    malformed_request_probe,
    merge,
)
from pipeline.release.registry import State
from pipeline.release.served_events import record_served_change
from pipeline.release.serving_state import change_served_state
from pipeline.wire.dtypes import numpy_name
from pipeline.wire.version_dirs import read_golden, read_metadata

log = logging.getLogger(__name__)


def deploy_to_staging(release: Release, version: int, run_id: str | None = None) -> dict[str, Any]:
    """Make staging serve exactly ``version`` and wait until it is AVAILABLE."""
    backend = release.backend(STAGING)
    deadline = release.config.serving.load_deadline_s
    try:
        change_served_state(backend, release.model, release.base_path, [version], {}, deadline,
                            registry=release.registry)
    except (DeadlineExceeded, PipelineError) as exc:
        release.registry.transition(release.model, version, State.REJECTED, run_id=run_id,
                                    reason=f"staging could not load it: {exc}")
        raise
    release.registry.transition(release.model, version, State.STAGED, run_id=run_id, reason="AVAILABLE on staging")
    record_served_change(release, STAGING, f"version {version} deployed for validation", run_id, change="deploy")
    return {"version": version, "endpoint": backend.endpoint().rest_url}


def signature_probe(target: Target, expected: dict[str, Any]) -> ProbeResult:
    """The served signature has the exported inputs and outputs (names, dtypes, shapes)."""
    served = target.client.metadata(target.model, version=target.version, label=target.label)
    name = target.signature_name
    got = served.get(name)
    want = expected.get(name)
    if got is None:
        return ProbeResult({}, [f"served model has no signature {name!r} (has {sorted(served)})"])
    problems = [
        f"signature {name!r} {side} differ: served {got[side]} != exported {want[side]}"
        for side in ("inputs", "outputs")
        if want and _normalise(got[side]) != _normalise(want[side])
    ]
    return ProbeResult({"signature": name}, problems)


def _normalise(tensors: dict[str, Any]) -> dict[str, tuple]:
    """(dtype, shape) per tensor, comparable whichever side spelled it (``DT_FLOAT`` or ``float32``)."""
    def shape(value: Any) -> tuple | None:
        return None if value is None else tuple(-1 if d in (None, -1) else int(d) for d in value)

    return {k: (numpy_name(str(v["dtype"])), shape(v.get("shape"))) for k, v in tensors.items()}


def validate_on_staging(release: Release, version: int, run_id: str | None = None) -> Verdict:
    """Every staging check on ``version``; the verdict is written down and the registry updated.

    A NOT_BLESSED version is ``rejected``, whatever the run's conf: no fault injected on purpose overrides it.
    """
    serving = release.config.serving
    target = Target(release.client(STAGING), release.model, version=version, signature_name=serving.signature_name)
    metadata = read_metadata(release.version_dir(version))
    inputs, labels = release.held_out_sample(version)
    result = merge(
        signature_probe(target, metadata.get("signatures", {})),
        golden_probe(target, read_golden(release.version_dir(version)), serving.golden_tolerance),
        accuracy_probe(target, inputs, labels, release.config.gates.min_value),
        latency_probe(target, inputs, serving.latency_budget_p95_ms),
        malformed_request_probe(target),
    )
    verdict = Verdict("staging", not result.problems, result.problems, result.figures)
    verdict.write(release.verdict_path(version, "staging"))
    state = State.VALIDATED if verdict.blessed else State.REJECTED
    release.registry.transition(release.model, version, state, run_id=run_id, reason=verdict.summary())
    log.info(verdict.summary())
    return verdict
