"""What DAG files need to know at parse time, read cheaply (YAML + pydantic, no TensorFlow, no network).

The DAG factory needs the model names and each one's schedule and fault-injection switch; everything
else is read inside the tasks at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import LiveCanaryConfig, ModelConfig, list_models, load_model_config


@dataclass(frozen=True)
class ReleaseSpec:
    """The parse-time facts of one model's release DAG."""

    model: str
    task: str
    schedule: str | None
    allow_fault_injection: bool
    data_source: str
    epochs: int
    learning_rate: float
    train_runner: str = "in_process"
    canary: LiveCanaryConfig = field(default_factory=LiveCanaryConfig)  # the live phases: one task each


def spec_of(config: ModelConfig) -> ReleaseSpec:
    """The parse-time facts of one model's config."""
    return ReleaseSpec(
        model=config.name, task=config.task, schedule=config.release.schedule,
        allow_fault_injection=config.release.allow_fault_injection, data_source=config.data.source,
        epochs=config.train.epochs, learning_rate=config.train.learning_rate,
        train_runner=config.train.runner, canary=config.canary,
    )


def release_specs() -> list[ReleaseSpec]:
    """One spec per ``configs/models/*.yaml``."""
    return [spec_of(load_model_config(name)) for name in list_models()]
