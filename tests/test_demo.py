"""The demos' background processes: a killed demo leaves none behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from pipeline.util.polling import poll_until

_DEADLINE_S = 60.0  # the 2 shared cores may be busy


def test_a_demos_child_ends_when_the_demo_is_killed(tmp_path: Path) -> None:
    # A stand-in demo: starts a long child the way the demos start their traffic, says its pid, then waits.
    demo = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipeline.demo import start_child
        child = start_child([sys.executable, "-c", "import time; time.sleep(600)"], Path({str(tmp_path / "child.log")!r}))
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", demo], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.ppid() == parent.pid
        parent.send_signal(signal.SIGKILL)  # no finally, no handler: only the kernel can tell the child
        parent.wait(_DEADLINE_S)
        poll_until(lambda: (True, "ended") if _ended(child) else (None, "still running"), _DEADLINE_S,
                   what="the demo's child to end with it")
    finally:
        parent.kill()


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped (its parent is gone)
    except psutil.NoSuchProcess:
        return True
