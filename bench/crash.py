"""Crash bench: SIGKILL ``pipeline release`` at each step of a tiny world, then time on-call ``pipeline rollback``.

In a fresh temporary pipeline home with its own small configs and embedded staging and production servers on free
ports (no Airflow, no live traffic path):

1. two seed releases of ``mnist`` (``pipeline release``) make version 2 stable with version 1 loaded beside it;
2. for each release step, a fresh model ``crash_<step>`` is cloned from them (the same two version directories,
   data snapshot and registry history; production serving 1 and 2, ``stable`` -> 2);
3. ``pipeline release crash_<step> --conf '{"epochs": 2, "force": true}'`` runs in its own process and is SIGKILLed
   ``--kill-after`` seconds (0.1) after its log says the step starts (it holds the model's lock from deploy_staging on,
   and a canary from promote_canary on);
4. ``pipeline rollback crash_<step>`` runs as on-call would run it, in a new process: its wall time from start to
   exit (interpreter, imports, the lock taken from the dead release, production's ``stable`` -> 1) is the figure;
   production, the registry and the lock are checked afterwards;
5. once more with a release that is *not* killed (``alive@validate_staging``, held with SIGSTOP while the rollback
   runs, as a slow release would be, then let go on): the rollback preempts it, and the release must stop by itself
   at its next step with the preemption's message, production left as the rollback left it.

The floor, measured in the same run: ``pipeline rollback`` of a clone whose release never ran (the lock free, nothing
to take over). Prints JSON, then a table. Usage: ``.venv/bin/python bench/crash.py [--steps a,b] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_SEED = "mnist"
_KILL_CONF = {"epochs": 2, "force": True}
_TARGET_S = 5.0  # the figure: on-call rollback completes within 5 s of being asked, whatever died where
_RELEASE_TIMEOUT_S = 900.0
_ROLLBACK_TIMEOUT_S = 120.0
# The tests' small MNIST world (tests/worlds.py), with a longer load deadline and more versions kept.
_WORLD_OVERRIDES = {"serving": {"load_deadline_s": 120}, "release": {"keep_versions": 5}}
_ALIVE_AT = "validate_staging"  # a release still running when the rollback comes: it holds the lock for seconds more
_STARTS = re.compile(r"release \S+: (?P<step>\w+) starts$")


# ---- the sandbox ---------------------------------------------------------------------------------------------------


def make_world(root: Path, cache: Path) -> dict[str, str]:
    """The tests' small world (tests.worlds.write_world: small mnist and spam, staging and production on free ports)
    with a home whose download cache is a copy of ``cache`` (nothing is fetched again); returns the environment."""
    from tests.worlds import write_world

    home = write_world(root, _WORLD_OVERRIDES)
    if (cache / "npm").is_dir() and not (home / "cache" / "npm").is_dir():
        shutil.copytree(cache / "npm", home / "cache" / "npm")
    return {"PIPELINE_HOME": str(home), "PIPELINE_CONFIG_DIR": str(root / "configs"),
            "PIPELINE_SERVING_PROFILE": "embedded", "PIPELINE_SCHEDULES": "off"}


def pipeline_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def run_pipeline(env: dict[str, str], *args: str, timeout_s: float) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    proc = subprocess.run(pipeline_command(*args), env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started


def seed(env: dict[str, str]) -> list[dict[str, Any]]:
    """Release 1, then 2: stable 2 with 1 loaded beside it (what finalize leaves)."""
    timings = []
    for conf in ({}, {"epochs": 4, "force": True}):
        rc, _, err, seconds = run_pipeline(env, "release", _SEED, "--conf", json.dumps(conf), "--json",
                                           timeout_s=_RELEASE_TIMEOUT_S)
        if rc != 0:
            raise SystemExit(f"seed release {conf} failed ({rc}):\n{err[-3000:]}")
        timings.append({"conf": conf, "seconds": round(seconds, 1)})
    return timings


def clone(env: dict[str, str], name: str) -> None:
    """``name``: the seed's config, versions 1 and 2, data snapshots and history; production serves 1 and 2."""
    import yaml

    from pipeline.release.context import Release
    from pipeline.release.production import STABLE, change_production
    from pipeline.release.registry import State
    from pipeline.settings import get_paths
    from pipeline.steps import resolve_config

    configs, paths = Path(env["PIPELINE_CONFIG_DIR"]), get_paths(env["PIPELINE_HOME"])
    raw = yaml.safe_load((configs / "models" / f"{_SEED}.yaml").read_text())
    (configs / "models" / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
    for version in (1, 2):
        shutil.copytree(paths.model_base_path(_SEED) / str(version), paths.model_base_path(name) / str(version))
    shutil.copytree(paths.data_dir / _SEED, paths.data_dir / name)
    release = Release(resolve_config(name), paths=paths)
    for version in (1, 2):
        seeded = release.registry.get_version(_SEED, version)
        release.registry.register_version(name, version, {
            "data_sha256": seeded.data_sha256, "airflow_run_id": f"clone-{version}", "params": seeded.params,
            "training_run_id": seeded.training_run_id, "metrics": seeded.metrics,
            "export_path": str(release.version_dir(version))})
        for state in (State.STAGED, State.VALIDATED, State.CANARY, State.PROMOTED):
            release.registry.transition(name, version, state, run_id=f"clone-{version}", reason="bench: cloned")
    change_production(release, [1, 2], {STABLE: 2})
    release.close()


# ---- one crash ------------------------------------------------------------------------------------------------------


def release_until(env: dict[str, str], model: str, step: str, kill_after_s: float, kill: bool
                  ) -> tuple[subprocess.Popen[str], bool, list[str]]:
    """Start ``pipeline release`` and return once ``step`` started (+ ``kill_after_s``): SIGKILLed when ``kill``,
    else SIGSTOPped (a release that is alive but slow: it goes on when the caller sends SIGCONT);
    ``reached`` False when the release ended before the step."""
    process = subprocess.Popen(pipeline_command("release", model, "--conf", json.dumps(_KILL_CONF)),
                               env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + _RELEASE_TIMEOUT_S
    for line in process.stderr:
        lines.append(line.rstrip())
        match = _STARTS.search(line.rstrip())
        if match and match["step"] == step:
            time.sleep(kill_after_s)
            if kill:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            else:
                process.send_signal(signal.SIGSTOP)
            return process, True, lines
        if time.monotonic() > deadline:
            break
    process.wait(timeout=60)
    return process, False, lines


def served(env: dict[str, str], model: str) -> dict[str, Any]:
    from pipeline.release.context import Release
    from pipeline.release.production import production_state
    from pipeline.settings import get_paths
    from pipeline.steps import resolve_config

    release = Release(resolve_config(model), paths=get_paths(env["PIPELINE_HOME"]))
    state = production_state(release)
    holder = release.registry.lock_holder(model)
    return {"labels": dict(state.labels), "versions": list(state.versions),
            "lock": None if holder is None else holder.owner,
            "lock_pid": None if holder is None or holder.holder is None else holder.holder.pid,
            "stable": release.registry.stable_version(model)}


def crash_and_roll_back(env: dict[str, str], step: str, kill_after_s: float, kill: bool = True) -> dict[str, Any]:
    model = f"crash_{step}" if kill else f"alive_{step}"
    clone(env, model)
    process, reached, lines = release_until(env, model, step, kill_after_s, kill)
    at_kill = served(env, model)
    rc, out, err, seconds = run_pipeline(env, "rollback", model, "--json", timeout_s=_ROLLBACK_TIMEOUT_S)
    rolled = json.loads(out) if rc == 0 else {}
    row: dict[str, Any] = {"scenario": f"{'killed' if kill else 'alive'}@{step}", "reached": reached,
                           "lock_at_kill": at_kill["lock"], "labels_at_kill": at_kill["labels"],
                           "rollback_rc": rc, "rollback_s": round(seconds, 2), "rollback_to": rolled.get("to"),
                           "production_switch_s": rolled.get("seconds"),
                           "rollback_error": err.strip().splitlines()[-1] if rc else None}
    if not kill:  # the preempted release goes on, and must stop by itself at its next step, saying why
        process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout=_RELEASE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        assert process.stderr is not None
        tail = [line.rstrip() for line in process.stderr]
        row["release_rc"] = process.returncode
        row["release_said"] = next((line for line in reversed(tail) if line.startswith("error:")), tail[-1:])
    after = served(env, model)
    # Production serves exactly what the rollback chose as stable (1, or 2 when the release had finished), no canary,
    # the registry agrees, and the lock is free.
    to = row["rollback_to"]
    ok = rc == 0 and to is not None and after["labels"] == {"stable": to} and after["stable"] == to and \
        after["lock"] is None
    if not kill:
        ok = ok and row["release_rc"] != 0 and "was preempted by" in str(row["release_said"])
    row.update({"labels_after": after["labels"], "stable_after": after["stable"], "lock_after": after["lock"],
                "ok": ok})
    return row


def floor(env: dict[str, str]) -> dict[str, Any]:
    """``pipeline rollback`` with nothing to take over: a clone whose release never ran."""
    clone(env, "floor")
    rc, out, err, seconds = run_pipeline(env, "rollback", "floor", "--json", timeout_s=_ROLLBACK_TIMEOUT_S)
    return {"scenario": "floor (no crash)", "rollback_rc": rc, "rollback_s": round(seconds, 2),
            "production_switch_s": json.loads(out).get("seconds") if rc == 0 else None,
            "rollback_error": err.strip().splitlines()[-1] if rc else None}


def release_steps() -> list[str]:
    from pipeline.flow import release_steps as steps

    return [s.task_id for s in steps() if not s.waits]  # no live phases: the tiny world has no traffic path


# ---- report ---------------------------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    lines = [f"{'scenario':<28} {'lock at kill':<14} {'labels at kill':<26} {'rollback':>9} {'switch':>7} "
             f"{'rc':>3}  {'after':<14} ok",
             "-" * 112]
    for row in [report["floor"], *report["rows"]]:
        lock = "-" if not row.get("lock_at_kill") else "held"
        labels = json.dumps(row.get("labels_at_kill", "")) if "labels_at_kill" in row else ""
        after = json.dumps(row.get("labels_after", "")) if "labels_after" in row else ""
        ok = {True: "yes", False: "NO", None: ""}[row.get("ok")]
        note = "" if row.get("reached", True) else "  (release ended before the step)"
        switch = f"{row['production_switch_s']:.2f}s" if row.get("production_switch_s") is not None else "-"
        lines.append(f"{row['scenario']:<28} {lock:<14} {labels:<26} {row['rollback_s']:>8.2f}s {switch:>7} "
                     f"{row['rollback_rc']:>3}  {after:<14} {ok}{note}")
        if row.get("release_said"):
            lines.append(f"{'':<28} the release said: {str(row['release_said'])[:150]}")
    summary = report["summary"]
    lines.append("-" * 112)
    lines.append("rollback: the `pipeline rollback` process from start to exit; switch: production's stable moving "
                 "(inside it)")
    lines.append(f"rollback after a crash: max {summary['max_rollback_s']:.2f} s, median "
                 f"{summary['median_rollback_s']:.2f} s (target <= {_TARGET_S:g} s; floor "
                 f"{report['floor']['rollback_s']:.2f} s); all ok: {summary['all_ok']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", help="comma-separated release steps to kill at (default: every step)")
    parser.add_argument("--kill-after", type=float, default=0.1, help="seconds after the step starts (default 0.1)")
    parser.add_argument("--no-alive", action="store_true", help="skip the not-killed (preempted) release")
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "cache",
                        help="the download cache to copy into the sandbox (default var/cache)")
    parser.add_argument("--json", help="also write the JSON report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox (its path is printed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import statistics

    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pipeline-crash-bench-"))
    env = make_world(root, args.cache)
    os.environ.update(env)
    os.environ.pop("PIPELINE_REGISTRY_URL", None)
    steps = args.steps.split(",") if args.steps else release_steps()
    started = time.perf_counter()
    try:
        seeded = seed(env)
        report: dict[str, Any] = {"seed": seeded, "floor": floor(env), "rows": []}
        for step in steps:
            report["rows"].append(crash_and_roll_back(env, step, args.kill_after))
            print(f"  killed at {step}: rollback {report['rows'][-1]['rollback_s']:.2f} s", file=sys.stderr)
        if not args.no_alive:
            report["rows"].append(crash_and_roll_back(env, _ALIVE_AT, args.kill_after, kill=False))
        times = [row["rollback_s"] for row in report["rows"]]
        report["summary"] = {"max_rollback_s": max(times), "median_rollback_s": statistics.median(times),
                             "target_s": _TARGET_S, "all_ok": all(row["ok"] for row in report["rows"]),
                             "all_within_target": all(t <= _TARGET_S for t in times),
                             "bench_s": round(time.perf_counter() - started, 1)}
    finally:
        from pipeline.serving.backends import get_backend
        from pipeline.settings import get_paths

        for name in ("staging", "production"):
            get_backend(name, paths=get_paths(env["PIPELINE_HOME"])).stop()
        if args.keep:
            print(f"sandbox kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
