"""Where the pipeline keeps its state on disk. Read from the environment, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_HOME = REPO_ROOT / "var"
_DEFAULT_CONFIG_DIR = REPO_ROOT / "configs"
REGISTRY_URL_ENV = "PIPELINE_REGISTRY_URL"
REGISTRY_URL_FILE_ENV = "PIPELINE_REGISTRY_URL_FILE"


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
        """SQLAlchemy URL of the release registry: ``$PIPELINE_REGISTRY_URL``, else the first line of the file
        ``$PIPELINE_REGISTRY_URL_FILE`` names (a mounted secret: a URL with a password stays out of the
        environment), else SQLite under the home.

        Raises:
            ConfigError: ``$PIPELINE_REGISTRY_URL_FILE`` names a file that cannot be read or is empty.
        """
        if url := os.environ.get(REGISTRY_URL_ENV):
            return url
        if secret := os.environ.get(REGISTRY_URL_FILE_ENV):
            try:
                url = Path(secret).read_text().strip().splitlines()[0].strip()
            except (OSError, IndexError):
                url = ""
            if not url:
                from pipeline.errors import ConfigError

                raise ConfigError(f"${REGISTRY_URL_FILE_ENV}: {secret} is missing, unreadable or empty; it must "
                                  "hold the registry's SQLAlchemy URL")
            return url
        return f"sqlite:///{self.home / 'registry.db'}"

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
