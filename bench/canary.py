"""Live canary benchmark: the real path end to end, with live traffic through nginx.

The stack's live path as ``pipeline up`` starts it (:func:`pipeline.live.services.start_live_path`: production and
canary embedded TF Serving, nginx in front, the capture service under supervisord) in a temporary home with free
ports, the MNIST model of ``--model-base-path`` as stable, and ``pipeline traffic``'s client
(:func:`pipeline.live.traffic.run_traffic`, REST and gRPC, unlabeled, true labels sent back after 2 s) at
``--rps`` the whole time. Then:

* **good**: a copy of stable as candidate walks promote -> shadow -> 5 -> 25 -> 50 % -> finalize, as the release
  DAG's tasks do (:mod:`pipeline.release.live_canary`): each phase's duration, the whole live part;
* **bad** (``--bad-runs`` times): a candidate whose input convention silently changed (stable wrapped to expect
  0..255 pixels while clients send pixels / 255; built here in seconds, the demo trains a real one) is promoted
  and judged in shadow: from the first live request the canary answered (its capture) to the rollback done (split
  0 and the candidate unloaded), against the floor: the fewest paired requests the agreement SPRT needs at the
  disagreement seen, at ``rps * mirror_share`` paired requests a second, plus one split change;
* every client request through all of it: failed ones (target 0), and the answers' request ids.

The 20 good / 20 bad candidates on simulated streams are ``bench/canary_analysis.py`` (``make bench`` runs both).
Prints a JSON document, then a table. Everything started is stopped.

Usage::

    .venv/bin/python bench/canary.py [--model-base-path var/models/mnist] [--rps 50] [--bad-runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.wire.grpc_io import prefer_classic_io  # noqa: E402 - after the path insert

_MODEL = "mnist"
_TARGET_DETECTION_S = 30.0
_INSTANCES = ("staging", "production", "canary")


def _find_stable(model_base_path: Path, home: Path) -> Path:
    """The home's stable version (its registry's), else the newest version on disk (a rolled-back one is no stable)."""
    from pipeline.release.registry import Registry

    registry = home / "registry.db"
    stable = Registry(f"sqlite:///{registry}").stable_version(_MODEL) if registry.is_file() else None
    if stable is not None and (model_base_path / str(stable) / "saved_model.pb").is_file():
        return model_base_path / str(stable)
    from pipeline.wire.version_dirs import is_version_name  # not str.isdigit(): '²' is a digit
    versions = [p for p in model_base_path.iterdir() if is_version_name(p.name) and (p / "saved_model.pb").is_file()]
    if not versions:
        raise SystemExit(f"no SavedModel under {model_base_path}: run `make demo` or `pipeline build mnist` first")
    return max(versions, key=lambda p: int(p.name))


def _write_world(root: Path, repo: Path) -> None:
    """A config dir with the repo's model configs and proxy template, and a profile on free ports."""
    from pipeline.util.net import free_ports

    shutil.copytree(repo / "configs", root / "configs")
    rest, grpc, capture, prometheus = free_ports(4)
    profile = {
        "instances": {name: {"backend": "local", "rest_port": 0, "grpc_port": 0,
                             "extra_args": ["--tensorflow_intra_op_parallelism=1"]} for name in _INSTANCES},
        "traffic": {"router": "nginx", "host": "127.0.0.1", "rest_port": rest, "grpc_port": grpc,
                    "capture_port": capture, "prometheus_port": prometheus},
    }
    (root / "configs" / "serving" / "embedded.yaml").write_text(yaml.safe_dump(profile))
    os.environ.update({"PIPELINE_HOME": str(root / "home"), "PIPELINE_CONFIG_DIR": str(root / "configs"),
                       "PIPELINE_SERVING_PROFILE": "embedded"})
    os.environ.pop("PIPELINE_REGISTRY_URL", None)


def _input_convention_candidate(stable_dir: Path, target: Path) -> None:
    """Stable's graph behind ``images / 255``: a model that expects 0..255 pixels, as a retrained one would."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(stable_dir))
    serve = loaded.signatures["serving_default"]
    input_name = next(iter(serve.structured_input_signature[1]))

    class RawPixels(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = loaded

        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return serve(**{input_name: images / 255.0})

    module = RawPixels()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    shutil.copytree(stable_dir / "assets.extra", target / "assets.extra", dirs_exist_ok=True)


def _install_versions(paths: Any, stable_dir: Path, repo_home: Path, bad_runs: int) -> dict[str, list[int]]:
    """Version 1 = stable, 2 = a copy (good), 3.. = input-convention candidates; registered as the DAG leaves them."""
    from pipeline.release.registry import Registry, State
    from pipeline.wire.version_dirs import read_metadata

    base = paths.model_base_path(_MODEL)
    base.mkdir(parents=True)
    shutil.copytree(stable_dir, base / "1")
    shutil.copytree(stable_dir, base / "2")
    bad = list(range(3, 3 + bad_runs))
    if bad:
        _input_convention_candidate(stable_dir, base / str(bad[0]))
    for version in bad[1:]:
        shutil.copytree(base / str(bad[0]), base / str(version))
    sha = read_metadata(base / "1")["data_snapshot_sha256"]
    shutil.copytree(repo_home / "data" / _MODEL / sha, paths.data_dir / _MODEL / sha)
    registry = Registry(paths.registry_url, guard=False)  # registers versions copied in on purpose (a released one)
    for version in [1, 2, *bad]:
        registry.register_version(_MODEL, version, {"data_sha256": sha, "airflow_run_id": f"bench-{version}",
                                                    "training_run_id": f"bench-{version}", "params": {},
                                                    "metrics": {}, "export_path": str(base / str(version))})
        states = [State.STAGED, State.VALIDATED] + ([State.CANARY, State.PROMOTED] if version == 1 else [])
        for state in states:
            registry.transition(_MODEL, version, state, run_id="bench", reason="bench set-up")
    return {"good": [2], "bad": bad}


@contextlib.contextmanager
def running_live_path(paths: Any) -> Iterator[None]:
    """The stack's live path in the temporary home while the block runs; everything started is stopped after."""
    from pipeline.live.services import start_live_path, stop_live_path
    from pipeline.serving.backends import get_backend

    try:
        start_live_path(paths)
        yield
    finally:
        stop_live_path(paths)
        for name in _INSTANCES:
            get_backend(name, paths=paths).stop()


class Clients:
    """``pipeline traffic``'s client in the background until stopped."""

    def __init__(self, rps: float):
        from pipeline.live.endpoints import live_endpoints
        from pipeline.live.traffic import TrafficSpec

        endpoints = live_endpoints()
        self.spec = TrafficSpec(model=_MODEL, rest_url=endpoints.rest_url, grpc_target=endpoints.grpc_target,
                                feedback_url=endpoints.capture_url, rps=rps, duration_s=3600, stable_version=1)
        self.stop = threading.Event()
        self.report: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from pipeline.live.traffic import run_traffic

        self.report = run_traffic(self.spec, stop=self.stop)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join(timeout=180)
        return self.report.as_dict() if self.report is not None else {"error": "the traffic thread did not finish"}


def _walk(release: Any, version: int, run_id: str) -> list[dict[str, Any]]:
    from pipeline.live.phases import live_phases
    from pipeline.release import live_canary

    phases = []
    for phase in live_phases(release.config.canary):
        started = time.perf_counter()
        while True:
            look = live_canary.watch_phase(release, version, run_id, phase, budget_s=5.0)
            if look.analysis.decision == "pass":
                break
        phases.append({"phase": phase.name, "seconds": round(time.perf_counter() - started, 2),
                       "paired": look.analysis.paired.requests, "canary_served": look.analysis.canary.served,
                       "agreement": look.analysis.paired.agreement})
    return phases


def run_good(release: Any, version: int) -> dict[str, Any]:
    from pipeline.release import live_canary

    started = time.perf_counter()
    live_canary.promote_live(release, version, f"bench-good-{version}")
    promoted = time.perf_counter()
    phases = _walk(release, version, f"bench-good-{version}")
    walked = time.perf_counter()
    live_canary.finalize_live(release, version, f"bench-good-{version}")
    done = time.perf_counter()
    return {"promote_s": round(promoted - started, 2), "phases": phases, "finalize_s": round(done - walked, 2),
            "live_total_s": round(done - started, 2)}


def run_bad(release: Any, version: int, rps: float) -> dict[str, Any]:
    from pipeline.errors import ValidationFailed
    from pipeline.live.analysis import agreement_design
    from pipeline.live.phases import live_phases
    from pipeline.live.store import captured
    from pipeline.release import live_canary

    run_id = f"bench-bad-{version}"
    live_canary.promote_live(release, version, run_id)
    shadow = live_phases(release.config.canary)[0]
    caught = None
    try:
        while live_canary.watch_phase(release, version, run_id, shadow, budget_s=5.0).analysis.decision != "pass":
            pass
        live_canary.rollback_live(release, version, run_id, ["bench: a bad candidate passed shadow (a miss)"])
    except ValidationFailed as exc:
        caught = str(exc)
    done = time.time()
    (record,) = release.registry.live_phases(_MODEL, run_id=run_id)
    window = captured(_MODEL, since=record.started_at.timestamp(), until=done, paths=release.paths)
    first = min((c.received_at for c in window), default=None)
    config = release.config.canary
    disagreement = 1 - (record.figures["paired"]["agreement"] or 0)
    design = agreement_design(config)
    per_request = design.drift(disagreement)  # what one paired request adds to the log likelihood ratio
    needed = max(1, math.ceil(design.log_upper / per_request)) if per_request > 0 else None
    paired_rps = rps * config.mirror_share
    return {
        "version": version, "caught": caught is not None, "decision": record.decision,
        "first_bad_to_rollback_done_s": None if first is None else round(done - first, 2),
        "phase_s": round(done - record.started_at.timestamp(), 2),
        "paired": record.figures["paired"]["requests"], "disagreement": round(disagreement, 3),
        "floor_paired": needed, "floor_s": None if needed is None else round(needed / paired_rps, 2),
        "reason": (caught or "")[:300],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", type=Path, default=Path("var/models/mnist"))
    parser.add_argument("--home", type=Path, default=Path("var"), help="the home holding the stable's data snapshot")
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--bad-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops what was started (finally)
    prefer_classic_io()
    repo = Path(__file__).resolve().parent.parent
    home = args.home.resolve()
    stable_dir = _find_stable(args.model_base_path.resolve(), home)
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        root = Path(tmp)
        _write_world(root, repo)
        from pipeline.release.context import Release
        from pipeline.release.production import STABLE, change_production
        from pipeline.settings import get_paths
        from pipeline.steps import resolve_config

        paths = get_paths()
        versions = _install_versions(paths, stable_dir, home, args.bad_runs)
        release = Release(resolve_config(_MODEL), paths=paths)
        report: dict[str, Any] = {"bench": "canary", "rps": args.rps, "config": release.config.canary.model_dump(),
                                  "stable_source": str(stable_dir)}
        with running_live_path(paths):
            change_production(release, [1], {STABLE: 1})
            clients = Clients(args.rps)
            try:
                time.sleep(2)  # the clients reach their rate before the first phase's window opens
                report["good"] = run_good(release, versions["good"][0])
                report["bad"] = [run_bad(release, version, args.rps) for version in versions["bad"]]
            finally:
                report["traffic"] = clients.finish()
    report["targets"] = {"first_bad_to_rollback_done_s": _TARGET_DETECTION_S, "failed_client_requests": 0}
    document = json.dumps(report, indent=2, default=str)
    print(document)
    print(render_table(report))
    if args.json:
        args.json.write_text(document)
    return 0


def render_table(report: dict[str, Any]) -> str:
    lines = [f"\nlive canary, real path (nginx + capture + embedded TF Serving), {report['rps']:.0f} requests/s "
             f"REST+gRPC, mirror_share {report['config']['mirror_share']}"]
    good = report.get("good") or {}
    lines.append(f"{'good candidate':<28}{'seconds':>9}{'paired':>8}{'canary served':>15}{'agreement':>11}")
    lines.append(f"{'  promote':<28}{good.get('promote_s', '-'):>9}")
    for phase in good.get("phases", []):
        agreement = "-" if phase["agreement"] is None else f"{phase['agreement']:.3f}"
        lines.append(f"{'  ' + phase['phase']:<28}{phase['seconds']:>9}{phase['paired']:>8}"
                     f"{phase['canary_served']:>15}{agreement:>11}")
    lines.append(f"{'  finalize':<28}{good.get('finalize_s', '-'):>9}")
    lines.append(f"{'  live part in all':<28}{good.get('live_total_s', '-'):>9}")
    lines.append("")
    lines.append(f"{'bad candidate (input conv.)':<28}{'caught':>7}{'first bad->done s':>19}{'floor s':>9}"
                 f"{'paired':>8}{'floor paired':>14}{'target s':>10}")
    for bad in report.get("bad", []):
        lines.append(f"{'  version ' + str(bad['version']):<28}{str(bad['caught']):>7}"
                     f"{bad['first_bad_to_rollback_done_s']!s:>19}{bad['floor_s']!s:>9}{bad['paired']:>8}"
                     f"{bad['floor_paired']!s:>14}{_TARGET_DETECTION_S:>10}")
    traffic = report.get("traffic") or {}
    apis = traffic.get("apis") or []
    failed = sum(sum((api.get("failed") or {}).values()) for api in apis)
    sent = sum(api.get("sent", 0) for api in apis)
    lines.append("")
    lines.append(f"client requests: {sent} sent, {failed} failed (target 0) through promote, 4 split changes, "
                 f"finalize and {len(report.get('bad', []))} rollbacks")
    lines.append("(floor: the fewest paired requests the agreement SPRT needs at the disagreement seen, at rps x "
                 "mirror_share paired requests a second; the proxy's split change comes on top)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
