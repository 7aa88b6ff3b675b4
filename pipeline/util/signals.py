"""The one way a command stops on SIGTERM/SIGINT: an Event the signals set, for as long as the command runs."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event that SIGTERM and SIGINT set while the block runs; the handlers before it come back after it.

    Restoring matters where a command runs inside a longer-lived process (the tests run the CLI in their
    worker): a handler left behind would outlive the command, and processes forked later would inherit it and
    shrug off the SIGTERM meant to end them. Off the main thread no handler can be installed: the Event is then
    only set by the caller.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
