"""The models pages against what the pipeline knows: model_status, the registry, the verdict files, the reports."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from pipeline.release.registry import State
from pipeline.ui import links
from tests.ui.conftest import PREFIX, TOKEN
from tests.ui.page_parse import read
from tests.ui.world import LATENCY_BUDGET_MS, MIN_ACCURACY, MODEL, PNG, SHA


def status_of(world, history: int = 50):
    from pipeline.release.context import Release
    from pipeline.release.status import model_status
    from pipeline.steps import resolve_config

    return model_status(Release(resolve_config(MODEL), world.paths), history=history)


def served_text(view) -> tuple[str, list[str]]:
    return ", ".join(map(str, view["versions"])), [f"{k} → {v}" for k, v in sorted(view["labels"].items())]


def test_models_page_shows_what_every_server_serves_as_model_status_says(client, world):
    reply = client.get(f"{PREFIX}/models")
    assert reply.status_code == 200
    row = read(reply.text).row("models", model=MODEL)
    status = status_of(world)
    model, stable, production, staging, canary, split, target, last = row.cells
    assert (model, stable, target) == (MODEL, str(status["stable"]), str(status["last_good_before_stable"]))
    assert (stable, target) == ("2", "1")
    for cell, instance in ((production, "production"), (staging, "staging")):
        versions, labels = served_text(status["servers"][instance])
        assert f"versions {versions}" in cell and all(label in cell for label in labels), (instance, cell)
    assert "versions 1, 2" in production and "stable → 2" in production and "versions 5" in staging
    assert canary == "no such instance"  # the world's profile has no canary instance
    assert split == status["live"]["split"]
    assert status["history"][0]["reason"] in last
    assert (f"{PREFIX}/models/{MODEL}", MODEL) in row.links


def test_model_page_lists_every_version_with_its_state_figures_and_reports(client, world):
    page = read(client.get(f"{PREFIX}/models/{MODEL}").text)
    status = status_of(world)
    assert page.by_id["stable"] == "2" and page.by_id["rollback-target"] == "1"
    assert page.by_id["on-disk"] == " ".join(map(str, status["on_disk"]))
    for instance, view in status["servers"].items():
        row = page.row("servers", instance=instance)
        versions, labels = served_text(view)
        assert row.cells[2] == (versions or "–") and row.cells[3] == (" ".join(labels) or "–")
    rows = page.table("versions")
    assert [int(r.attrs["data-version"]) for r in rows] == [v["version"] for v in reversed(status["versions"])]
    for row, expected in zip(rows, reversed(status["versions"]), strict=True):
        assert row.cells[1] == expected["state"]
        assert f"accuracy {expected['metrics']['accuracy']}" in row.cells[4]
    rejected = page.row("versions", version="3")
    assert rejected.cells[1] == "rejected"
    assert ("Data Docs" not in rejected.cells[7]) and "Training curve" in rejected.cells[7]  # its snapshot has no docs
    stable = page.row("versions", version="2")
    names = [text for _, text in stable.links]
    assert {"Data Docs", "Training curve", "Confusion matrix", "evaluate", "staging", "canary"} <= set(names)
    for href, text in stable.links:  # every report link of a version answers
        if text in ("Data Docs", "Training curve", "Confusion matrix", "staging", "canary", "evaluate"):
            assert client.get(href).status_code == 200, (text, href)
    assert page.row("versions", version="4").cells[8].split() == ["evaluate", "staging", "live_shadow",
                                                                  "live_canary_5pct"]


def test_model_page_history_and_live_phases(client, world):
    page = read(client.get(f"{PREFIX}/models/{MODEL}?history=5").text)
    history = world.registry.history(MODEL)
    rows = page.table("history")
    assert len(rows) == 5
    assert [r.cells[4] for r in rows] == [t.reason for t in history[:5]]
    assert (f"{PREFIX}/models/{MODEL}?history=all", "show all") in page.links
    everything = read(client.get(f"{PREFIX}/models/{MODEL}?history=all").text)
    assert len(everything.table("history")) == len(history)
    phases = page.table("phases")
    assert [(r.cells[0], r.cells[1], r.cells[2]) for r in phases] == [("4", "5%", "fail"), ("4", "shadow", "pass")]
    assert phases[0].links[0][0] == f"{PREFIX}/models/{MODEL}/versions/4/verdicts/live_canary_5pct"


def test_rollback_offers_only_versions_that_passed_validation_and_may_become_stable(client, world):
    page = read(client.get(f"{PREFIX}/models/{MODEL}").text)
    offered = page.options["to_version"]
    registry, stable = world.registry, world.registry.stable_version(MODEL)

    def allowed(version: int) -> bool:  # the registry's own word, and the rollback's rules
        try:
            registry.check_transition(MODEL, version, State.PROMOTED)
        except Exception:  # noqa: BLE001 - refused
            return False
        return version != stable and registry.passed_validation(MODEL, version)

    expected = [r.version for r in reversed(registry.versions(MODEL)) if allowed(r.version)]
    assert [int(value) for value, _, _ in offered] == expected == [5, 1]
    assert [value for value, _, selected in offered if selected] == ["1"]  # the rollback target is preselected
    assert page.forms[0]["action"] == f"{PREFIX}/models/{MODEL}/rollback" and page.forms[0]["method"] == "post"


def test_rollback_form_triggers_model_rollback_as_the_user_and_shows_the_run(client, airflow):
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": "1", "reason": "bad canary"},
                        follow_redirects=False)
    assert reply.status_code == 303
    assert airflow.triggered == [(TOKEN, "model_rollback", {
        "model": MODEL, "to_version": 1, "reason": "bad canary (by oncall from the models page)"})]
    location = reply.headers["location"]
    assert urlsplit(location).path == f"{PREFIX}/models/{MODEL}"
    page = read(client.get(location).text)
    assert "Rollback to version 1 triggered" in page.by_id["rollback-triggered"]
    run_links = [href for href, text in page.links if text.startswith("model_rollback run")]
    assert run_links == ["/dags/model_rollback/runs/manual__2026-01-01T00%3A00%3A01%2B00%3A00"]


@pytest.mark.parametrize("version", ["2", "3", "4", "9"])  # stable, rejected, rolled back, unknown
def test_rollback_refuses_a_version_the_form_does_not_offer(client, airflow, version):
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": version, "reason": "x"})
    assert reply.status_code == 400 and "offered: 5, 1" in reply.text
    assert airflow.triggered == []


def test_rollback_shows_airflows_refusal(client, airflow):
    from pipeline.ui.airflow_client import AirflowRefused

    airflow.refuse = AirflowRefused(403, "Forbidden: you may not trigger model_rollback")
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": "1", "reason": "x"})
    assert reply.status_code == 403 and "you may not trigger model_rollback" in reply.text


def test_a_form_posted_from_another_site_is_refused(client, airflow):
    reply = client.post(f"{PREFIX}/models/{MODEL}/rollback", data={"to_version": "1", "reason": "x"},
                        headers={"Origin": "https://evil.example"})
    assert reply.status_code == 403 and airflow.triggered == []


def test_staging_verdict_sets_each_figure_against_its_threshold(client):
    page = read(client.get(f"{PREFIX}/models/{MODEL}/versions/3/verdicts/staging").text)
    assert page.by_id["status"] == "NOT_BLESSED"
    assert "accuracy through serving 0.4100" in page.by_id["reasons"]
    accuracy = page.row("figures", figure="served_accuracy").cells
    assert accuracy == ["served_accuracy", "0.41", ">=", f"{MIN_ACCURACY:g}", "FAILED"]
    latency = page.row("figures", figure="latency_p95_ms").cells
    assert latency == ["latency_p95_ms", "400", "<=", f"{LATENCY_BUDGET_MS:g}", "FAILED"]
    assert page.row("figures", figure="malformed_status").cells[4] == "ok"
    blessed = read(client.get(f"{PREFIX}/models/{MODEL}/versions/2/verdicts/canary").text)
    assert blessed.by_id["status"] == "BLESSED"
    assert blessed.row("figures", figure="agreement").cells[1:] == ["0.97", ">=", "0.9", "ok"]


def test_live_phase_verdict_shows_checks_tests_and_the_weight_steps_as_a_plot(client):
    reply = client.get(f"{PREFIX}/models/{MODEL}/versions/4/verdicts/live_canary_5pct")
    page = read(reply.text)
    assert page.by_id["status"] == "NOT_BLESSED"
    assert page.table("figures")[0].cells[:5] == ["agreement", "0.2", ">=", "0.92", "FAILED"]
    assert [r.cells[0] for r in page.table("variants")] == ["stable", "canary"]
    assert page.table("tests")[0].cells[6] == "reject_h0"
    assert page.by_id["root-cause"].startswith("stable said '7' -> canary said '2'")
    plot = client.get(page.images[0])
    assert page.images[0] == f"{PREFIX}/models/{MODEL}/versions/4/live.png"
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG") and len(plot.content) > 10_000  # a drawn figure, not a stub


def test_evaluate_verdict_comes_from_the_training_run(client):
    page = read(client.get(f"{PREFIX}/models/{MODEL}/versions/2/verdicts/evaluate").text)
    assert page.row("figures", figure="candidate").cells[1:] == ["0.92", ">=", f"{MIN_ACCURACY:g}", "ok"]


def test_missing_things_are_404s(client):
    assert client.get(f"{PREFIX}/models/nosuchmodel").status_code == 404
    assert client.get(f"{PREFIX}/models/{MODEL}/versions/5/verdicts/canary").status_code == 404
    assert client.get(f"{PREFIX}/models/{MODEL}/versions/9/verdicts/evaluate").status_code == 404
    assert client.get(f"{PREFIX}/reports/{MODEL}/data/{SHA}/nothing.html").status_code == 404


def test_reports_are_served(client):
    docs = client.get(f"{PREFIX}/reports/{MODEL}/data/{SHA}/index.html")
    assert docs.status_code == 200 and "Data Docs of the mnist snapshot" in docs.text
    assert client.get(f"{PREFIX}/reports/{MODEL}/data/{SHA}/static/style.css").status_code == 200
    curve = client.get(f"{PREFIX}/reports/{MODEL}/runs/train-2/training_curve.png")
    assert curve.status_code == 200 and curve.content == PNG and curve.headers["content-type"] == "image/png"
    assert client.get(f"{PREFIX}/reports/{MODEL}/runs/train-2/model.keras").status_code == 400  # not a report


@pytest.mark.parametrize("path", [
    f"/reports/{MODEL}/data/{SHA}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/registry.db",
    f"/reports/{MODEL}/data/{SHA}/..%2f..%2f..%2f..%2fregistry.db",
    f"/reports/{MODEL}/data/{SHA}/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    f"/reports/{MODEL}/data/{SHA}/escape.txt",  # a symlink that leads out of the home
    f"/reports/{MODEL}/data/{SHA}/%2fetc%2fpasswd",
    f"/reports/{MODEL}/data/{SHA}/..%5c..%5cregistry.db",
    f"/reports/{MODEL}/data/%2e%2e/index.html",
    f"/reports/{MODEL}/data/{'0' * 63}%2e/index.html",
    f"/reports/%2e%2e/data/{SHA}/index.html",
    f"/reports/{MODEL}/runs/%2e%2e/training_curve.png",
    f"/reports/{MODEL}/runs/..%2f..%2f..%2fserving/training_curve.png",
    f"/models/{MODEL}/versions/2/verdicts/%2e%2e%2fcanary",
])
def test_nothing_outside_the_reports_is_served(client, world, path):
    reply = client.get(f"{PREFIX}{path}")
    assert reply.status_code in (400, 404), reply.status_code
    assert "outside the pipeline home" not in reply.text and "SQLite format" not in reply.text


def test_a_task_link_leads_to_its_runs_report(client, world, airflow):
    run = "manual__2026-01-01T00:00:00+00:00"
    dag = f"{MODEL}_release"
    airflow.xcoms[(dag, run, "prepare_data")] = {"snapshot": "/x", "sha256": SHA}
    airflow.xcoms[(dag, run, "train")] = {"run_dir": "/y", "run_id": "train-2"}
    airflow.xcoms[(dag, run, "export")] = {"version": 2, "path": "/z"}
    expected = {
        ("validate_data", links.DATA_DOCS): f"{PREFIX}/reports/{MODEL}/data/{SHA}/index.html",
        ("train", links.TRAINING_CURVE): f"{PREFIX}/reports/{MODEL}/runs/train-2/training_curve.png",
        ("train", links.CONFUSION_MATRIX): f"{PREFIX}/reports/{MODEL}/runs/train-2/confusion_matrix.png",
        ("validate_staging", links.VERDICT): f"{PREFIX}/models/{MODEL}/versions/2/verdicts/staging",
        ("canary_check", links.VERDICT): f"{PREFIX}/models/{MODEL}/versions/2/verdicts/canary",
        ("canary_25pct", links.VERDICT): f"{PREFIX}/models/{MODEL}/versions/2/verdicts/live_canary_25pct",
        ("finalize", links.MODEL_PAGE): f"{PREFIX}/models/{MODEL}",
    }
    for (task, kind), target in expected.items():
        link = links.task_report_link(dag, run, task, kind)
        assert link is not None and link.startswith(f"plugin/{links.NAV_ROUTE}{PREFIX}/runs/report?")
        framed = "/" + link.removeprefix(f"plugin/{links.NAV_ROUTE}/")  # what the UI's frame loads
        reply = client.get(framed, follow_redirects=False)
        assert (reply.status_code, reply.headers.get("location")) == (303, target), (task, kind)
        assert client.get(target).status_code in (200, 404)  # a live verdict not written yet is a clear 404


def test_a_task_link_falls_back_to_the_version_the_run_registered(client, airflow):
    # No XCom (the task failed, or its result is gone): the registry knows which version run release-3 exported.
    link = links.task_report_link(f"{MODEL}_release", "release-3", "validate_staging", links.VERDICT)
    assert link is not None
    reply = client.get("/" + link.removeprefix(f"plugin/{links.NAV_ROUTE}/"), follow_redirects=True)
    assert reply.status_code == 200 and read(reply.text).by_id["status"] == "NOT_BLESSED"
    nothing = links.task_report_link(f"{MODEL}_release", "never-ran", "validate_data", links.DATA_DOCS)
    assert nothing is not None
    reply = client.get("/" + nothing.removeprefix(f"plugin/{links.NAV_ROUTE}/"), follow_redirects=False)
    assert reply.status_code == 404 and "prepare_data has no result" in reply.text


def test_a_rollback_run_links_to_the_model_it_rolled_back(client, airflow):
    airflow.confs[("model_rollback", "r1")] = {"model": MODEL, "to_version": 1}
    link = links.task_report_link("model_rollback", "r1", "rollback", links.MODEL_PAGE)
    assert link is not None
    reply = client.get("/" + link.removeprefix(f"plugin/{links.NAV_ROUTE}/"), follow_redirects=False)
    assert reply.headers["location"] == f"{PREFIX}/models/{MODEL}"


def test_which_task_links_to_which_report():
    dag = "spam_release"
    assert links.reports_of_task(dag, "validate_data") == (links.DATA_DOCS, links.MODEL_PAGE)
    assert links.reports_of_task(dag, "train") == (links.TRAINING_CURVE, links.CONFUSION_MATRIX, links.MODEL_PAGE)
    for task, gate in (("validate_staging", "staging"), ("canary_check", "canary"), ("evaluate", "evaluate"),
                       ("shadow", "live_shadow"), ("canary_5pct", "live_canary_5pct"),
                       ("canary_50pct", "live_canary_50pct")):
        assert links.reports_of_task(dag, task) == (links.VERDICT, links.MODEL_PAGE) and links.gate_of_task(task) == gate
    assert links.reports_of_task(dag, "finalize") == (links.MODEL_PAGE,)
    assert links.reports_of_task("some_other_dag", "train") == ()
    assert links.task_report_link("some_other_dag", "r", "train", links.TRAINING_CURVE) is None
    assert links.task_report_link(dag, "r", "finalize", links.VERDICT) is None
    link = links.task_report_link(dag, "manual__2026+1", "train", links.TRAINING_CURVE, api_root="/airflow/")
    assert link is not None and link.startswith("plugin/models/airflow/pipeline/runs/report?")
    assert parse_qs(urlsplit(link).query) == {"dag_id": [dag], "run_id": ["manual__2026+1"], "task_id": ["train"],
                                              "kind": [links.TRAINING_CURVE]}


def test_a_drift_task_links_to_its_monitor_report_and_only_its_files_are_served(client, world):
    run = "scheduled__2026-11-28T17:00:00+00:00"
    report = world.paths.home / "reports" / MODEL / "monitor" / run
    report.mkdir(parents=True)
    (report / "index.html").write_text("<h1>mnist: production monitor</h1>")
    (report / "features.png").write_bytes(PNG)
    (report / "window.json").write_text("{}")
    assert links.reports_of_task("canary_monitor", f"drift_{MODEL}") == (links.MONITOR_REPORT, links.MODEL_PAGE)
    assert links.reports_of_task("canary_monitor", f"probe_{MODEL}") == (links.MODEL_PAGE,)
    link = links.task_report_link("canary_monitor", run, f"drift_{MODEL}", links.MONITOR_REPORT)
    assert link is not None
    reply = client.get("/" + link.removeprefix(f"plugin/{links.NAV_ROUTE}/"), follow_redirects=False)
    target = f"{PREFIX}/reports/{MODEL}/monitor/{quote(run, safe='')}/index.html"
    assert reply.status_code == 303 and unquote(reply.headers["location"]) == unquote(target)
    page = client.get(reply.headers["location"])
    assert page.status_code == 200 and "production monitor" in page.text
    assert client.get(f"{PREFIX}/reports/{MODEL}/monitor/{quote(run, safe='')}/features.png").content == PNG
    assert client.get(f"{PREFIX}/reports/{MODEL}/monitor/{quote(run, safe='')}/window.json").status_code == 400
    assert client.get(f"{PREFIX}/reports/{MODEL}/monitor/%2e%2e/index.html").status_code in (400, 404)
    before = read(client.get(f"{PREFIX}/models/{MODEL}").text)
    assert "No monitor run recorded." in client.get(f"{PREFIX}/models/{MODEL}").text and "monitor" not in before.by_id
    world.registry.record_monitor_run({
        "model": MODEL, "version": 2, "run_id": run, "window_until": 1.0, "requests": 300, "labelled": 250,
        "decision": "alarm", "drifted": True, "accuracy_dropped": False, "streak": 2, "summary": "mnist: alarm",
        "report": f"reports/{MODEL}/monitor/{run}/index.html",
        "figures": {"verdict": {"features": [{"name": "stroke", "statistic": 0.2}],
                                "accuracy": {"accuracy": 0.9, "expected": 0.97}}}})
    model_page = client.get(f"{PREFIX}/models/{MODEL}").text
    row = read(model_page).table("monitor")[0]
    assert row.cells[2] == "alarm (streak 2)" and row.cells[4] == "0.2 (stroke)" and "0.900" in row.cells[6]
    report_link = next(href for href, text in row.links if text == "report")
    opened = client.get(report_link)
    assert opened.status_code == 200 and "production monitor" in opened.text
    missing = links.task_report_link("canary_monitor", "never-ran", f"drift_{MODEL}", links.MONITOR_REPORT)
    assert missing is not None
    reply = client.get("/" + missing.removeprefix(f"plugin/{links.NAV_ROUTE}/"), follow_redirects=False)
    assert reply.status_code == 404 and "wrote no report" in reply.text
