"""``python -m pipeline <command>``: the same functions the DAGs call, for people and scripts.

Every command prints its result (``--json`` for machines) and exits 0; a pipeline error (or a path that is not
there) prints one line saying what went wrong and what to do, and exits 2; anything unexpected prints one line and
exits 1 (``-v`` shows its traceback). Each command imports what it needs when it runs, so
that ``pipeline rollback`` never waits for TensorFlow or Great Expectations to load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import FAULTS, list_models
from pipeline.errors import PipelineError
from pipeline.flow import run_release
from pipeline.settings import get_paths
from pipeline.steps import resolve_config
from pipeline.wire.grpc_io import prefer_classic_io

_EXIT_ERROR = 2
_EXIT_UNEXPECTED = 1
Command = Callable[[argparse.Namespace], Any]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Register a sub-command handler."""
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn
    return register


def _config(args: argparse.Namespace):
    overrides = dict(_parse_set(item) for item in (args.set or []))
    return resolve_config(args.model, args.config, overrides)


def _parse_set(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise PipelineError(f"--set expects FIELD=VALUE (e.g. train.epochs=3), got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _paths(args: argparse.Namespace):
    return get_paths(getattr(args, "home", None))


@command("data")
def _data(args: argparse.Namespace) -> Any:
    from pipeline.steps import prepare_data

    return prepare_data(_config(args), _paths(args))


@command("validate")
def _validate(args: argparse.Namespace) -> Any:
    from pipeline.steps import prepare_data, validate_data

    config = _config(args)
    snapshot = args.snapshot or prepare_data(config, _paths(args))["snapshot"]
    return validate_data(config, snapshot)


@command("train")
def _train(args: argparse.Namespace) -> Any:
    from pipeline.steps import prepare_data, train

    config = _config(args)
    snapshot = args.snapshot or prepare_data(config, _paths(args))["snapshot"]
    return train(config, snapshot, fault=args.fault, paths=_paths(args))


@command("build")
def _build(args: argparse.Namespace) -> Any:
    from pipeline.steps import build

    def progress(stage: str, seconds: float) -> None:
        print(f"  {stage:<9} {seconds:7.2f} s", file=sys.stderr)

    result = build(_config(args), model_base_path=args.model_base_path, fault=args.fault, paths=_paths(args),
                   on_stage=progress)
    return result if args.json else result["path"]


@command("release")
def _release(args: argparse.Namespace) -> Any:
    def progress(task: str, seconds: float) -> None:
        print(f"  {task:<17} {seconds:7.2f} s", file=sys.stderr)

    return run_release(args.model, _parse_conf(args.conf), on_task=progress)


def _parse_conf(raw: str | None) -> dict[str, Any]:
    """``--conf``: a JSON object (checked against the DAG's Params schema by the release's first step)."""
    if not raw:
        return {}
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"--conf is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                            "give a JSON object, e.g. '{\"epochs\": 3}'") from None
    if not isinstance(conf, dict):
        raise PipelineError("--conf must be a JSON object, e.g. '{\"epochs\": 3}'")
    return conf


def _release_context(model: str):
    from pipeline.release.context import Release
    return Release(resolve_config(model))


@command("rollback")
def _rollback(args: argparse.Namespace) -> Any:
    from pipeline.release.rollback import rollback

    return rollback(_release_context(args.model), args.to, reason=args.reason)


@command("recover")
def _recover(args: argparse.Namespace) -> Any:
    from pipeline.release.reconcile import reconcile
    from pipeline.util.ids import unique_run_id

    result = reconcile(_release_context(args.model), unique_run_id("recover"), reason="pipeline recover (CLI)",
                       force=args.force)
    return result if args.json else _describe_reconcile(result)


def _describe_reconcile(result: dict[str, Any]) -> str:
    model = result["model"]
    lock = f"lock: was held by {result['lock']}" if result.get("lock") else "lock: free"
    if not result["reconciled"]:
        return (f"{model}: nothing done: {result['skipped']}.\n  `pipeline rollback {model}` preempts a release "
                f"at once; `pipeline recover {model} --force` reconciles anyway (the release stops at its next step)")
    done = "\n".join(f"  {action}" for action in result["actions"]) or "  nothing to undo: no canary left serving"
    freed = "; taken over and freed" if result.get("lock") else ""
    return f"{model}: reconciled production with the registry\n{done}\n  {lock}{freed}"


@command("registry")
def _registry(args: argparse.Namespace) -> Any:
    from pipeline.release.registry import Registry

    paths = get_paths()
    if not args.adopt:
        registry = Registry()  # guarded: refused, naming --adopt, when released versions are on disk
        registry.ensure_schema()
        return f"registry ready: {registry.where}"
    from pipeline.release.adopt import adopt_versions
    from pipeline.release.context import Release

    registry = Registry(guard=False)  # explicit: created even beside versions on disk, then they are adopted
    registry.ensure_schema()
    adopted = {model: adopt_versions(Release(resolve_config(model), paths=paths, registry=registry))
               for model in list_models()}
    if args.json:
        return adopted
    lines = [f"registry ready: {registry.where}"]
    for model, versions in adopted.items():
        lines.append(f"  {model}: " + (", ".join(f"{v['version']} {v['state']} ({v['why']})" for v in versions)
                                       or "nothing new on disk"))
    return "\n".join(lines)


@command("status")
def _status(args: argparse.Namespace) -> Any:
    from pipeline.release.status import format_status, model_status

    statuses = [model_status(_release_context(m)) for m in ([args.model] if args.model else list_models())]
    if args.json:
        return statuses
    return "\n\n".join(format_status(s) for s in statuses)


@command("ingest")
def _ingest(args: argparse.Namespace) -> Any:
    from pipeline.data.landing import ingest_file, ingest_live_labels

    if bool(args.path) == bool(args.live):
        raise PipelineError("give a file to ingest, or --live for the labelled live requests (not both)")
    if args.live:
        result = ingest_live_labels(args.model, paths=_paths(args))
    else:
        result = ingest_file(args.model, args.path, paths=_paths(args), file_format=args.format)
    return result.as_dict() if args.json else result.describe()


@command("monitor")
def _monitor(args: argparse.Namespace) -> Any:
    from pipeline.monitoring.monitor import DriftAlarm, run_monitor
    from pipeline.release.registry import Registry
    from pipeline.util.ids import unique_run_id

    config, paths = _config(args), _paths(args)
    registry = Registry(paths.registry_url, models_dir=paths.models_dir)
    outcome = run_monitor(config, unique_run_id("monitor"), registry, paths, expectations=not args.no_gx)
    if outcome.alarm:  # exit 2 with the reasons: what a cron job or a script watches for
        raise DriftAlarm(outcome.run.summary)
    if args.json:
        return outcome.as_dict()
    return "\n".join([outcome.run.summary, f"  report: {paths.home / outcome.run.report}" if outcome.run.report
                      else "  no report"])


@command("feedback")
def _feedback(args: argparse.Namespace) -> Any:
    from pipeline.live.feedback import DEFAULT_FEEDBACK_WINDOW_S, ingest_feedback_file

    window_s = DEFAULT_FEEDBACK_WINDOW_S if args.window_s is None else args.window_s
    if window_s <= 0:
        raise PipelineError(f"--window-s must be positive, got {args.window_s:g}")
    summary = ingest_feedback_file(args.model, args.file, paths=_paths(args), window_s=window_s, source=args.source)
    return summary.as_dict() if args.json else summary.describe()


@command("traffic")
def _traffic(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from pipeline.config import load_model_config
    from pipeline.live.traffic import APIS, TrafficSpec, check_endpoints, configured_endpoints, run_traffic
    from pipeline.release.registry import Registry
    from pipeline.util.signals import stop_on_signals

    apis = APIS if args.api == "both" else (args.api,)
    rest_url, grpc_target = args.endpoint_rest, args.endpoint_grpc
    feedback_url = None if args.no_feedback else args.feedback_url
    if ("rest" in apis and not rest_url) or ("grpc" in apis and not grpc_target) or \
            (not args.no_feedback and not feedback_url):
        from pipeline.live.endpoints import live_endpoints

        defaults = live_endpoints()  # only for what was left out: it needs the profile's traffic: section
        rest_url, grpc_target = rest_url or defaults.rest_url, grpc_target or defaults.grpc_target
        feedback_url = None if args.no_feedback else feedback_url or defaults.capture_url
    spec = TrafficSpec(args.model, rest_url=rest_url, grpc_target=grpc_target, feedback_url=feedback_url,
                       rps=args.rps, duration_s=args.duration, apis=apis,
                       label_delay_s=args.label_delay, label_share=args.label_share, signature_name=args.signature,
                       seed=args.seed, max_in_flight=args.max_in_flight, timeout_s=args.timeout,
                       shift=args.shift, shift_share=args.shift_share, shift_pool=args.shift_pool)
    check_endpoints(spec, configured_endpoints())  # before anything is read or sent
    load_model_config(args.model)  # an unknown model fails here, naming the known ones
    paths = _paths(args)
    registry = Registry(paths.registry_url, models_dir=paths.models_dir)
    spec = replace(spec, stable_version=registry.stable_version(args.model))
    with stop_on_signals() as stop:  # SIGTERM/SIGINT end the run early; the report still prints (the demo stops it)
        report = run_traffic(spec, paths=paths, stop=stop)
    return report.as_dict() if args.json else "\n".join(report.summary_lines())


@command("up")
def _up(args: argparse.Namespace) -> Any:
    from pipeline import stack

    return stack.up()


@command("down")
def _down(args: argparse.Namespace) -> Any:
    from pipeline import stack

    stack.down()
    return "stopped Airflow, the live traffic path (if any) and the TF Serving instances"


@command("capture-serve")
def _capture_serve(args: argparse.Namespace) -> Any:
    from pipeline.live.services import serve_capture

    serve_capture(args.host, args.port, args.serving_url, args.model or (), stable_url=args.stable_url,
                  workers=args.workers)
    return "capture service stopped"


@command("demo")
def _demo(args: argparse.Namespace) -> Any:
    from pipeline import demo

    return demo.run_demo(skip_fault=args.skip_fault)


@command("demo-loop")
def _demo_loop(args: argparse.Namespace) -> Any:
    from pipeline import demo_loop

    return demo_loop.run_demo_loop()


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (configs/models/<model>.yaml)")
    parser.add_argument("--config", help="use this config file instead of configs/models/<model>.yaml")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--home", help="pipeline home (default $PIPELINE_HOME or <repo>/var)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_model_args(sub.add_parser("data", help="fetch, verify and prepare a data snapshot"))
    for name, text in (("validate", "validate a data snapshot with Great Expectations"),
                       ("train", "train on a snapshot and write the run's artifacts")):
        p = sub.add_parser(name, help=text)
        _add_model_args(p)
        p.add_argument("--snapshot", help="snapshot directory (default: prepare one)")
        if name == "train":
            p.add_argument("--fault", choices=FAULTS, help="inject a fault (only where config allows)")
    p = sub.add_parser("build", help="prepare -> validate -> train -> evaluate -> export; prints the version path")
    _add_model_args(p)
    p.add_argument("--model-base-path", help="export under this directory (default <home>/models/<model>)")
    p.add_argument("--fault", choices=FAULTS, help="inject a fault (only where config allows)")
    p = sub.add_parser("release", help="run a whole release in this process (the DAG's tasks, in order)")
    p.add_argument("model")
    p.add_argument("--conf", help="trigger conf as JSON, as for `airflow dags trigger --conf`")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("rollback", help="on-call: make a known-good version stable on production now")
    p.add_argument("model")
    p.add_argument("--to", type=int, help="version to roll back to (default: the last good one before stable)")
    p.add_argument("--reason", default="on-call rollback (CLI)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("recover", help="on-call: roll back a canary a dead release left serving and free its lock "
                                       "(what every release and the monitor do first)")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="even when the lock's holder looks alive or cannot be "
                                                        "judged: its lock is preempted and a release stops")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("registry", help="create the registry; --adopt registers the versions on disk again")
    registry_sub = p.add_subparsers(dest="registry_command", required=True)
    p = registry_sub.add_parser("init", help="create the registry's tables (refused beside released versions "
                                             "unless --adopt)")
    p.add_argument("--adopt", action="store_true", help="register every version on disk, in the state the disk and "
                                                        "the servers prove (a lost registry without a backup)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="versions on disk, what each server serves, labels, registry history")
    p.add_argument("model", nargs="?")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("ingest", help="add new labelled examples as a new data version (a file, or the live "
                                      "requests whose labels came back) and announce it on <model>_raw_data")
    p.add_argument("model", help="model name (its config gives the class names and the retrain threshold)")
    p.add_argument("path", nargs="?", help=".npz (x, y) for image models; .csv (text,label) or .jsonl for text ones")
    p.add_argument("--live", action="store_true", help="ingest the captured live requests that have a label")
    p.add_argument("--format", choices=("npz", "csv", "jsonl"), help="the file's format (default: its suffix)")
    p.add_argument("--home", help="pipeline home (default $PIPELINE_HOME or <repo>/var)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = sub.add_parser("monitor", help="judge the live traffic captured since the last monitor run for drift and "
                                       "accuracy (what canary_monitor's drift task does); exits 2 on an alarm")
    _add_model_args(p)
    p.add_argument("--no-gx", action="store_true", help="skip the Great Expectations suite (the tests still run)")
    p = sub.add_parser("feedback", help="delayed true labels of captured requests, by request id (JSONL or CSV)")
    p.add_argument("model", help="model name (its config gives the class names)")
    p.add_argument("file", help='lines {"request_id": ..., "label": ...} or request_id,label (a class index or '
                                "name); - reads stdin")
    p.add_argument("--window-s", type=float, help="labels for requests captured longer ago are refused as late "
                                                  "(default: 7 days)")
    p.add_argument("--source", help="recorded with each label (default: file:<name>)")
    p.add_argument("--home", help="pipeline home (default $PIPELINE_HOME or <repo>/var)")
    p.add_argument("--json", action="store_true", help="print the counts and every problem as JSON")
    p = sub.add_parser("traffic", help="replay held-out examples through the production endpoint at a steady rate, "
                                       "their true labels as delayed feedback")
    p.add_argument("model", help="model name (its newest or stable-version data snapshot gives the examples)")
    p.add_argument("--rps", type=float, required=True, help="requests per second (at most 500)")
    p.add_argument("--duration", type=float, required=True, help="seconds of traffic (at most 3600)")
    p.add_argument("--api", choices=("rest", "grpc", "both"), default="both", help="both alternates (default)")
    p.add_argument("--label-delay", type=float, default=2.0, help="seconds from an answer to its label (default 2)")
    p.add_argument("--label-share", type=float, default=1.0, help="share of answers whose label is sent (default 1)")
    p.add_argument("--no-feedback", action="store_true", help="send no labels")
    p.add_argument("--endpoint-rest", metavar="URL", help="default: the serving profile's production endpoint")
    p.add_argument("--endpoint-grpc", metavar="HOST:PORT", help="default: the serving profile's production endpoint")
    p.add_argument("--feedback-url", metavar="URL", help="default: the serving profile's capture service")
    p.add_argument("--signature", default="serving_default", help="the signature asked (default serving_default)")
    p.add_argument("--seed", type=int, default=0, help="the shuffle of the examples (default 0)")
    p.add_argument("--max-in-flight", type=int, default=16, help="requests in flight at most (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="each request's deadline in seconds (default 10)")
    p.add_argument("--shift", help="send a share of the digits shifted, as from a new scanner "
                                   "(pipeline.monitoring.shifts: thicken, translate, faint); labels kept")
    p.add_argument("--shift-share", type=float, default=0.2, help="share of the examples shifted (default 0.2)")
    p.add_argument("--shift-pool", choices=("test", "snapshot"), default="test",
                   help="test: shift a share of the test split and cycle through it (default); snapshot: a new "
                        "scanner's stream from every split of the snapshot, no digit twice per cycle")
    p.add_argument("--home", help="pipeline home (default $PIPELINE_HOME or <repo>/var)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("up", help="start the embedded staging/production servers and Airflow standalone")
    sub.add_parser("down", help="stop Airflow and both servers (the whole process groups)")
    p = sub.add_parser("demo", help="the main job: the MNIST release through Airflow, then a failing canary")
    p.add_argument("--skip-fault", action="store_true", help="only the good release")
    sub.add_parser("demo-loop", help="the closed loop: live drift, the alarm, labelled data in, a retrain Airflow "
                                     "starts by itself, the live canary, live accuracy back")
    sub.add_parser("serve", help="run the embedded TF-Serving-compatible server (tensorflow_model_server flags)",
                   add_help=False)
    p = sub.add_parser("capture-serve", help="run the capture service (the proxy's mirror target, POST /feedback) "
                                             "in the foreground; `pipeline up` runs it under supervisord")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8701)
    p.add_argument("--serving-url", required=True, help="the canary instance's REST API (labels stable, canary)")
    p.add_argument("--model", action="append", help="a captured model (repeatable; default: every configured one)")
    p.add_argument("--stable-url", help="production's REST API: stable's answer when the canary instance has none "
                                        "(no live canary: the monitor's mirrored window)")
    p.add_argument("--workers", type=int, default=1, help="threads asking the versions (default 1: arrival order)")
    return parser


def _print(result: Any, as_json: bool) -> None:
    if isinstance(result, str) and not as_json:
        print(result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))


def _configure_logging(verbose: bool) -> None:
    """Our INFO lines; TensorFlow's C++ chatter and GX's registration notes only when debugging."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if not verbose else "0")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("great_expectations", "tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipeline`` console script."""
    prefer_classic_io()  # before any command loads grpc (see pipeline.wire.grpc_io)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the server parses tensorflow_model_server's own flags
        from pipeline.embedded_server import main as serve

        return serve(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _print(_COMMANDS[args.command](args), getattr(args, "json", False))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except OSError as exc:  # a path that is not there, not readable, not a directory: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return _EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - unexpected: one line; the traceback with -v
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {_first_line(exc)} (run with -v for the traceback)",
              file=sys.stderr)
        return _EXIT_UNEXPECTED
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
