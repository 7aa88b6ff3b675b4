"""Against a real ``airflow standalone``: an ingest's event on ``mnist_raw_data`` starts ``mnist_release`` through the
scheduler (data-aware scheduling), and the run names the event that started it, with the ingest's counts.

Only the start of the run is checked: what the run then does is the release's own tests' business.
"""

from __future__ import annotations

from urllib.parse import quote

import numpy as np
import pytest

from pipeline.util.polling import poll_until
from tests.dags.test_served_assets_through_airflow import airflow_only  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("stacks")]

_DEADLINE_S = 300.0  # 2 shared cores: generous, every wait polls


def test_an_ingest_event_starts_the_release_through_the_scheduler(airflow_only, tmp_path):  # noqa: F811
    from pipeline.airflow_api import AirflowApi
    from pipeline.data.landing import ingest_file
    from pipeline.steps import resolve_config
    from tests.conftest import synthetic_images

    paths, url, _hook = airflow_only
    api = AirflowApi(url, paths)
    api.wait_for_dag("mnist_release", timeout_s=_DEADLINE_S)

    def raw_data_asset() -> tuple[int | None, str]:
        found = [a for a in api.get("/assets?name_pattern=mnist_raw_data")["assets"]
                 if a["uri"] == "pipeline://raw-data/mnist"]
        return (found[0]["id"] if found else None), f"{len(found)} found"

    poll_until(raw_data_asset, _DEADLINE_S, "mnist_raw_data not registered", interval_s=2.0)
    assert api.get("/dags/mnist_release/dagRuns")["dag_runs"] == []  # no schedule in this world: nothing ran yet

    x, y = synthetic_images(30, seed=3)
    np.savez(tmp_path / "new.npz", x=x, y=y)
    config = resolve_config("mnist").with_overrides({"data.retrain_min_new_examples": 20})
    result = ingest_file("mnist", tmp_path / "new.npz", paths=paths, config=config)
    assert result.announced, result.reason

    def asset_run() -> tuple[dict | None, str]:
        runs = api.get("/dags/mnist_release/dagRuns")["dag_runs"]
        started = [r for r in runs if r["run_type"] == "asset_triggered"]
        return (started[0] if started else None), f"runs {[(r['run_type'], r['state']) for r in runs]}"

    run = poll_until(asset_run, _DEADLINE_S, "no asset-triggered run of mnist_release", interval_s=2.0)
    events = api.get(f"/dags/mnist_release/dagRuns/{quote(run['dag_run_id'], safe='')}/upstreamAssetEvents")
    [event] = events["asset_events"]
    assert event["uri"] == "pipeline://raw-data/mnist"
    assert event["extra"]["data_version"] == result.data_version
    assert (event["extra"]["new_examples"], event["extra"]["parts"]) == (30, 1)
