"""Version management as TF Serving does it: policies, labels, failed loads, warmup, polling, swaps under load."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.wire import model_config
from pipeline.wire.status import ServingError

MODEL = "hp"
_DEADLINE_S = 15.0


def states(server: Any, name: str = MODEL) -> list[tuple[int, str]]:
    return [(s.version, s.state) for s in server.manager.status(name)]


def wait_for(condition: Callable[[], bool], timeout_s: float = _DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def rest_predict(server: Any, x: float, suffix: str = "") -> float:
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}{suffix}:predict"
    response = requests.post(url, data=json.dumps({"instances": [x]}), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def write_config(path: Path, base: Path, **kwargs: Any) -> Path:
    return model_config.write_config(path, model_config.single_model_config(MODEL, base, **kwargs))


# ------------------------------------------------------------------ policies


def test_latest_policy_ignores_temp_dirs_and_follows_new_versions(serve: Any, make_base_path: Any,
                                                                  half_plus_two_dir: Path,
                                                                  half_plus_three_dir: Path) -> None:
    from tests.servables import add_version

    base = make_base_path(MODEL, {1: half_plus_two_dir})
    shutil.copytree(half_plus_three_dir, base / ".tmp-export-7")  # an export in progress: never loaded
    (base / "notes").mkdir()
    server = serve(model_name=MODEL, model_base_path=str(base))
    assert states(server) == [(1, "AVAILABLE")]
    assert rest_predict(server, 2.0) == 3.0
    add_version(base, 2, half_plus_three_dir)
    wait_for(lambda: states(server) == [(2, "AVAILABLE"), (1, "END")])
    assert rest_predict(server, 2.0) == 4.0


def test_all_specific_and_latest_n_policies(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                            tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_two_dir, 3: half_plus_two_dir})
    config = model_config.single_model_config(MODEL, base)
    config.model_config_list.config[0].model_version_policy.all.SetInParent()
    server = serve(model_config_file=str(model_config.write_config(tmp_path / "models.config", config)))
    assert states(server) == [(3, "AVAILABLE"), (2, "AVAILABLE"), (1, "AVAILABLE")]

    latest_two = model_config.single_model_config(MODEL, base)
    latest_two.model_config_list.config[0].model_version_policy.latest.num_versions = 2
    server.manager.apply_config(latest_two)
    assert states(server) == [(3, "AVAILABLE"), (2, "AVAILABLE"), (1, "END")]

    server.manager.apply_config(model_config.single_model_config(MODEL, base, versions=[1, 9]))
    assert states(server) == [(3, "END"), (2, "END"), (1, "AVAILABLE")]  # 9 is not on disk: not aspired


# ------------------------------------------------------------------ labels


def test_label_transitions_and_allow_flag(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                          half_plus_three_dir: Path, tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    server = serve(model_config_file=str(write_config(tmp_path / "m.config", base, versions=[1])))
    manager = server.manager
    with pytest.raises(ServingError) as info:  # labelling a version that is not loaded yet
        manager.apply_config(model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"canary": 2}))
    assert info.value.code == "FAILED_PRECONDITION"
    manager.apply_config(model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 1}))
    manager.apply_config(model_config.single_model_config(MODEL, base, versions=[1, 2],
                                                          labels={"stable": 1, "canary": 2}))
    assert rest_predict(server, 2.0, "/labels/stable") == 3.0
    assert rest_predict(server, 2.0, "/labels/canary") == 4.0
    manager.apply_config(model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 2}))
    assert rest_predict(server, 2.0, "/labels/stable") == 4.0
    with pytest.raises(ServingError, match="Unrecognized servable version label: canary"):
        manager.get_servable(MODEL, label="canary")

    allowed = serve(model_config_file=str(write_config(tmp_path / "a.config", base, versions=[1, 2],
                                                       labels={"stable": 1, "canary": 2})),
                    allow_version_labels_for_unavailable_models=True)
    assert rest_predict(allowed, 2.0, "/labels/canary") == 4.0


# ------------------------------------------------------------------ failures


def test_failing_version_is_end_with_error_while_old_serves(serve: Any, make_base_path: Any,
                                                            half_plus_two_dir: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base))
    broken = base / ".tmp-export-2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    broken.rename(base / "2")
    wait_for(lambda: states(server)[0] == (2, "END"))
    failed = server.manager.status(MODEL, version=2)[0]
    assert failed.error_code != "OK" and failed.error_message
    assert states(server) == [(2, "END"), (1, "AVAILABLE")]
    assert rest_predict(server, 2.0) == 3.0  # version 1 still answers
    status = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/versions/2", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "END"
    assert status["model_version_status"][0]["status"]["error_code"] != "OK"


def test_startup_fails_like_tf_serving_when_a_version_does_not_load(serve: Any, make_base_path: Any,
                                                                    tmp_path: Path) -> None:
    base = tmp_path / "bad"
    (base / "1").mkdir(parents=True)
    with pytest.raises(ServingError, match="Could not find SavedModel"):
        serve(model_name=MODEL, model_base_path=str(base))


# ------------------------------------------------------------------ warmup


def test_warmup_replayed_before_available(make_base_path: Any, half_plus_two_dir: Path) -> None:
    from pipeline.embedded_server.servable import Servable
    from tests.servables import predict_log, write_warmup

    base = make_base_path(MODEL, {1: half_plus_two_dir})
    write_warmup(base / "1", [predict_log({"x": [1.0, 2.0]}) for _ in range(3)])
    assert Servable.load(MODEL, 1, base / "1").warmup() == 3


def test_failing_warmup_fails_the_load(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                       half_plus_three_dir: Path) -> None:
    from tests.servables import add_version, predict_log, write_warmup

    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base))
    staged = base.parent / "staged"
    shutil.copytree(half_plus_three_dir, staged)
    write_warmup(staged, [predict_log({"wrong_input": [1.0]})])
    add_version(base, 2, staged)
    wait_for(lambda: states(server)[0] == (2, "END"))
    assert "Warmup request 0" in server.manager.status(MODEL, version=2)[0].error_message
    assert rest_predict(server, 2.0) == 3.0


# ------------------------------------------------------------------ config polling


def test_config_file_polling_follows_edits_and_rollback(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                        half_plus_three_dir: Path, tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    path = write_config(tmp_path / "models.config", base, versions=[1])
    server = serve(model_config_file=str(path), model_config_file_poll_wait_seconds=0.1)
    assert rest_predict(server, 2.0) == 3.0
    write_config(path, base, versions=[2])
    wait_for(lambda: states(server) == [(2, "AVAILABLE"), (1, "END")])
    assert rest_predict(server, 2.0) == 4.0
    write_config(path, base, versions=[1])  # roll back by editing the version back
    wait_for(lambda: states(server) == [(2, "END"), (1, "AVAILABLE")])
    assert rest_predict(server, 2.0) == 3.0


# ------------------------------------------------------------------ swaps under load


@pytest.mark.slow
def test_twenty_swaps_under_load_fail_no_request(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                 half_plus_three_dir: Path, tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    server = serve(model_config_file=str(write_config(tmp_path / "m.config", base, versions=[1])),
                   file_system_poll_wait_seconds=0)
    stop, failures, answers = threading.Event(), [], []

    def hammer() -> None:
        with requests.Session() as session:
            url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict"
            while not stop.is_set():
                response = session.post(url, data='{"instances": [2.0]}', timeout=10)
                (answers if response.status_code == 200 else failures).append(response.text)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for swap in range(20):
            version = 2 if swap % 2 == 0 else 1
            server.manager.apply_config(model_config.single_model_config(MODEL, base, versions=[version]))
            assert states(server)[0 if version == 2 else 1] == (version, "AVAILABLE")
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert len(answers) > 20
    assert {json.loads(a)["predictions"][0] for a in answers} <= {3.0, 4.0}


# ------------------------------------------------------------------ robustness


def test_malformed_input_fuzz_leaves_server_answering(serve: Any, make_base_path: Any,
                                                      half_plus_two_dir: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base))
    rng = random.Random(1234)
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict"
    fragments = ['{"instances":', "[", "]", "{", "}", '"b64"', "1e999", "-", "NaN", '"x"', ":", ",", "null",
                 "true", "[[[[", "\\u0000", '"signature_name"', "1.5", "99999999999999999999999"]
    with requests.Session() as session:
        for _ in range(150):
            if rng.random() < 0.5:
                body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            else:
                body = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 12))).encode()
            response = session.post(url, data=body, timeout=10)
            assert response.status_code in (200, 400), (body, response.text)
            assert "error" in response.json() or "predictions" in response.json()
        deep = b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}"
        assert session.post(url, data=deep, timeout=10).status_code == 400
    assert rest_predict(server, 1.0) == 2.5


def test_escaping_model_names_and_paths_are_refused(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                    tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    server = serve(model_name=MODEL, model_base_path=str(base))
    for name, path in [("..", str(base)), ("a/b", str(base)), ("x\\y", str(base)), (MODEL, f"{base}/../{MODEL}")]:
        config = model_config.single_model_config(MODEL, base)
        config.model_config_list.config[0].name = name
        config.model_config_list.config[0].base_path = path
        with pytest.raises(ServingError) as info:
            server.manager.apply_config(config)
        assert info.value.code == "INVALID_ARGUMENT"
    assert states(server) == [(1, "AVAILABLE")]  # nothing changed
    response = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/..%2F..", timeout=10)
    assert response.status_code == 404
