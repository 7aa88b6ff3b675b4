"""Checks that send real requests to a TF Serving and compare what comes back.

Staging validation and canary checks are built from these, so both judge a version the same way.
Each probe returns figures and a list of problems (empty = passed); gates turn them into verdicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.serving.client import Protocol, ServingClient, ServingError

_DEFAULT_BATCH = 100
_DEFAULT_LATENCY_REQUESTS = 50


@dataclass(frozen=True)
class Target:
    """What a probe talks to: a model on a server, by version or by label."""

    client: ServingClient
    model: str
    version: int | None = None
    label: str | None = None
    signature_name: str = "serving_default"

    def describe(self) -> str:
        what = f"label {self.label}" if self.label else f"version {self.version}"
        return f"{self.model} {what}"

    def predict(self, inputs: Any, protocol: Protocol = "rest") -> dict[str, np.ndarray]:
        return self.client.predict(self.model, instances=inputs, version=self.version, label=self.label,
                                   signature_name=self.signature_name, protocol=protocol)


@dataclass
class ProbeResult:
    """Figures a probe measured, and what it found wrong."""

    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _golden_inputs(golden: dict[str, Any]) -> np.ndarray:
    inputs = golden["inputs"]
    return np.asarray(inputs, dtype=object if isinstance(inputs[0], str) else np.float32)


def golden_probe(target: Target, golden: dict[str, Any], tolerance: float, protocols=("rest", "grpc")) -> ProbeResult:
    """The golden inputs stored with a version give the offline model's predictions through each protocol."""
    result = ProbeResult()
    expected = np.asarray(golden["probabilities"], dtype=np.float64)
    inputs = _golden_inputs(golden)
    for protocol in protocols:
        try:
            served = np.asarray(target.predict(inputs, protocol)["probabilities"], dtype=np.float64)
        except ServingError as exc:
            result.problems.append(f"golden requests over {protocol} failed: {exc}")
            continue
        worst = float(np.abs(served - expected).max()) if served.shape == expected.shape else float("inf")
        result.figures[f"golden_max_abs_diff_{protocol}"] = worst
        if worst > tolerance:
            result.problems.append(
                f"{target.describe()} over {protocol}: predictions differ from offline by {worst:.2e} "
                f"(tolerance {tolerance:.0e})")
    return result


def predict_batches(target: Target, inputs: np.ndarray, batch: int = _DEFAULT_BATCH) -> tuple[np.ndarray, int]:
    """Class predictions for ``inputs`` in batches; returns (classes, failed request count)."""
    classes, failures = [], 0
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        try:
            classes.append(np.asarray(target.predict(chunk)["classes"], dtype=np.int64).reshape(-1))
        except ServingError:
            failures += 1
            classes.append(np.full(len(chunk), -1, dtype=np.int64))
    return (np.concatenate(classes) if classes else np.empty(0, np.int64)), failures


def accuracy_probe(target: Target, inputs: np.ndarray, labels: np.ndarray, floor: float) -> ProbeResult:
    """Accuracy of served predictions on a held-out sample, against a floor; any failed request is a problem."""
    classes, failures = predict_batches(target, inputs)
    accuracy = float((classes == labels).mean()) if len(labels) else 0.0
    result = ProbeResult({"served_accuracy": accuracy, "sample_size": int(len(labels)), "failed_requests": failures})
    if failures:
        result.problems.append(f"{failures} prediction requests to {target.describe()} failed")
    if accuracy < floor:
        result.problems.append(f"accuracy through serving {accuracy:.4f} on {len(labels)} examples is below {floor:.4f}")
    return result


def latency_probe(target: Target, inputs: np.ndarray, budget_ms: float,
                  requests: int = _DEFAULT_LATENCY_REQUESTS) -> ProbeResult:
    """p50/p95 of single-example REST predicts against a p95 budget."""
    timings = []
    for i in range(requests):
        start = time.perf_counter()
        target.predict(inputs[i % len(inputs):i % len(inputs) + 1])
        timings.append((time.perf_counter() - start) * 1000)
    p50, p95 = (float(np.percentile(timings, q)) for q in (50, 95))
    result = ProbeResult({"latency_p50_ms": round(p50, 3), "latency_p95_ms": round(p95, 3), "latency_requests": requests})
    if p95 > budget_ms:
        result.problems.append(f"p95 latency {p95:.1f} ms is over the {budget_ms:.0f} ms budget")
    return result


def malformed_request_probe(target: Target) -> ProbeResult:
    """A request with an unknown input name must be refused with a 4xx, not crash or succeed."""
    try:
        target.client.predict(target.model, inputs={"no_such_input": [[1.0]]}, version=target.version,
                              label=target.label, signature_name=target.signature_name)
    except ServingError as exc:
        status = exc.http_status or 0
        ok = 400 <= status < 500
        return ProbeResult({"malformed_status": status}, [] if ok else [f"malformed request got HTTP {status}"])
    return ProbeResult({"malformed_status": 200}, ["a malformed request was answered 200"])


def agreement_probe(candidate: Target, reference: Target, inputs: np.ndarray, minimum: float) -> ProbeResult:
    """Fraction of a sample on which two servables predict the same class, against a minimum."""
    ours, fail_a = predict_batches(candidate, inputs)
    theirs, fail_b = predict_batches(reference, inputs)
    agreement = float((ours == theirs).mean()) if len(inputs) else 1.0
    result = ProbeResult({"agreement": agreement, "agreement_sample": int(len(inputs))})
    if fail_a or fail_b:
        result.problems.append(f"{fail_a + fail_b} requests failed while comparing with {reference.describe()}")
    if agreement < minimum:
        result.problems.append(
            f"{candidate.describe()} agrees with {reference.describe()} on {agreement:.1%} of {len(inputs)} "
            f"examples (minimum {minimum:.0%})")
    return result


def merge(*results: ProbeResult) -> ProbeResult:
    """One result holding every probe's figures and problems."""
    merged = ProbeResult()
    for result in results:
        merged.figures.update(result.figures)
        merged.problems.extend(result.problems)
    return merged
