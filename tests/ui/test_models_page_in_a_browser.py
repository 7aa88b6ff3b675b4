"""The models pages as on-call uses them: a real ``airflow standalone`` with the plugin, Debian's Chromium driven by
Playwright, Airflow's own login form, the Models entry of the navigation, a report, and a rollback triggered from
the page that a real ``model_rollback`` run carries out on a real production server.

The world is the release core's (tests/release/core_world.py): hand-built classifiers as real SavedModels, no
training. Versions 1 and 2 were released one after the other (production serves {1, 2}, stable 2); version 3 was
rejected at staging. Screenshots of each page go to ``var/screenshots/`` for the README.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from pipeline.settings import REPO_ROOT
from pipeline.util.net import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("stacks")]

CHROMIUM = "/usr/bin/chromium"
MODEL = "mnist"
SCREENSHOTS = REPO_ROOT / "var" / "screenshots"
_UI_TIMEOUT_MS = 60_000  # every wait of the browser: a loaded 2-core machine renders slowly, never a timing check
_RUN_TIMEOUT_S = 600.0
_SERVER_START_S = 240.0


def _require_browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium is missing at {CHROMIUM} (apt-get install -y chromium, or `make system-deps`)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is missing (pip install -c constraints.txt "
                                                             "'.[test]')")


@pytest.fixture
def stack_world(tmp_path, monkeypatch):
    """Configs (the model, a profile on fixed free ports), the world's versions, production serving them, and
    ``airflow standalone`` with the plugin; everything is stopped afterwards."""
    _require_browser()
    from pipeline import stack
    from pipeline.gates import Verdict
    from pipeline.models.artifacts import plot_confusion_matrix, plot_training_curve
    from pipeline.release.context import Release
    from pipeline.release.registry import State
    from pipeline.settings import get_paths
    from tests.release.core_world import (
        BAD,
        GOOD,
        GOOD_ALT,
        CoreWorld,
        advance,
        as_if_released,
        build_template_models,
        core_model_config,
    )

    ports = iter(free_ports(5))
    configs = tmp_path / "configs"
    (configs / "serving").mkdir(parents=True)
    (configs / "models").mkdir()
    profile = {"instances": {name: {"backend": "local", "rest_port": next(ports), "grpc_port": next(ports)}
                             for name in ("staging", "production")}}
    (configs / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    config = core_model_config(MODEL)
    (configs / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(configs))
    monkeypatch.setenv("PIPELINE_MONITOR_MINUTES", "off")  # only this test's runs: no scheduled probe
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", str(next(ports)))
    monkeypatch.delenv("PIPELINE_SERVING_PROFILE", raising=False)
    monkeypatch.delenv("PIPELINE_REGISTRY_URL", raising=False)

    world = CoreWorld.create(tmp_path, build_template_models(tmp_path / "template_models"))
    paths = get_paths()
    try:
        world.backend("production").start(timeout_s=_SERVER_START_S)
        release = Release(config, paths)
        shutil.copytree(world.snapshot.path, paths.data_dir / MODEL / world.snapshot.sha256)
        for version, flavor in ((1, GOOD), (2, GOOD_ALT), (3, BAD)):
            world.add_version(release, version, flavor)
            run_dir = paths.runs_dir / MODEL / f"{MODEL}-run-{version}"  # the training run add_version records
            run_dir.mkdir(parents=True)
            plot_training_curve({"loss": [0.9, 0.4, 0.3], "val_loss": [0.8, 0.45, 0.35],
                                 "accuracy": [0.7, 0.9, 0.93], "val_accuracy": [0.72, 0.88, 0.91]},
                                run_dir / "training_curve.png")
            plot_confusion_matrix([[9 if i == j else 0 for j in range(10)] for i in range(10)],
                                  [str(d) for d in range(10)], run_dir / "confusion_matrix.png")
        as_if_released(release, 1, 2)
        staging = {"served_accuracy": 1.0, "failed_requests": 0, "latency_p95_ms": 3.2, "malformed_status": 400,
                   "golden_max_abs_diff_rest": 0.0, "golden_max_abs_diff_grpc": 0.0}
        for version in (1, 2):
            Verdict("staging", True, [], staging).write(release.verdict_path(version, "staging"))
            Verdict("canary", True, [], {**staging, "agreement": 1.0}).write(release.verdict_path(version, "canary"))
        advance(release, 3, State.STAGED)
        reason = "accuracy through serving 0.0000 on 60 examples is below 0.8000"
        Verdict("staging", False, [reason], {**staging, "served_accuracy": 0.0}).write(
            release.verdict_path(3, "staging"))
        release.registry.transition(MODEL, 3, State.REJECTED, run_id="mnist-run-3", reason=f"staging: {reason}")
        docs = paths.data_dir / MODEL / world.snapshot.sha256 / "validation"
        docs.mkdir(parents=True)
        (docs / "index.html").write_text("<html><body><h1>Data Docs</h1><p>every expectation met</p></body></html>")
        url = stack.start_airflow(paths)
        stack.write_env_file(paths)
        yield paths, url, release
    finally:
        stack.down(paths)


def _status_from_the_cli(paths) -> dict:
    """``pipeline status mnist --json``, as on-call would type it in the stack's shell."""
    from pipeline.stack import airflow_env

    proc = subprocess.run([sys.executable, "-m", "pipeline", "status", MODEL, "--json"], env=airflow_env(paths),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (status,) = json.loads(proc.stdout)
    return status


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _check_against_status(frame, status: dict) -> None:
    """What the model page shows is what ``pipeline status`` says."""
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(frame.locator("#stable")).to_have_text(str(status["stable"]), timeout=_UI_TIMEOUT_MS)
    target = status["last_good_before_stable"]
    expect(frame.locator("#rollback-target")).to_have_text("–" if target is None else str(target))
    production = frame.locator('#servers tr[data-instance="production"]')
    expect(production.locator("td.versions")).to_have_text(", ".join(map(str, status["servers"]["production"]
                                                                          ["versions"])))
    labels = " ".join(f"{k} → {v}" for k, v in sorted(status["servers"]["production"]["labels"].items()))
    expect(production.locator("td.labels")).to_have_text(labels)
    for version in status["versions"]:
        row = frame.locator(f'#versions tr[data-version="{version["version"]}"]')
        expect(row.locator("td.state")).to_have_text(version["state"])


def test_on_call_finds_production_a_report_and_rolls_back_from_the_models_page(stack_world):
    sync_api = _require_browser()
    from pipeline.airflow_api import AirflowApi
    from pipeline.stack import admin_password

    paths, url, release = stack_world
    api = AirflowApi(url, paths)
    api.wait_for_dag("model_rollback")
    password = admin_password(paths)
    assert password, "airflow standalone wrote no admin password"
    expect = sync_api.expect
    expect.set_options(timeout=_UI_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(_UI_TIMEOUT_MS)

            # Airflow's own login form: the only credentials there are.
            page.goto(f"{url}/")
            page.locator('input[name="username"]').fill("admin")
            page.locator('input[name="password"]').fill(password)
            page.get_by_role("button", name="Sign in").click()
            models_nav = page.locator('a[href$="plugin/models"]')
            expect(models_nav).to_be_visible()
            _shot(page, "01-airflow-home")

            # Click 1: what every server serves, for every model.
            models_nav.click()
            expect(page).to_have_url(re.compile(r"/plugin/models"))
            frame = page.frame_locator('iframe[title="Models"]')
            row = frame.locator(f'#models tr[data-model="{MODEL}"]')
            expect(row.locator("td.stable")).to_have_text("2")
            expect(row.locator("td.production")).to_contain_text("versions 1, 2")
            expect(row.locator("td.production")).to_contain_text("stable → 2")
            expect(row.locator("td.target")).to_have_text("1")
            _shot(page, "02-models")

            # Click 2: the model; click 3: a report of a release.
            row.get_by_role("link", name=MODEL, exact=True).click()
            _check_against_status(frame, _status_from_the_cli(paths))
            _shot(page, "03-model")
            frame.locator('#versions tr[data-version="3"]').get_by_role("link", name="staging").click()
            expect(frame.locator("#status")).to_have_text("NOT_BLESSED")
            expect(frame.locator('#figures tr[data-figure="served_accuracy"]')).to_contain_text("FAILED")
            expect(page).to_have_url(re.compile(r"/plugin/models/pipeline/models/mnist/versions/3/verdicts/staging"))
            _shot(page, "04-verdict")
            frame.get_by_role("link", name=MODEL, exact=True).click()
            frame.locator('#versions tr[data-version="2"]').get_by_role("link", name="Training curve").click()
            expect(page).to_have_url(re.compile(r"/pipeline/reports/mnist/runs/mnist-run-2/training_curve\.png$"))
            _shot(page, "05-training-curve")
            page.go_back()

            # Roll back to 1 from the page: only validated versions are offered, the rollback target first.
            expect(frame.locator("#to_version option")).to_have_count(1)
            expect(frame.locator("#to_version")).to_have_value("1")
            frame.locator("#reason").fill("browser test: version 2 misbehaves")
            frame.locator("#rollback-submit").click()
            banner = frame.locator("#rollback-triggered")
            expect(banner).to_contain_text("Rollback to version 1 triggered")
            _shot(page, "06-rollback-triggered")
            run_id = banner.locator("a.airflow").inner_text().split(" run ", 1)[1].strip()
            run = api.wait_for_run("model_rollback", run_id, timeout_s=_RUN_TIMEOUT_S)
            assert run["state"] == "success", run
            assert run["conf"]["to_version"] == 1 and "browser test" in run["conf"]["reason"]

            # What the page shows now is what `pipeline status` says: production serves 1 as stable.
            page.reload()
            status = _status_from_the_cli(paths)
            assert status["stable"] == 1 and status["servers"]["production"]["labels"] == {"stable": 1}
            _check_against_status(frame, status)
            _shot(page, "07-after-rollback")

            # The run's link (still in the banner: the page's URL keeps it) leaves the frame for Airflow's page
            # of the run ...
            frame.locator("#rollback-triggered a.airflow").click()
            expect(page).to_have_url(re.compile(r"/dags/model_rollback/runs/"))
            # ... and its task's "Model page" link (Airflow lists a task's extra links on its Details tab) comes back.
            page.goto(f"{url}/dags/model_rollback/runs/{quote(run_id, safe='')}/tasks/rollback")
            page.get_by_role("link", name="Details", exact=True).click()
            link = page.get_by_role("link", name="Model page")
            expect(link).to_be_visible()
            _shot(page, "08-task-extra-links")
            link.click()
            expect(page).to_have_url(re.compile(r"/plugin/models/pipeline/models/mnist$"))
            expect(page.frame_locator('iframe[title="Models"]').locator("#stable")).to_have_text("1")
        finally:
            browser.close()
