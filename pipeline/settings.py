"""Where the pipeline keeps its state on disk. Read from the environment, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_HOME = REPO_ROOT / "var"
_DEFAULT_CONFIG_DIR = REPO_ROOT / "configs"


@dataclass(frozen=True)
class Paths:
    """The directories under one pipeline home (``$PIPELINE_HOME``, default ``<repo>/var``)."""

    home: Path

    @property
    def cache_dir(self) -> Path:
        """Downloaded raw sources (npm tarballs, keras files), verified."""
        return self.home / "cache"

    @property
    def data_dir(self) -> Path:
        """Data snapshots: ``data/<model>/<sha256>/``."""
        return self.home / "data"

    @property
    def runs_dir(self) -> Path:
        """Training runs: ``runs/<model>/<run_id>/`` (Keras model, metrics, plots)."""
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        """Root of the versioned model base paths: ``models/<model>/<N>/``."""
        return self.home / "models"

    @property
    def serving_dir(self) -> Path:
        """models.config files and logs of the embedded servers."""
        return self.home / "serving"

    @property
    def registry_url(self) -> str:
        """SQLAlchemy URL of the release registry (``$PIPELINE_REGISTRY_URL`` overrides)."""
        return os.environ.get("PIPELINE_REGISTRY_URL") or f"sqlite:///{self.home / 'registry.db'}"

    def model_base_path(self, model: str) -> Path:
        """The TF Serving ``model_base_path`` of one model."""
        return self.models_dir / model


def get_paths(home: str | Path | None = None) -> Paths:
    """The pipeline's directories, from ``home``, ``$PIPELINE_HOME`` or ``<repo>/var``."""
    chosen = home or os.environ.get("PIPELINE_HOME") or _DEFAULT_HOME
    return Paths(Path(chosen).expanduser().resolve())


def config_dir() -> Path:
    """Directory holding ``models/*.yaml`` (``$PIPELINE_CONFIG_DIR`` overrides)."""
    return Path(os.environ.get("PIPELINE_CONFIG_DIR") or _DEFAULT_CONFIG_DIR)
