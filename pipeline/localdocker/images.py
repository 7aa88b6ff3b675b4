"""The images the project's containers run, built here from Debian's packages where Docker Hub is out of reach.

- ``debian``: Debian bookworm made by ``mmdebstrap`` from Debian's own packages (Python 3.11, PostgreSQL, nginx,
  Prometheus, curl), imported with ``docker import``. Its tag carries the hash of its recipe, and the tarball is
  cached outside the work tree: it is made again only when the recipe changes.
- ``airflow-base``: the official Airflow image's layout on that base (dockerfiles/local/airflow-base.Dockerfile).
- ``pipeline``: the project's own Dockerfile with ``BASE_IMAGE`` set to it, pip fed from a wheelhouse of the pinned
  set (downloaded once by the host's pip, served on loopback to the build).
- ``tfserving``: the embedded TF-Serving-compatible server in TF Serving's image layout (dockerfiles/local/).
- ``postgres``: Debian's PostgreSQL behind the official image's environment contract (dockerfiles/local/).

Every later build goes through the engine's layer cache, so an unchanged image rebuilds in seconds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SourceUnavailable
from pipeline.localdocker.engine import cache_dir
from pipeline.settings import REPO_ROOT

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

RECIPES = REPO_ROOT / "dockerfiles" / "local"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the local images need from Debian: Python 3.11 (Airflow, the pipeline, the server), dumb-init (the Airflow
# image's init), PostgreSQL, nginx and Prometheus (the compose stack's other services), curl and wget (healthchecks).
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates", "dumb-init", "curl", "wget", "procps",
                   "postgresql", "nginx", "prometheus", "tzdata")
PIPELINE_TAG = "mlops-pipeline:0.1.0"
AIRFLOW_BASE_TAG = "mlops-local/airflow-base:3.3.2-python3.11"
TFSERVING_TAG = "mlops-local/tfserving:2.19.0-embedded"
POSTGRES_TAG = "mlops-local/postgres:15-bookworm"
NGINX_TAG = "mlops-local/nginx:1.22-bookworm"
PROMETHEUS_TAG = "mlops-local/prometheus:2.42-bookworm"
_MMDEBSTRAP_TIMEOUT_S = 1800
WHEELHOUSE_PORT = 38417


class ToolMissing(SourceUnavailable):
    """A tool the images are made with is not installed (as opposed to a build that failed)."""


@dataclass(frozen=True)
class LocalImages:
    """Tags of the images built here (all pinned)."""

    debian: str
    pipeline: str = PIPELINE_TAG
    tfserving: str = TFSERVING_TAG
    postgres: str = POSTGRES_TAG
    nginx: str = NGINX_TAG
    prometheus: str = PROMETHEUS_TAG


def build_all(client: docker.DockerClient) -> LocalImages:
    """Every local image, each from the layer cache when its inputs are unchanged."""
    debian = debian_image(client)
    build(client, RECIPES / "airflow-base.Dockerfile", AIRFLOW_BASE_TAG, RECIPES, {"DEBIAN_IMAGE": debian})
    build_pipeline_image(client, AIRFLOW_BASE_TAG)
    build(client, RECIPES / "tfserving.Dockerfile", TFSERVING_TAG, RECIPES, {"PIPELINE_IMAGE": PIPELINE_TAG})
    for recipe, tag in (("postgres", POSTGRES_TAG), ("nginx", NGINX_TAG), ("prometheus", PROMETHEUS_TAG)):
        build(client, RECIPES / f"{recipe}.Dockerfile", tag, RECIPES, {"DEBIAN_IMAGE": debian})
    return LocalImages(debian=debian)


def debian_recipe() -> dict[str, Any]:
    return {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "variant": "minbase", "packages": sorted(DEBIAN_PACKAGES)}


def debian_image(client: docker.DockerClient) -> str:
    """The tag of the Debian base image, imported from the cached tarball (made with mmdebstrap when missing)."""
    import docker

    digest = _digest(json.dumps(debian_recipe(), sort_keys=True).encode())
    tag = f"mlops-local/debian:{DEBIAN_SUITE}-{digest}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    tarball = _debian_tarball(digest)
    log.info("importing %s as %s", tarball, tag)
    repository, _, version = tag.partition(":")
    with open(tarball, "rb") as data:
        client.api.import_image_from_data(data, repository=repository, tag=version,
                                          changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]'])
    return tag


def _debian_tarball(digest: str) -> Path:
    tarball = cache_dir() / "images" / f"debian-{DEBIAN_SUITE}-{digest}.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    command = ["mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES),
               DEBIAN_SUITE, str(partial), DEBIAN_MIRROR]
    log.info("making the Debian base image: %s", " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_MMDEBSTRAP_TIMEOUT_S)
    except FileNotFoundError:
        raise ToolMissing("mmdebstrap is not installed (apt-get install mmdebstrap)") from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SourceUnavailable(f"mmdebstrap failed ({done.returncode}): {done.stderr[-2000:]}")
    partial.rename(tarball)  # complete or absent: a killed run leaves only the .partial
    return tarball


def build_pipeline_image(client: docker.DockerClient, base_image: str) -> str:
    """The project's Dockerfile on ``base_image``, pip installing from the local wheelhouse."""
    wheels = wheelhouse()
    with served_directory(wheels) as url:
        return build(client, REPO_ROOT / "Dockerfile", PIPELINE_TAG, REPO_ROOT,
                     {"BASE_IMAGE": base_image, "PIP_EXTRA_ARGS": f"--no-index --find-links {url}"})


def build(client: docker.DockerClient, dockerfile: Path, tag: str, context: Path, buildargs: dict[str, str]) -> str:
    """Build ``dockerfile`` in ``context`` as ``tag`` (host network: the build reaches loopback servers).

    Raises:
        SourceUnavailable: the build failed; the message has the step's output.
    """
    log.info("building %s from %s", tag, dockerfile)
    output: list[str] = []
    for chunk in client.api.build(path=str(context), dockerfile=str(dockerfile.relative_to(context)), tag=tag,
                                  buildargs=buildargs, network_mode="host", rm=True, forcerm=True, decode=True):
        if "stream" in chunk:
            output.append(chunk["stream"])
        if "error" in chunk:
            raise SourceUnavailable(f"building {tag} failed: {chunk['error']}\n{''.join(output)[-3000:]}")
    return tag


def wheelhouse() -> Path:
    """Wheels of the pinned set (requirements.txt at constraints.txt's versions), downloaded by the host's pip once
    per change of those two files."""
    inputs = (REPO_ROOT / "constraints.txt").read_bytes() + (REPO_ROOT / "requirements.txt").read_bytes()
    directory = cache_dir() / "wheels"
    stamp = directory / f".complete-{_digest(inputs)}"
    if stamp.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    # The host's own platform: Debian bookworm, CPython 3.11, x86_64, as the image's.
    command = [sys.executable, "-m", "pip", "download", "--quiet", "-c", str(REPO_ROOT / "constraints.txt"),
               "-r", str(REPO_ROOT / "requirements.txt"), "-d", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SourceUnavailable(f"pip could not download the pinned set: {done.stderr[-2000:]}")
    stamp.write_text("")
    return directory


@contextlib.contextmanager
def served_directory(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on loopback (a free port) while the block runs; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _bind(handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _bind(handler: Any) -> http.server.ThreadingHTTPServer:
    """The same port every time where it is free: the URL is a build argument, part of the layer cache's key."""
    try:
        return http.server.ThreadingHTTPServer(("127.0.0.1", WHEELHOUSE_PORT), handler)
    except OSError:
        log.warning("port %d is taken: serving the wheelhouse on another, which rebuilds the pinned set's layer",
                    WHEELHOUSE_PORT)
        return http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
