"""Gates are data: each check returns a :class:`Verdict` with its figures and reason, written down.

A task that gates calls :func:`Verdict.raise_if_failed` so the run fails with the verdict's reason.
Kept light (stdlib only): DAG callbacks and the CLI import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ValidationFailed
from pipeline.util.files import write_atomically

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"


@dataclass
class Verdict:
    """The outcome of one gate: blessed or not, why, and the figures behind it."""

    gate: str
    blessed: bool
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return BLESSED if self.blessed else NOT_BLESSED

    def summary(self) -> str:
        why = "; ".join(self.reasons) or "all checks passed"
        return f"{self.gate}: {self.status} ({why})"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, **asdict(self)}

    def write(self, path: Path) -> Path:
        """Write the verdict as JSON, atomically: the written record (not implied by task order), never half."""
        return write_atomically(path, json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str))

    def raise_if_failed(self) -> Verdict:
        if not self.blessed:
            raise ValidationFailed(self.summary())
        return self


def evaluation_gate(
    metrics: dict[str, float], metric: str, floor: float, max_regression: float, baseline: dict[str, Any] | None
) -> Verdict:
    """Absolute floor, and no regression beyond ``max_regression`` against the production baseline (if any; its
    ``baseline_on`` says what it was measured on)."""
    value = float(metrics[metric])
    figures: dict[str, Any] = {"metric": metric, "candidate": value, "floor": floor, "max_regression": max_regression}
    reasons = []
    if value < floor:
        reasons.append(f"{metric} {value:.4f} is below the floor {floor:.4f}")
    if baseline is not None and metric in baseline:
        base = float(baseline[metric])
        figures["baseline"] = base
        figures["delta"] = value - base
        if baseline.get("baseline_on"):
            figures["baseline_on"] = baseline["baseline_on"]
        if value < base - max_regression:
            reasons.append(f"{metric} {value:.4f} regresses more than {max_regression} from production's {base:.4f}")
    elif baseline is None:
        figures["baseline"] = None  # first release: only the floor applies
    return Verdict("evaluate", not reasons, reasons, figures)
