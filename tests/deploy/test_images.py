"""Every container image the deployment names is pinned, and the Dockerfile builds what the issue asks for."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from pipeline import containers
from pipeline.errors import ConfigError
from pipeline.serving.backends import docker as docker_backend
from pipeline.settings import REPO_ROOT

_DOCKERFILE = REPO_ROOT / "Dockerfile"
_TF_SERVING = "tensorflow/serving:2.19.0"
# name[:tag][@digest]; a registry host may carry a port.
_IMAGE = re.compile(r"^(?P<name>(?:[\w.-]+(?::\d+)?/)?[a-z0-9][a-z0-9._/-]*)(?::(?P<tag>\w[\w.-]{0,127}))?"
                    r"(?P<digest>@sha256:[0-9a-f]{64})?$")


def is_pinned(image: str) -> bool:
    """Whether ``image`` names a tag other than ``latest``, or a digest."""
    match = _IMAGE.match(image)
    return bool(match) and (bool(match["digest"]) or match["tag"] not in (None, "latest"))


def images_in(node: Any) -> list[str]:
    """Every string under an ``image`` key of a parsed YAML tree (compose services, k8s containers)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            image for k, v in node.items() if k != "image" for image in images_in(v)
        ]
    if isinstance(node, list):
        return [image for item in node for image in images_in(item)]
    return []


def _without_defaults_syntax(image: str) -> str:
    """``${PIPELINE_IMAGE:-mlops-pipeline:0.1.0}`` -> ``mlops-pipeline:0.1.0`` (the value used when unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.+)\}", image)
    return match[1] if match else image


def _kustomize(overlay: str) -> list[dict[str, Any]]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(REPO_ROOT / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("image, pinned", [
    ("tensorflow/serving:2.19.0", True), ("postgres:16.10-bookworm", True), ("localhost:5000/a/b:1", True),
    ("tensorflow/serving", False), ("tensorflow/serving:latest", False), ("localhost:5000/a/b", False),
    ("busybox@sha256:" + "0" * 64, True),
])
def test_is_pinned_tells_pinned_images_apart(image, pinned):
    assert is_pinned(image) is pinned


def test_compose_images_are_pinned():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    images = [_without_defaults_syntax(image) for image in images_in(compose)]
    assert _TF_SERVING in images and len(images) >= 7
    assert all(is_pinned(image) for image in images), images


@pytest.mark.parametrize("overlay", ["local", "production"])
def test_kubernetes_images_are_pinned(overlay):
    images = images_in(_kustomize(overlay))
    # TF Serving, the pipeline image (capture service) and Prometheus; each pinned
    assert images and set(images) == {_TF_SERVING, "mlops-pipeline:0.1.0", "prom/prometheus:v3.5.0"}
    assert all(is_pinned(image) for image in images)


def test_training_pod_and_helm_values_images_are_pinned():
    pod = yaml.safe_load((REPO_ROOT / "k8s" / "training-pod.yaml").read_text())
    values = yaml.safe_load((REPO_ROOT / "k8s" / "airflow" / "values.yaml").read_text())
    assert all(is_pinned(image) for image in images_in(pod))
    airflow = values["images"]["airflow"]
    assert is_pinned(f"{airflow['repository']}:{airflow['tag']}")
    assert is_pinned(f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}")


def test_dockerfile_builds_on_the_pinned_airflow_with_our_constraints():
    text = _DOCKERFILE.read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${BASE_IMAGE}"]
    bases = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)  # the default: the official image
    assert bases == ["apache/airflow:3.3.2-python3.11"]
    pinned_airflow = re.search(r"^apache-airflow==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), flags=re.M)
    assert pinned_airflow and bases[0].split(":")[1].startswith(pinned_airflow[1] + "-")
    assert re.search(r"pip install \S* -c \S*constraints\.txt -r \S+", text)  # the pinned set, in its own layer
    assert re.search(r"pip install \S* --no-deps /opt/pipeline/src", text)  # then our package alone
    for copied in ("dags", "configs", "pipeline", "pyproject.toml", "requirements.txt", "k8s/training-pod.yaml"):
        assert re.search(rf"^COPY\b.*\s{re.escape(copied)}(\s|$)", text, flags=re.M), copied
        assert (REPO_ROOT / copied).exists()


def test_dockerignore_keeps_secrets_and_state_out_of_the_build():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".env", "var/", ".venv", ".git"} <= set(ignored)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", _DOCKERFILE.read_text(), flags=re.M)
    sources = {source for line in copied for source in line.split()}
    assert not sources & {entry.rstrip("/") for entry in ignored}


def test_code_defaults_are_pinned(monkeypatch):
    assert docker_backend._DEFAULT_IMAGE == _TF_SERVING
    monkeypatch.delenv("PIPELINE_IMAGE", raising=False)
    assert is_pinned(containers.pipeline_image())
    monkeypatch.setenv("PIPELINE_IMAGE", "mlops-pipeline:latest")
    with pytest.raises(ConfigError, match="pinned"):
        containers.pipeline_image()
