"""The live window: access-log lines joined with captures into the analysis' observations."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import LiveCanaryConfig
from pipeline.live.observations import LogPosition, join, log_position, model_of, read_entries
from pipeline.live.phases import SHADOW, live_phases, phase_named
from pipeline.live.store import CapturedRequest


def _line(rid: str, variant: str = "stable", path: str = "/v1/models/m:predict", status: int = 200,
          grpc_status: str = "", upstream: str = "0.004", api: str = "rest") -> str:
    return json.dumps({"time": "t", "ts": 1.5, "request_id": rid, "api": api, "variant": variant, "method": "POST",
                       "path": path, "status": status, "grpc_status": grpc_status, "request_time": 0.01,
                       "upstream_addr": "127.0.0.1:1", "upstream_status": str(status),
                       "upstream_response_time": upstream, "request_length": 10, "bytes_sent": 10, "config": 1})


def _capture(rid: str, stable: int | None, canary: int | None, label: int | None = None,
             canary_error: str | None = None) -> CapturedRequest:
    return CapturedRequest(rid, 1.0, "stable", "/v1/models/m:predict", 1, None if stable is None else (stable,),
                           None if canary is None else (canary,), None, None, None, canary_error, label, None,
                           "[0.1, 0.2]", "sha", True)


def test_a_window_reads_only_what_was_logged_after_its_start(tmp_path: Path):
    log = tmp_path / "access.log"
    log.write_text(_line("old") + "\n")
    start = log_position(log)
    with log.open("a") as handle:
        handle.write(_line("new1") + "\n" + _line("new2", variant="canary") + "\n" + '{"torn": ')
    assert [e.request_id for e in read_entries(start)] == ["new1", "new2"]


def test_a_rotated_log_is_read_from_its_beginning(tmp_path: Path):
    log = tmp_path / "access.log"
    log.write_text(_line("a") + "\n" + _line("b") + "\n")
    start = log_position(log)
    log.rename(tmp_path / "access.log.1")
    log.write_text(_line("c") + "\n")
    assert [e.request_id for e in read_entries(start)] == ["c"]


def test_a_missing_log_is_an_empty_window(tmp_path: Path):
    assert list(read_entries(log_position(tmp_path / "none.log"))) == []
    assert LogPosition.from_dict(log_position(tmp_path / "none.log").as_dict()).offset == 0


def test_only_inference_requests_that_reached_an_upstream_count(tmp_path: Path):
    log = tmp_path / "access.log"
    log.write_text("\n".join([
        _line("status", path="/v1/models/m"),  # model status: not inference
        _line("refused", variant=""),  # fenced by the proxy: no upstream
        _line("grpc", api="grpc", path="/tensorflow.serving.PredictionService/Predict", grpc_status="0"),
        _line("meta", api="grpc", path="/tensorflow.serving.PredictionService/GetModelMetadata"),
        _line("labelled", path="/v1/models/m/labels/stable:predict"),
    ]) + "\n")
    entries = list(read_entries(LogPosition(str(log), log.stat().st_ino, 0)))
    assert [e.request_id for e in entries] == ["grpc", "labelled"]
    assert model_of(entries[0]) is None and model_of(entries[1]) == "m"


def test_join_keeps_the_models_requests_with_their_captures(tmp_path: Path):
    log = tmp_path / "access.log"
    log.write_text("\n".join([
        _line("r1", upstream="0.002"),
        _line("r2", variant="canary", status=500),
        _line("other", path="/v1/models/spam:predict"),
        _line("g1", api="grpc", path="/tensorflow.serving.PredictionService/Predict", grpc_status="14"),
        _line("r1", upstream="0.001, 0.003"),  # the same id again: its last answer counts
    ]) + "\n")
    entries = read_entries(LogPosition(str(log), log.stat().st_ino, 0))
    observations = {o.request_id: o for o in join("m", entries, [_capture("r1", 3, 5, label=3)])}
    assert set(observations) == {"r1", "r2", "g1"}
    r1 = observations["r1"]
    assert (r1.variant, r1.ok, r1.latency_ms, r1.predicted_class) == ("stable", True, 3.0, 3)
    assert (r1.stable_class, r1.canary_class, r1.label, r1.mirror_ok) == (3, 5, 3, True)
    assert observations["r2"].variant == "canary" and not observations["r2"].ok
    assert observations["r2"].predicted_class is None and observations["r2"].stable_class is None
    assert not observations["g1"].ok  # gRPC UNAVAILABLE with HTTP 200


def test_a_failed_copy_of_the_other_version_is_a_failed_mirror():
    from pipeline.live.observations import AccessEntry

    entry = AccessEntry(1.0, "x", "rest", "stable", "/v1/models/m:predict", 200, "", 2.0)
    (observation,) = join("m", [entry], [_capture("x", 4, None, canary_error="boom")])
    assert observation.mirror_ok is False and observation.answer_of("canary") == (False, None, None)


def test_phases_are_shadow_then_each_step():
    phases = live_phases(LiveCanaryConfig(steps=(5, 25, 50), mirror_share=0.2))
    assert [(p.name, p.task_id, p.canary_percent, p.mirror_percent) for p in phases] == [
        (SHADOW, "shadow", 0.0, 20.0), ("5%", "canary_5pct", 5.0, 20.0), ("25%", "canary_25pct", 25.0, 20.0),
        ("50%", "canary_50pct", 50.0, 20.0)]
    assert phase_named(LiveCanaryConfig(), "canary_25pct").name == "25%"
    assert phase_named(LiveCanaryConfig(), "25%").canary_percent == 25.0
    import pytest

    with pytest.raises(ValueError, match="no live phase '30%'"):
        phase_named(LiveCanaryConfig(), "30%")
