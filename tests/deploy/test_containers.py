"""pipeline.containers: what a training container runs, and that Airflow's operators accept it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline import containers
from pipeline.cli import build_parser
from pipeline.errors import ConfigError
from pipeline.settings import get_paths

_SHA = "ab" * 32


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("PIPELINE_IMAGE", "PIPELINE_POD_TEMPLATE", "PIPELINE_DOCKER_HOME_VOLUME",
                 "PIPELINE_DOCKER_MODELS_VOLUME", "PIPELINE_REGISTRY_URL", "PIPELINE_REGISTRY_URL_FILE",
                 "PIPELINE_DOCKER_REGISTRY_SECRET", "PIPELINE_K8S_REGISTRY_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_train_command_is_a_command_the_cli_accepts():
    command = containers.train_command("mnist", _SHA, fault="label_shift")
    assert command[:5] == ["python", "-m", "pipeline", "train", "mnist"]
    args = build_parser().parse_args(command[3:])
    assert args.model == "mnist" and args.fault == "label_shift" and args.json
    assert args.snapshot == f"{containers.CONTAINER_PIPELINE_HOME}/data/mnist/{_SHA}"
    assert containers.train_command("spam") == ["python", "-m", "pipeline", "train", "spam", "--json"]


def test_train_command_refuses_a_snapshot_that_is_not_a_digest():
    with pytest.raises(ConfigError, match="hex digest"):
        containers.train_command("mnist", "../../etc")


@pytest.mark.parametrize("image", ["mlops-pipeline", "mlops-pipeline:latest", "registry:5000/mlops-pipeline"])
def test_the_image_must_be_pinned(monkeypatch, image):
    monkeypatch.setenv("PIPELINE_IMAGE", image)
    with pytest.raises(ConfigError, match="PIPELINE_IMAGE.*pinned"):
        containers.pipeline_image()


def test_the_image_comes_from_the_environment(monkeypatch):
    assert containers.pipeline_image() == "mlops-pipeline:0.1.0"
    monkeypatch.setenv("PIPELINE_IMAGE", "registry:5000/mlops-pipeline:1.2.3")
    assert containers.pipeline_image() == "registry:5000/mlops-pipeline:1.2.3"


def test_docker_mounts_use_the_compose_volumes_or_host_paths(monkeypatch, tmp_path):
    mounts = {m["Target"]: m for m in containers.docker_mounts()}
    assert mounts[containers.CONTAINER_PIPELINE_HOME]["Source"] == "mlops-pipeline-home"
    assert mounts[containers.CONTAINER_MODELS_DIR]["Type"] == "volume"
    monkeypatch.setenv("PIPELINE_DOCKER_MODELS_VOLUME", str(tmp_path))
    mounts = {m["Target"]: m for m in containers.docker_mounts()}
    assert mounts[containers.CONTAINER_MODELS_DIR]["Type"] == "bind"
    assert mounts[containers.CONTAINER_MODELS_DIR]["Source"] == str(tmp_path)


def test_a_missing_pod_template_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_POD_TEMPLATE", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="PIPELINE_POD_TEMPLATE"):
        containers.pod_template_file()
    (tmp_path / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    with pytest.raises(ConfigError, match="single Pod"):
        containers.load_pod_template(tmp_path / "svc.yaml")


def test_the_docker_operator_accepts_the_arguments():
    from airflow.providers.docker.operators.docker import DockerOperator

    operator = DockerOperator(task_id="train", **containers.docker_operator_kwargs("mnist", _SHA))
    assert operator.image == "mlops-pipeline:0.1.0"
    assert operator.command[-3:] == ["--snapshot", f"/opt/pipeline/var/data/mnist/{_SHA}", "--json"]
    assert operator.environment["PIPELINE_HOME"] == containers.CONTAINER_PIPELINE_HOME


def test_the_kubernetes_pod_operator_builds_a_pod_from_the_template():
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    operator = KubernetesPodOperator(task_id="train", **containers.kubernetes_pod_operator_kwargs("spam"))
    pod = operator.build_pod_request_obj(dry_run=True)  # merges the template with the per-run arguments; no cluster
    main = next(c for c in pod.spec.containers if c.name == "base")
    assert main.image == "mlops-pipeline:0.1.0"
    assert main.command + main.args == containers.train_command("spam")
    assert pod.metadata.namespace == "mlops"
    assert {v.name for v in pod.spec.volumes} >= {"pipeline-home", "models"}
    assert pod.spec.service_account_name == "pipeline-training"


_REGISTRY_URL = "postgresql+psycopg://pipeline:s3cret-pw@postgres:5432/registry"


def test_the_registry_url_reaches_a_docker_container_only_as_a_mounted_file(monkeypatch, tmp_path):
    from airflow.providers.docker.operators.docker import DockerOperator

    monkeypatch.setenv("PIPELINE_REGISTRY_URL", _REGISTRY_URL)  # the worker's own: never copied
    plain = containers.docker_operator_kwargs("mnist")
    assert "s3cret" not in repr(plain) and "PIPELINE_REGISTRY_URL_FILE" not in plain["environment"]

    secret = tmp_path / "registry_url"
    secret.write_text(_REGISTRY_URL + "\n")
    monkeypatch.setenv("PIPELINE_DOCKER_REGISTRY_SECRET", str(secret))
    kwargs = containers.docker_operator_kwargs("mnist")
    assert "s3cret" not in repr(kwargs["environment"])
    assert kwargs["environment"]["PIPELINE_REGISTRY_URL_FILE"] == containers.CONTAINER_REGISTRY_URL_FILE
    mount = {m["Target"]: m for m in kwargs["mounts"]}[containers.CONTAINER_REGISTRY_URL_FILE]
    assert (mount["Source"], mount["Type"], mount["ReadOnly"]) == (str(secret), "bind", True)
    operator = DockerOperator(task_id="train", **kwargs)
    assert containers.CONTAINER_REGISTRY_URL_FILE in {m["Target"] for m in operator.mounts}
    # Inside, the pipeline reads the URL from the file it was told about.
    monkeypatch.delenv("PIPELINE_REGISTRY_URL")
    monkeypatch.setenv("PIPELINE_REGISTRY_URL_FILE", str(secret))
    assert get_paths(tmp_path).registry_url == _REGISTRY_URL

    monkeypatch.setenv("PIPELINE_DOCKER_REGISTRY_SECRET", "secrets/registry_url")
    with pytest.raises(ConfigError, match="absolute host path"):
        containers.docker_operator_kwargs("mnist")


def test_an_unreadable_registry_url_file_is_a_config_error(monkeypatch, tmp_path):
    for content in (None, ""):
        path = tmp_path / "url"
        if content is not None:
            path.write_text(content)
        monkeypatch.setenv("PIPELINE_REGISTRY_URL_FILE", str(path))
        with pytest.raises(ConfigError, match="PIPELINE_REGISTRY_URL_FILE"):
            _ = get_paths(tmp_path).registry_url


def test_the_registry_url_reaches_a_pod_only_as_a_secret_volume(monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    monkeypatch.setenv("PIPELINE_REGISTRY_URL", _REGISTRY_URL)
    monkeypatch.setenv("PIPELINE_K8S_REGISTRY_SECRET", "pipeline-registry")
    operator = KubernetesPodOperator(task_id="train", **containers.kubernetes_pod_operator_kwargs("mnist"))
    pod = operator.build_pod_request_obj(dry_run=True)
    assert "s3cret" not in repr(pod.to_dict())  # not in the spec, the environment included
    main = next(c for c in pod.spec.containers if c.name == "base")
    env = {e.name: e.value for e in main.env}
    assert env["PIPELINE_REGISTRY_URL_FILE"] == containers.CONTAINER_REGISTRY_URL_FILE
    volume = next(v for v in pod.spec.volumes if v.secret is not None)
    assert volume.secret.secret_name == "pipeline-registry"
    assert [(item.key, item.path) for item in volume.secret.items] == [("url", "url")]
    mount = next(m for m in main.volume_mounts if m.name == volume.name)
    assert mount.read_only and f"{mount.mount_path}/url" == containers.CONTAINER_REGISTRY_URL_FILE


def test_importing_it_loads_neither_tensorflow_nor_the_clients():
    code = ("import sys, pipeline.containers; "
            "print(sorted(m for m in ('tensorflow', 'docker', 'kubernetes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
