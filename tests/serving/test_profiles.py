"""Serving profiles: loading, selection by environment, and errors that name the bad field."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, NotFound
from pipeline.serving import backends
from pipeline.serving.backends import get_backend, make_backend
from pipeline.serving.backends.local import LocalBackend
from pipeline.serving.profiles import load_profile, parse_profile, profile_name
from pipeline.settings import get_paths


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config dir selected through ``$PIPELINE_CONFIG_DIR``."""
    (tmp_path / "serving").mkdir()
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    return tmp_path


def _write_profile(config_dir: Path, name: str, text: str) -> None:
    (config_dir / "serving" / f"{name}.yaml").write_text(textwrap.dedent(text))


def test_embedded_profile_is_the_default_and_runs_every_instance_locally_behind_the_endpoint(monkeypatch):
    from pipeline.live.endpoints import live_endpoints

    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_CONFIG_DIR", raising=False)
    profile = load_profile()
    assert profile.name == "embedded"
    assert set(profile.instances) == {"staging", "production", "canary"}
    assert profile.instance("production").spec() == {
        "backend": "local", "host": "127.0.0.1", "rest_port": 8511, "grpc_port": 8510,
        "extra_args": ["--tensorflow_intra_op_parallelism=1"],
    }  # fmt: skip
    # TF Serving's APIs have no authentication: every server listens on loopback, reached through the endpoint.
    assert {profile.instance(name).spec()["host"] for name in profile.instances} == {"127.0.0.1"}
    # Clients keep TF Serving's ports: the proxy holds them, in front of production and canary.
    endpoints = live_endpoints()
    assert (endpoints.rest_url, endpoints.grpc_target) == ("http://127.0.0.1:8501", "127.0.0.1:8500")


def test_environment_selects_the_profile(config_dir, monkeypatch, tmp_path):
    _write_profile(config_dir, "lab", "instances:\n  staging: {backend: local, rest_port: 0, grpc_port: 0}\n")
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "lab")
    assert profile_name() == "lab"
    backend = get_backend("staging", paths=get_paths(tmp_path / "home"))
    assert isinstance(backend, LocalBackend)
    assert backend.config_path == tmp_path / "home" / "serving" / "staging" / "models.config"


def test_unknown_profile_names_the_known_ones(config_dir):
    _write_profile(config_dir, "lab", "instances:\n  staging: {backend: local}\n")
    with pytest.raises(NotFound, match=r"no serving profile 'nope' \(known: lab\)"):
        load_profile("nope")


def test_unknown_instance_is_not_found():
    profile = parse_profile({"instances": {"staging": {"backend": "local"}}})
    with pytest.raises(NotFound, match="has no instance 'canary'.*staging"):
        profile.instance("canary")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"instances": {"staging": {"backend": "local"}}, "replicas": 2}, "replicas"),
        ({"instances": {}}, "instances"),
        ({}, "instances"),
        ({"instances": {"staging": {"backend": "ftp"}}}, "instances.staging.backend"),
        ({"instances": {"staging": {"host": "x"}}}, "instances.staging.backend"),
        ({"instances": {"Staging!": {"backend": "local"}}}, "instances.Staging!"),
    ],
)
def test_profile_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}: "):
        parse_profile(raw)


def test_invalid_yaml_is_a_config_error(config_dir):
    _write_profile(config_dir, "broken", "instances: [staging: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile("broken")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"backend": "local", "rest_port": 70000}, "instances.staging.rest_port"),
        ({"backend": "local", "grpc_port": "eighty"}, "instances.staging.grpc_port"),
        ({"backend": "local", "image": "tensorflow/serving"}, "instances.staging.image"),
    ],
)
def test_local_backend_validates_its_own_spec(spec, field, tmp_path):
    with pytest.raises(ConfigError, match=rf"{field}: "):
        make_backend("staging", spec, get_paths(tmp_path))


def test_other_backends_keep_their_own_fields_until_their_backend_checks_them():
    spec = {"backend": "docker", "image": "tensorflow/serving:2.19.1", "container_name": "tfs-staging"}
    profile = parse_profile({"instances": {"staging": spec}})
    assert profile.instance("staging").spec() == spec


def test_backend_modules_load_only_when_used(monkeypatch, tmp_path):
    monkeypatch.setitem(backends._BACKENDS, "docker", "tests_missing_backend_module:DockerBackend")
    with pytest.raises(ConfigError, match="instances.staging: backend 'docker' is not available"):
        make_backend("staging", {"backend": "docker"}, get_paths(tmp_path))


def test_profiles_and_client_import_without_tensorflow():
    code = (
        "import sys, pipeline.serving.profiles, pipeline.serving.backends, pipeline.serving.client;"
        "heavy = [m for m in ('tensorflow', 'tensorflow_serving', 'docker', 'kubernetes') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
