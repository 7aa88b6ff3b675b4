"""poll_until: the first result that is not None, at once and then every interval, one last look at the deadline."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from pipeline.errors import DeadlineExceeded
from pipeline.util import polling
from pipeline.util.polling import poll_until


@pytest.fixture
def clock(monkeypatch) -> SimpleNamespace:
    """A fake clock for poll_until: sleeping moves it forward at once, so timings are exact and tests fast."""
    fake = SimpleNamespace(now=100.0, sleeps=[])

    def sleep(seconds: float) -> None:
        fake.sleeps.append(seconds)
        fake.now += seconds

    monkeypatch.setattr(polling, "time", SimpleNamespace(monotonic=lambda: fake.now, sleep=sleep))
    return fake


def answers(*results: object, clock: SimpleNamespace | None = None) -> tuple[list[float], object]:
    """A check that gives ``results`` in turn (then keeps giving the last), noting when it was asked."""
    asked: list[float] = []

    def check() -> tuple[object, str]:
        asked.append(clock.now if clock else 0.0)
        result = results[min(len(asked), len(results)) - 1]
        return result, f"answer {len(asked)}"

    return asked, check


def test_returns_the_first_result_that_is_not_none(clock):
    asked, check = answers(None, None, "done", "later", clock=clock)
    assert poll_until(check, 10, "never done") == "done"
    assert asked == pytest.approx([100.0, 100.1, 100.2])


@pytest.mark.parametrize("falsy", [0, False, "", []])
def test_a_falsy_result_is_a_result(clock, falsy):
    asked, check = answers(falsy, clock=clock)
    assert poll_until(check, 10, "never done") == falsy
    assert len(asked) == 1 and clock.sleeps == []


def test_checks_at_once_even_without_time(clock):
    asked, check = answers("done", clock=clock)
    assert poll_until(check, 0, "never done") == "done"
    asked, check = answers(None, clock=clock)
    with pytest.raises(DeadlineExceeded):
        poll_until(check, 0, "never done")
    assert len(asked) == 1 and clock.sleeps == []


def test_checks_every_interval_and_once_more_at_the_deadline(clock):
    asked, check = answers(None, clock=clock)
    with pytest.raises(DeadlineExceeded):
        poll_until(check, 0.25, "never done", interval_s=0.1)
    assert asked == pytest.approx([100.0, 100.1, 100.2, 100.25])  # the last sleep is cut short to the deadline


def test_the_last_look_at_the_deadline_can_still_succeed(clock):
    asked, check = answers(None, "just in time", clock=clock)
    assert poll_until(check, 0.3, "never done", interval_s=5.0) == "just in time"
    assert asked == pytest.approx([100.0, 100.3])


def test_the_error_says_what_what_was_last_seen_and_the_hint(clock):
    _, check = answers(None, clock=clock)
    with pytest.raises(DeadlineExceeded) as raised:
        poll_until(check, 0.25, "mnist version 3 not AVAILABLE", interval_s=0.1, hint="See server.log")
    assert str(raised.value) == "mnist version 3 not AVAILABLE within 0.25s; last seen: answer 4. See server.log"


def test_without_a_hint_the_error_ends_at_what_was_last_seen(clock):
    _, check = answers(None, clock=clock)
    with pytest.raises(DeadlineExceeded) as raised:
        poll_until(check, 2, "server not up", interval_s=5.0)
    assert str(raised.value) == "server not up within 2s; last seen: answer 2"


def test_an_exception_of_check_propagates_at_once(clock):
    calls = []

    def check() -> tuple[str | None, str]:
        calls.append(clock.now)
        if len(calls) == 2:
            raise ValueError("the server exited")
        return None, "starting"

    with pytest.raises(ValueError, match="the server exited"):
        poll_until(check, 10, "server not up")
    assert len(calls) == 2


def test_real_clock_waits_about_the_timeout():
    """Without the fake clock: it really sleeps between checks and gives up near the deadline."""
    started = time.monotonic()
    asked, check = answers(None)
    with pytest.raises(DeadlineExceeded):
        poll_until(check, 0.2, "never done", interval_s=0.05)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.2  # never before the deadline; how late on a busy machine is not this test's business
    assert 3 <= len(asked) <= 6
