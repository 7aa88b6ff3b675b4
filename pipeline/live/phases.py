"""The live canary's phases, from a model's config: shadow, then one weighted step per configured percent.

Light (pydantic config only): the DAG factory reads the phases at parse time to lay out one task per phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import LiveCanaryConfig

SHADOW = "shadow"


@dataclass(frozen=True)
class PhaseSpec:
    """One phase: its name, the share of live traffic the canary serves, the share mirrored and captured."""

    name: str
    canary_percent: float
    mirror_percent: float

    @property
    def task_id(self) -> str:
        """The release DAG's task id: ``shadow``, ``canary_5pct``, ..."""
        return SHADOW if self.name == SHADOW else f"canary_{self.name.removesuffix('%')}pct"


def live_phases(config: LiveCanaryConfig) -> tuple[PhaseSpec, ...]:
    """Shadow (mirror only: no user sees the canary's answers), then each weighted step in order."""
    mirror = round(config.mirror_share * 100, 2)
    return (PhaseSpec(SHADOW, 0.0, mirror), *(PhaseSpec(f"{step}%", float(step), mirror) for step in config.steps))


def phase_named(config: LiveCanaryConfig, name: str) -> PhaseSpec:
    """The phase ``name`` (``shadow``, ``25%``) of ``config``.

    Raises:
        ValueError: the config has no such phase.
    """
    for phase in live_phases(config):
        if name in (phase.name, phase.task_id):
            return phase
    raise ValueError(f"no live phase {name!r}; the config's phases are {[p.name for p in live_phases(config)]}")
