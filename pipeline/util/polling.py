"""The one poll-until-deadline loop: ask a question until it says done, or say what was last seen and give up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pipeline.errors import DeadlineExceeded

T = TypeVar("T")
_DEFAULT_INTERVAL_S = 0.1


def poll_until(check: Callable[[], tuple[T | None, str]], timeout_s: float, what: str,
               interval_s: float = _DEFAULT_INTERVAL_S, hint: str = "") -> T:
    """Call ``check()`` until it returns a result that is not None: at once, then every ``interval_s`` until the
    deadline, where it is asked one last time.

    ``check`` returns ``(result, last_seen)``: the result once done (None while not yet), and a few words on the
    state it saw, which the error names when the deadline passes. Exceptions of ``check`` propagate: it decides
    which failures are final and which are worth another try.

    Raises:
        DeadlineExceeded: ``"<what> within <timeout>s; last seen: <last_seen>. <hint>"`` (``what`` says what
            did not happen, e.g. ``"mnist version 3 not AVAILABLE"``; ``hint`` what to do next).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result, last_seen = check()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{what} within {timeout_s:g}s; last seen: {last_seen}" + (f". {hint}" if hint else ""))
        time.sleep(min(interval_s, remaining))  # the last check falls on the deadline itself
