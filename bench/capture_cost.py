"""Capture cost benchmark: what mirroring live traffic to the capture service costs in CPU while no canary is live.

The stack's live path as ``pipeline up`` starts it (:func:`pipeline.live.services.start_live_path`: production and
canary embedded TF Serving, nginx, the capture service under supervisord) in a temporary home with free ports, the
MNIST model of ``--model-base-path`` stable on production and no canary (the state between releases, when
production monitoring reads the mirrored share). ``pipeline traffic``'s client sends ``--rps`` requests a second
(REST and gRPC, true labels sent back) the whole time. For each mirror share (``--mirror``, percent; 0 is the floor:
the same traffic, nothing captured) the proxy's split is set, then for ``--seconds``:

* the CPU seconds each process group used (production server, canary server, capture service, nginx, the client),
  as cores (CPU seconds / wall seconds);
* the requests captured (rows added to the capture store) and those the capture service dropped.

The shares run in rounds (the order flips each round) so that drift on a busy VM hits them alike. Prints a JSON
document, then a table. Everything started is stopped.

Usage::

    .venv/bin/python bench/capture_cost.py [--model-base-path var/models/mnist] [--rps 50] [--mirror 0 20 100]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from canary import _INSTANCES, _MODEL, _find_stable, _install_versions, _write_world  # noqa: E402 - the same world

from pipeline.wire.grpc_io import prefer_classic_io  # noqa: E402

_SETTLE_S = 3.0  # after a split change: the old share's queued captures drain before the window opens


def _group(cmdline: list[str]) -> str | None:
    """Which part of the live path a process of the temporary home is."""
    text = " ".join(cmdline)
    if "capture-serve" in text:
        return "capture"
    if text.startswith("nginx") or "/nginx" in text.split(" ")[0]:
        return "nginx"
    for name in _INSTANCES:
        if f"serving/{name}" in text or f"--instance {name}" in text or f"serve {name}" in text:
            return name
    return None


def _stack_processes(root: Path) -> dict[int, str]:
    """The live path's processes (found by the temporary home in their command line or environment)."""
    import psutil

    found: dict[int, str] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if str(root) not in " ".join(cmdline) and str(root) not in proc.environ().get("PIPELINE_HOME", ""):
                continue
            group = _group(cmdline)
            if group is not None:
                found[proc.info["pid"]] = group
                # nginx's workers keep neither the home in their command line nor the environment
                found.update({child.pid: group for child in proc.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _cpu_seconds(processes: dict[int, str]) -> dict[str, float]:
    import psutil

    totals: dict[str, float] = defaultdict(float)
    for pid, group in processes.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        totals[group] += times.user + times.system + times.children_user + times.children_system
    own = psutil.Process().cpu_times()
    totals["client"] = own.user + own.system
    return dict(totals)


def _window(root: Path, paths: Any, seconds: float) -> dict[str, Any]:
    """CPU per group and captures over ``seconds`` of traffic."""
    from pipeline.live.store import CaptureStore, capture_db_path

    processes = _stack_processes(root)
    with CaptureStore(capture_db_path(_MODEL, paths)) as store:
        before = store.counts()
    cpu_before, started = _cpu_seconds(processes), time.monotonic()
    time.sleep(seconds)
    cpu_after, wall = _cpu_seconds(processes), time.monotonic() - started
    with CaptureStore(capture_db_path(_MODEL, paths)) as store:
        after = store.counts()
    cores = {group: round((cpu_after.get(group, 0.0) - cpu_before.get(group, 0.0)) / wall, 3)
             for group in sorted(set(cpu_after) | set(cpu_before))}
    return {"wall_s": round(wall, 2), "cores": cores, "cores_total": round(sum(cores.values()), 3),
            "captured": after.captured - before.captured, "dropped": after.dropped - before.dropped,
            "processes": sorted(processes.values())}


def _set_mirror(percent: float) -> None:
    from pipeline.live.endpoints import TrafficSplit
    from pipeline.live.routing import router_for

    router_for().set_split(TrafficSplit(0.0, percent), timeout_s=30.0)


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean cores per group and captures per second over a share's windows."""
    groups = sorted({group for window in windows for group in window["cores"]})
    wall = sum(w["wall_s"] for w in windows)
    return {"windows": len(windows),
            "cores": {g: round(sum(w["cores"].get(g, 0.0) for w in windows) / len(windows), 3) for g in groups},
            "cores_total": round(sum(w["cores_total"] for w in windows) / len(windows), 3),
            "captured_per_s": round(sum(w["captured"] for w in windows) / wall, 1),
            "dropped": sum(w["dropped"] for w in windows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=Path("var/models/mnist"))
    parser.add_argument("--home", type=Path, default=Path("var"), help="the home holding the stable's data snapshot")
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--mirror", type=float, nargs="+", default=[0.0, 20.0, 100.0])
    parser.add_argument("--seconds", type=float, default=20.0, help="one window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops what was started (finally)
    prefer_classic_io()
    repo = Path(__file__).resolve().parent.parent
    stable_dir = _find_stable(args.model_base_path.resolve(), args.home.resolve())
    report: dict[str, Any] = {"bench": "capture_cost", "rps": args.rps, "seconds": args.seconds,
                              "rounds": args.rounds, "stable_source": str(stable_dir)}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        root = Path(tmp)
        _write_world(root, repo)
        from canary import Clients, running_live_path

        from pipeline.release.context import Release
        from pipeline.release.production import STABLE, change_production
        from pipeline.settings import get_paths
        from pipeline.steps import resolve_config

        paths = get_paths()
        windows: dict[float, list[dict[str, Any]]] = defaultdict(list)
        _install_versions(paths, stable_dir, args.home.resolve(), bad_runs=0)  # stable 1 (and a copy, 2)
        release = Release(resolve_config(_MODEL), paths=paths)
        with running_live_path(paths):
            change_production(release, [1], {STABLE: 1})
            clients = Clients(args.rps)
            try:
                _set_mirror(100.0)  # the capture process's one-time imports (TensorFlow's protos, on the first
                time.sleep(4 * _SETTLE_S)  # gRPC capture) happen before any window, not in the first one
                for round_ in range(args.rounds):
                    for percent in args.mirror if round_ % 2 == 0 else list(reversed(args.mirror)):
                        _set_mirror(percent)
                        time.sleep(_SETTLE_S)
                        windows[percent].append(_window(root, paths, args.seconds))
            finally:
                report["traffic"] = clients.finish()
    report["shares"] = {f"{percent:g}": _summary(found) for percent, found in windows.items()}
    report["raw"] = {f"{percent:g}": found for percent, found in windows.items()}
    document = json.dumps(report, indent=2, default=str)
    print(document)
    print(render_table(report))
    if args.json:
        args.json.write_text(document)
    return 0


def render_table(report: dict[str, Any]) -> str:
    shares = report.get("shares", {})
    groups = sorted({g for share in shares.values() for g in share["cores"]})
    lines = [f"\ncapture cost, no canary live, {report['rps']:.0f} requests/s REST+gRPC, "
             f"{report['rounds']} x {report['seconds']:g} s per share (cores = CPU seconds / wall seconds)",
             f"{'mirror %':<10}" + "".join(f"{g:>12}" for g in groups) + f"{'total':>9}{'vs floor':>10}"
             f"{'captured/s':>12}{'dropped':>9}"]
    floor = shares.get("0", {}).get("cores_total")
    for name, share in sorted(shares.items(), key=lambda item: float(item[0])):
        extra = "-" if floor is None else f"+{share['cores_total'] - floor:.2f}"
        lines.append(f"{name:<10}" + "".join(f"{share['cores'].get(g, 0.0):>12.3f}" for g in groups)
                     + f"{share['cores_total']:>9.2f}{extra:>10}{share['captured_per_s']:>12}{share['dropped']:>9}")
    lines.append("(floor: mirror 0 %, the same traffic with nothing captured)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
