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

import numpy as np

from pipeline.errors import DeadlineExceeded, PipelineError
from pipeline.release.context import STAGING, Release
from pipeline.release.gates import Verdict
from pipeline.release.probes import (
    ProbeResult, Target, accuracy_probe, golden_probe, latency_probe, malformed_request_probe, merge,
)
from pipeline.release.registry import State
from pipeline.release.serving_state import change_served_state

log = logging.getLogger(__name__)


def deploy_to_staging(release: Release, version: int, run_id: str | None = None) -> dict[str, Any]:
    """Make staging serve exactly ``version`` and wait until it is AVAILABLE."""
    backend, client = release.backend(STAGING), release.client(STAGING)
    deadline = release.config.serving.load_deadline_s
    try:
        change_served_state(backend, client, release.model, release.base_path, [version], {}, deadline)
    except (DeadlineExceeded, PipelineError) as exc:
        release.registry.transition(release.model, version, State.REJECTED, run_id=run_id,
                                    reason=f"staging could not load it: {exc}")
        raise
    release.registry.transition(release.model, version, State.STAGED, run_id=run_id, reason="AVAILABLE on staging")
    return {"version": version, "endpoint": backend.endpoint().rest_url}


def held_out_sample(release: Release, version: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` test examples of the snapshot this version was trained on, as model inputs."""
    from pipeline.data.dataset import Snapshot
    from pipeline.export import read_metadata
    from pipeline.models import to_model_inputs

    sha = read_metadata(release.version_dir(version))["data_snapshot_sha256"]
    test = Snapshot.open(release.paths.data_dir / release.model / sha).split("test")
    sample = test.subset(np.arange(min(size, len(test))))
    return to_model_inputs(sample), sample.y


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
    from pipeline.serving.client import dtype_name

    def shape(value: Any) -> tuple | None:
        return None if value is None else tuple(-1 if d in (None, -1) else int(d) for d in value)

    return {k: (dtype_name(str(v["dtype"])), shape(v.get("shape"))) for k, v in tensors.items()}


def validate_on_staging(release: Release, version: int, run_id: str | None = None, *,
                        overridden_by: str | None = None) -> Verdict:
    """Every staging check on ``version``; the verdict is written down and the registry updated.

    ``overridden_by`` (a fault injected on purpose) lets a NOT_BLESSED version go on to the canary, which
    must then catch it; the registry reason says so.
    """
    from pipeline.export import read_golden, read_metadata

    serving = release.config.serving
    target = Target(release.client(STAGING), release.model, version=version, signature_name=serving.signature_name)
    metadata = read_metadata(release.version_dir(version))
    inputs, labels = held_out_sample(release, version, serving.sample_size)
    result = merge(
        signature_probe(target, metadata.get("signatures", {})),
        golden_probe(target, read_golden(release.version_dir(version)), serving.golden_tolerance),
        accuracy_probe(target, inputs, labels, release.config.gates.min_value),
        latency_probe(target, inputs, serving.latency_budget_p95_ms),
        malformed_request_probe(target),
    )
    verdict = Verdict("staging", not result.problems, result.problems, result.figures)
    verdict.write(release.paths.serving_dir / "verdicts" / release.model / str(version) / "staging.json")
    reason = verdict.summary()
    if not verdict.blessed and overridden_by:
        reason = f"{reason}; overridden: {overridden_by}"
    state = State.VALIDATED if verdict.blessed or overridden_by else State.REJECTED
    release.registry.transition(release.model, version, state, run_id=run_id, reason=reason)
    log.info(verdict.summary())
    return verdict
