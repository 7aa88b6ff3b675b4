"""Closed-loop benchmark: drift onset -> alarm -> a retrain Airflow starts by itself -> the retrained version serving
all traffic, and live accuracy before the shift, at its worst and after the loop.

It runs the loop of ``make demo-loop`` (:func:`pipeline.demo_loop.run_loop`) on the embedded stack on its default
ports (started if needed; needs ``make data``; a stable MNIST version is released first when there is none), with
``--shift`` (default ``translate``) on 20 % of the requests, a new scanner's stream through every digit of the
snapshot (``--shift-pool snapshot``). The floors are measured in the same run: the
asset-triggered release run's own duration (start -> end in Airflow) and its training task's, beside
alarm -> serving; the monitor's window cadence beside onset -> alarm.

Live accuracy "after" is given twice: overall (the monitor's window on the new version), and on the shifted digits
the retrained version did NOT train on (their digests are not in its training split), from the capture store:
the shifted digits that came back labelled were trained on; the new scanner sends each digit once per cycle
(~10,000 digits, ~14 minutes at 60 requests/s), so nearly all shifted digits after the retrain are new to it.

Prints JSON, then a table beside the targets (onset -> serving <= 600 s; accuracy after within 1 point of before).
Usage: ``.venv/bin/python bench/loop.py [--shift translate|thicken|faint] [--json FILE]``; ``--report FILE``
renders the table of a loop already run (``var/live/loop-report.json``, written by every loop) without running one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.demo_loop import RECOVERED_WITHIN, SHIFT, run_loop  # noqa: E402 - after the path insert
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.settings import get_paths  # noqa: E402

_TARGET_ONSET_TO_SERVING_S = 600.0


def targets_met(figures: dict[str, Any]) -> bool:
    serving = figures.get("onset_to_serving_s")
    before, after = figures.get("accuracy_before"), figures.get("accuracy_after")
    return (serving is not None and serving <= _TARGET_ONSET_TO_SERVING_S and before is not None
            and after is not None and after >= before - RECOVERED_WITHIN)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) and value <= 1 else str(value)


def render_table(figures: dict[str, Any]) -> str:
    after = figures.get("after") or {}
    before = figures.get("before") or {}

    def group(groups: dict[str, Any], name: str) -> str:
        entry = groups.get(name) or {}
        return f"{_cell(entry.get('accuracy'))} (n={entry.get('n', 0)})"

    rows = [("drift onset -> alarm, s", figures.get("onset_to_alarm_s"),
             f"{figures.get('onset_to_alarm_windows')} window(s) of ~{figures.get('window_s')} s", "<= 2 windows"),
            ("alarm -> retrained version serving 100 %, s", figures.get("alarm_to_serving_s"),
             f"release run {figures.get('release_run_s')} s, training task {figures.get('train_task_s')} s", "-"),
            ("onset -> serving 100 %, s", figures.get("onset_to_serving_s"), "-",
             f"<= {_TARGET_ONSET_TO_SERVING_S:.0f}"),
            ("live accuracy before the shift", figures.get("accuracy_before"),
             f"capture store: {group(before, 'overall')}", "-"),
            ("live accuracy at its worst", figures.get("accuracy_worst"), "-", "-"),
            ("live accuracy after (overall)", figures.get("accuracy_after"),
             f"capture store: {group(after, 'overall')}", f"within {RECOVERED_WITHIN * 100:.0f} pt of before"),
            ("  after, unshifted digits", (after.get("unshifted") or {}).get("accuracy"), group(after, "unshifted"),
             "-"),
            ("  after, shifted, trained on", (after.get("shifted_seen") or {}).get("accuracy"),
             group(after, "shifted_seen"), "-"),
            ("  after, shifted, NOT trained on", (after.get("shifted_unseen") or {}).get("accuracy"),
             group(after, "shifted_unseen"), "(honest figure)")]
    lines = [f"closed loop: shift {figures.get('shift')} on {figures.get('shift_share')} of the digits, "
             f"{figures.get('traffic_rps')} requests/s; versions {figures.get('old_version')} -> "
             f"{figures.get('new_version')} (run {figures.get('release_run_id')}, {figures.get('release_state')}); "
             f"data {figures.get('data')}",
             f"{'figure':<46}{'value':>10}  {'floor / detail':<58}target"]
    lines += [f"{name:<46}{_cell(value):>10}  {detail:<58}{target}" for name, value, detail, target in rows]
    if figures.get("error"):
        lines.append(f"the loop did not close: {figures['error']}")
    lines.append(f"targets met: {targets_met(figures)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shift", default=SHIFT, help=f"the onset's shift (default {SHIFT})")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--report", type=Path, help="render a loop-report.json already written; run nothing")
    args = parser.parse_args(argv)
    if args.report is not None:
        figures = json.loads(args.report.read_text())
        print(f"(rendered from {args.report}; no loop was run)")
    else:
        try:
            figures = run_loop(shift=args.shift).as_dict()
        except PipelineError as exc:  # the loop did not close: its figures so far (written on the way out)
            figures = {**json.loads((get_paths().home / "live" / "loop-report.json").read_text()), "error": str(exc)}
    document = json.dumps(figures, indent=2)
    print(document)
    print(render_table(figures))
    if args.json is not None:
        args.json.write_text(document + "\n")
    return 0 if targets_met(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
