"""stop_on_signals: SIGTERM/SIGINT set an Event inside the block, and the handlers before it come back after it."""

from __future__ import annotations

import os
import signal
import threading

from pipeline.util.polling import poll_until
from pipeline.util.signals import STOP_SIGNALS, stop_on_signals


def test_a_signal_inside_the_block_sets_the_event_and_the_old_handlers_come_back() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    with stop_on_signals() as stop:
        assert all(signal.getsignal(signum) is not before[signum] for signum in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # would end this process without the block's handler
        poll_until(lambda: (stop.is_set() or None, "not set"), 10, "SIGTERM did not set the event")
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_off_the_main_thread_no_handler_is_installed() -> None:
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    seen: dict[str, object] = {}

    def run() -> None:
        with stop_on_signals() as stop:
            seen["handlers"] = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
            seen["set"] = stop.is_set()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"handlers": before, "set": False}
