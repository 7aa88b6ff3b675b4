"""glibc's allocator settings: with the mmap threshold pinned, a large buffer grown piece by piece costs its size
and goes back to the OS when freed (a subprocess each: the settings are process-wide)."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

_GROW = """
import json, sys
from pipeline.util import memory
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
pinned = memory.pin_mmap_threshold(1 << 20) if sys.argv[1] == "pin" else False
spare = bytearray(20 << 20)  # a large block freed: glibc raises its threshold (unless pinned)
del spare
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
body, piece = bytearray(), b"a" * 65536
while len(body) < (48 << 20):
    body += piece
peak = status("VmHWM") - base
del body
memory.return_freed_memory()
print(json.dumps({"pinned": pinned, "peak_mb": peak, "left_mb": status("VmRSS") - base}))
"""


def _grow(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _GROW, mode], capture_output=True, text=True, check=True,
                          timeout=120)
    return json.loads(done.stdout)


@pytest.mark.skipif(not ctypes.util.find_library("c") or sys.platform != "linux",
                    reason="needs glibc and /proc (Linux)")
def test_a_pinned_threshold_keeps_a_grown_buffer_at_its_size_and_frees_it() -> None:
    pinned = _grow("pin")
    assert pinned["pinned"] is True
    assert pinned["peak_mb"] < 48 + 6  # the buffer grew by remapping, not by copying across the heap
    assert pinned["left_mb"] < 6  # and went back to the OS
