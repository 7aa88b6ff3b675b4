"""A `pipeline release` SIGKILLed during canary_check, for real: on-call rollback is not blocked by its lock, and a
rerun of the release reconciles production instead of leaving the canary there (the issue's probes, end to end).

Real training and real embedded servers in the small release world; ``bench/crash.py`` times the same at every step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pipeline.cli import main
from pipeline.flow import run_release
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE, production_state
from pipeline.release.registry import State
from pipeline.steps import resolve_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_STARTS = re.compile(r"release \S+: (?P<step>\w+) starts$")


def _kill_release_at(step: str, conf: dict) -> int:
    """Run ``pipeline release mnist`` in its own process and SIGKILL it once ``step`` starts; returns its pid."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "release", "mnist", "--conf", json.dumps(conf)],
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line.rstrip())
        match = _STARTS.search(line.rstrip())
        if match and match["step"] == step:
            time.sleep(0.2)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return process.pid
    process.wait(timeout=60)
    raise AssertionError(f"the release ended before {step} (exit {process.returncode}): {seen[-5:]}")


def test_a_killed_release_blocks_neither_on_call_nor_a_rerun(release_world, capsys):
    for run_id, conf in (("v1", {}), ("v2", {"epochs": 4, "force": True})):
        run_release("mnist", conf, run_id=run_id)
    release = Release(resolve_config("mnist"))

    pid = _kill_release_at("canary_check", {"epochs": 2, "force": True})
    assert production_state(release).labels == {STABLE: 2, CANARY: 3}
    holder = release.registry.lock_holder("mnist")
    assert holder is not None and holder.holder is not None and holder.holder.pid == pid  # held by the dead process

    # A rerun reconciles first: the leftover canary is rolled back, and "nothing new" no longer hides it.
    rerun = run_release("mnist", {"epochs": 2, "force": True}, run_id="rerun")
    assert rerun["reconcile"]["actions"][0] == "production: canary 3 rolled back, stable 2"
    assert rerun["has_new_version"] is False
    assert production_state(release).labels == {STABLE: 2}
    assert release.registry.get_version("mnist", 3).state is State.ROLLED_BACK

    # Killed again during canary_check (a new version): on-call rollback takes the dead release's lock at once.
    _kill_release_at("canary_check", {"epochs": 1, "force": True})
    assert production_state(release).label(CANARY) == 4
    assert main(["rollback", "mnist", "--json"]) == 0
    rolled = json.loads(capsys.readouterr().out)
    assert (rolled["from"], rolled["to"], rolled["dropped_canary"]) == (2, 1, 4)
    assert production_state(release).labels == {STABLE: 1}
    assert release.registry.get_version("mnist", 4).state is State.ROLLED_BACK
    assert release.registry.lock_holder("mnist") is None
