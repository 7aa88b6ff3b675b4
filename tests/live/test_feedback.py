"""Delayed labels by request id: every answer (accepted, duplicate, conflict, unknown, late, malformed) and what it
leaves in the store; the JSONL/CSV file path with broken lines; ``POST /feedback``; ``pipeline feedback`` end to end.

Captured rows are written straight into the store (no serving needed); the HTTP test starts a capture service whose
serving side is never asked.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.live.capture import CaptureOptions, CaptureService
from pipeline.live.feedback import Answer, LabelSpace, ingest_feedback_file, submit_feedback
from pipeline.live.store import (
    SAMPLE_META_KEY,
    Capture,
    CaptureStore,
    StoreLimits,
    VariantAnswer,
    captured,
    in_sample,
)
from pipeline.settings import REPO_ROOT, Paths, get_paths
from pipeline.util.net import free_port

MODEL = "digits"
DIGITS = LabelSpace(MODEL, tuple(str(digit) for digit in range(10)))
_HTTP_TIMEOUT_S = 30.0


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return get_paths(tmp_path / "home")


@pytest.fixture
def store(paths: Paths):
    with CaptureStore.for_model(MODEL, paths) as opened:
        yield opened


def seed(store: CaptureStore, request_id: str, received_at: float | None = None, stable: int = 3,
         canary: int = 3) -> None:
    """Record a captured one-instance request, as the capture service would."""
    assert store.add(Capture(request_id=request_id, received_at=time.time() if received_at is None else received_at,
                             variant="canary", path=f"/v1/models/{MODEL}:predict", body='{"instances": [[0.0]]}',
                             batch_size=1, stable=VariantAnswer(classes=(stable,)),
                             canary=VariantAnswer(classes=(canary,))))


def submit(store: CaptureStore, *items: object, classes: LabelSpace = DIGITS, window_s: float = 3600.0):
    return submit_feedback(store, list(items), classes, source="test", window_s=window_s)


def labels(store: CaptureStore) -> dict[str, int | None]:
    return {row.request_id: row.label for row in store.captured()}


# ---- the answers --------------------------------------------------------------------------------------------------


def test_accepted_labels_are_joined_with_their_captures(store: CaptureStore, paths: Paths) -> None:
    seed(store, "a")
    seed(store, "b")
    results = submit(store, {"request_id": "a", "label": 3}, {"request_id": "b", "label": "7"})
    assert [r.answer for r in results] == [Answer.ACCEPTED, Answer.ACCEPTED]
    assert labels(store) == {"a": 3, "b": 7}
    row = {r.request_id: r for r in captured(MODEL, paths=paths)}["a"]
    assert (row.label, row.stable_class, row.canary_class, row.agree) == (3, 3, 3, True)
    counts = store.counts()
    assert (counts.labelled, counts.feedback) == (2, {"accepted": 2})


def test_a_duplicate_changes_nothing(store: CaptureStore) -> None:
    seed(store, "a")
    submit(store, {"request_id": "a", "label": 4})
    before = store.captured()
    [result] = submit(store, {"request_id": "a", "label": "4"})
    assert result.answer == Answer.DUPLICATE and "nothing changed" in result.detail
    assert store.captured() == before  # label, and when it came, untouched


def test_a_conflicting_label_is_refused_and_the_first_stays(store: CaptureStore) -> None:
    seed(store, "a")
    submit(store, {"request_id": "a", "label": 4})
    [result] = submit(store, {"request_id": "a", "label": 5})
    assert result.answer == Answer.CONFLICT
    assert "'4'" in result.detail and "'5' was refused" in result.detail
    assert labels(store) == {"a": 4}
    assert store.counts().feedback == {"accepted": 1, "conflict": 1}


def test_unknown_ids_say_why_and_write_nothing(paths: Paths) -> None:
    with CaptureStore.for_model(MODEL, paths, StoreLimits(max_rows=1)) as store:
        seed(store, "old")
        seed(store, "new")  # rotates "old" away
        store.set_meta(SAMPLE_META_KEY, "0.5")
        skipped = next(f"id-{n}" for n in range(100) if not in_sample(f"id-{n}", 0.5))
        sampled = next(f"id-{n}" for n in range(100) if in_sample(f"id-{n}", 0.5))
        results = submit(store, {"request_id": "old", "label": 1}, {"request_id": skipped, "label": 1},
                         {"request_id": sampled, "label": 1})
        assert [r.answer for r in results] == [Answer.UNKNOWN] * 3
        assert "rotated away" in results[0].detail
        assert "0.5 sample" in results[1].detail
        assert "not mirrored" in results[2].detail
        assert labels(store) == {"new": None}


def test_late_feedback_is_refused_and_not_recorded(store: CaptureStore) -> None:
    seed(store, "a", received_at=time.time() - 100)
    [late] = submit(store, {"request_id": "a", "label": 2}, window_s=50)
    assert late.answer == Answer.LATE and "50s feedback window" in late.detail
    assert labels(store) == {"a": None}
    [accepted] = submit(store, {"request_id": "a", "label": 2}, window_s=1000)  # late wrote nothing in the way
    assert accepted.answer == Answer.ACCEPTED


@pytest.mark.parametrize(("item", "reason"), [
    ({"label": 3}, "no request_id"),
    ({"request_id": "has space", "label": 3}, "is not a request id"),
    ({"request_id": 17, "label": 3}, "is not a request id"),
    ({"request_id": "x" * 129, "label": 3}, "is not a request id"),
    ({"request_id": "a"}, "no label"),
    ({"request_id": "a", "label": 10}, "not one of digits's classes"),
    ({"request_id": "a", "label": -1}, "not one of digits's classes"),
    ({"request_id": "a", "label": "ten"}, "not one of digits's classes"),
    ({"request_id": "a", "label": True}, "not one of digits's classes"),
    ({"request_id": "a", "label": 2.0}, "not one of digits's classes"),
    (["a", 3], "expected an object"),
])
def test_a_malformed_item_is_answered_and_spares_the_others(store: CaptureStore, item: object, reason: str) -> None:
    seed(store, "a")
    seed(store, "b")
    results = submit(store, {"request_id": "b", "label": 1}, item, {"request_id": "a", "label": 2})
    assert [r.answer for r in results] == [Answer.ACCEPTED, Answer.MALFORMED, Answer.ACCEPTED]
    assert reason in results[1].detail
    assert labels(store) == {"a": 2, "b": 1}


def test_labels_by_class_name_or_index() -> None:
    spam = LabelSpace("spam", ("ham", "spam"))
    assert [spam.index_of(value) for value in ("spam", "ham", "1", 0, " spam ")] == [1, 0, 1, 0, 1]
    for bad in ("Spam", "2", 2, None, ""):
        with pytest.raises(ValueError, match="not one of spam's classes"):
            spam.index_of(bad)
    assert LabelSpace("free", None).index_of("12") == 12  # no class names in the config: any index


# ---- the file path --------------------------------------------------------------------------------------------


def test_jsonl_file_with_a_broken_line_ingests_the_rest(store: CaptureStore, paths: Paths, tmp_path: Path) -> None:
    for request_id in ("a", "b", "c"):
        seed(store, request_id)
    file = tmp_path / "labels.jsonl"
    file.write_bytes(b'{"request_id": "a", "label": 1}\n'
                     b'{"request_id": "b", "label": \n'  # cut short
                     b"\n"
                     b"# a comment\n"
                     b'\xff\xfe not utf-8\n'
                     b'{"request_id": "c", "label": "2"}\n'
                     b'{"request_id": "a", "label": 1}\n'
                     b'{"request_id": "zzz", "label": 1}\n')
    summary = ingest_feedback_file(MODEL, file, paths=paths, classes=DIGITS)
    assert summary.counts == {"accepted": 2, "duplicate": 1, "conflict": 0, "unknown": 1, "late": 0, "malformed": 2}
    assert [(p.line, p.answer) for p in summary.problems] == [
        (2, Answer.MALFORMED), (5, Answer.MALFORMED), (7, Answer.DUPLICATE), (8, Answer.UNKNOWN)]
    assert "not valid JSON" in summary.problems[0].detail and "UTF-8" in summary.problems[1].detail
    assert labels(store) == {"a": 1, "b": None, "c": 2}
    assert summary.describe().startswith("digits feedback from labels.jsonl: 6 items: 2 accepted, 1 duplicate")


def test_csv_file_with_a_header_and_a_broken_line(store: CaptureStore, paths: Paths, tmp_path: Path) -> None:
    for request_id in ("a", "b", "c"):
        seed(store, request_id)
    file = tmp_path / "labels.csv"
    file.write_text("request_id,label\na,4\nb,4,extra\nc, 5\nb,12\n")
    summary = ingest_feedback_file(MODEL, file, paths=paths, classes=DIGITS)
    assert summary.counts["accepted"] == 2 and summary.counts["malformed"] == 2
    assert [p.line for p in summary.problems] == [3, 5]
    assert "expected request_id,label" in summary.problems[0].detail
    assert labels(store) == {"a": 4, "b": None, "c": 5}
    assert store.captured()[0].labelled_at is not None


def test_an_unreadable_file_is_a_pipeline_error(paths: Paths, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="cannot read the feedback file"):
        ingest_feedback_file(MODEL, tmp_path / "missing.csv", paths=paths, classes=DIGITS)


# ---- POST /feedback -------------------------------------------------------------------------------------------


def test_post_feedback_answers_each_item(store: CaptureStore, paths: Paths) -> None:
    seed(store, "a")
    seed(store, "b")
    service = CaptureService(f"http://127.0.0.1:{free_port()}", [MODEL], paths=paths, port=free_port(),
                             options=CaptureOptions(feedback_window_s=3600), class_names={MODEL: DIGITS.class_names})
    with service:
        url = f"{service.url}/feedback"
        items = [{"request_id": "a", "label": 1}, {"request_id": "a", "label": 1}, {"request_id": "a", "label": 2},
                 {"request_id": "nope", "label": 1}, {"request_id": "b", "label": "x"}]
        answer = requests.post(url, json=items, timeout=_HTTP_TIMEOUT_S)
        assert answer.status_code == 200
        body = answer.json()
        assert [r["answer"] for r in body["results"]] == ["accepted", "duplicate", "conflict", "unknown", "malformed"]
        assert body["counts"] == {"accepted": 1, "duplicate": 1, "conflict": 1, "unknown": 1, "malformed": 1}
        one = requests.post(f"{url}/{MODEL}", json={"request_id": "b", "label": 7}, timeout=_HTTP_TIMEOUT_S)
        assert one.status_code == 200 and one.json()["results"][0]["answer"] == "accepted"
        assert requests.post(url, data=b"a,1", timeout=_HTTP_TIMEOUT_S).status_code == 400
        assert requests.post(url, json="a", timeout=_HTTP_TIMEOUT_S).status_code == 400
        other = requests.post(f"{url}/other", json={"request_id": "a", "label": 1}, timeout=_HTTP_TIMEOUT_S)
        assert other.status_code == 404 and "not captured here" in other.json()["error"]
    assert labels(store) == {"a": 1, "b": 7}


# ---- pipeline feedback ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A pipeline home and a config dir whose ``digits`` model names its classes ``zero`` ... ``nine``."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "models" / "mnist.yaml").read_text())
    config.update(name=MODEL, class_names=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                           "nine"])
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    return get_paths()


def test_cli_feedback_end_to_end(cli_world: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with CaptureStore.for_model(MODEL, cli_world) as store:
        for request_id in ("a", "b", "c"):
            seed(store, request_id)
    file = tmp_path / "labels.csv"
    file.write_text("a,three\nb,3\nb,4\nc,ten\n")

    assert main(["feedback", MODEL, str(file)]) == 0
    out = capsys.readouterr().out
    assert "4 items: 2 accepted, 0 duplicate, 1 conflict, 0 unknown, 0 late, 1 malformed" in out
    assert "line 3 (b): conflict" in out and "line 4 (c): malformed" in out

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"request_id": "a", "label": "three"}\n')))
    assert main(["feedback", MODEL, "-", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["source"], result["counts"]["duplicate"]) == ("stdin", 1)

    assert {row.request_id: row.label for row in captured(MODEL, paths=cli_world)} == {"a": 3, "b": 3, "c": None}
    assert main(["feedback", MODEL, str(tmp_path / "missing.csv")]) == 2
    assert "error: cannot read the feedback file" in capsys.readouterr().err
    assert main(["feedback", "nope", str(file)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
