"""Live canary analysis benchmark: false rollbacks, misses and time to a decision on simulated live traffic.

Simulates ``--good`` good and ``--bad`` bad candidates (the bad ones of five kinds in turn: agreement 85 %,
accuracy 10 points down, class 3 answered as 5, 5 % errors, 3x latency) on ``--rps`` live requests per second,
through the live canary of the default config: the shadow phase (canary weight 0), then each weighted step
(5, 25, 50 %), ``mirror_share`` of the requests mirrored to the other version with both answers captured. Each
phase is analysed every ``poll_s`` of simulated time by :func:`pipeline.live.analysis.analyze` and stops at its
first decision; a fail or an undecided phase is a rollback. Half of the requests get their true label, 1-10 s
after the request (delayed feedback). Stable is right 98 % of the time (MNIST), fails 0.1 % of its requests and
answers in about 20 ms (log-normal).

A bad candidate is bad from its first live request, so its decision time is measured from the first request the
canary answered in the phase that failed (mirrored or served) to the poll that decided, in simulated seconds
and in live requests at ``--rps``. A second scenario starts the bad candidates straight at the first weighted
step, without the shadow phase, for the time a bad canary serves clients before it is caught (same seeds, so
the two scenarios differ only in routing).

Simulated time only (request counts at ``--rps``), seeded, no servers: runs in seconds. Prints JSON, then a
table next to the targets. Usage: ``.venv/bin/python bench/canary_analysis.py [--good 20] [--bad 20] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import LiveCanaryConfig  # noqa: E402 - after the path insert
from pipeline.live.analysis import Observation, Variant, analyze  # noqa: E402

_CLASS_NAMES = tuple(str(d) for d in range(10))
_STABLE_ACCURACY = 0.98
_STABLE_ERROR_RATE = 0.001
_MEDIAN_LATENCY_MS = 20.0
_LATENCY_SIGMA = 0.35
_LABEL_SHARE = 0.5
_LABEL_DELAY_S = (1.0, 10.0)
_DECISION_TARGET_S = 30.0  # the whole rollback, first bad live request to stable alone, at 50 requests/s
_TARGETS = {"false_rollbacks": 0, "misses": 0, "decision_max_s": f"well inside {_DECISION_TARGET_S:.0f}"}


@dataclass(frozen=True)
class Candidate:
    """A simulated canary: how it differs from stable, per request."""

    kind: str
    loses: float  # stable right, the canary wrong
    gains: float  # stable wrong, the canary right
    remap: tuple[int, int] | None = None  # the canary answers b wherever it would have answered a
    error_rate: float = _STABLE_ERROR_RATE
    latency_scale: float = 1.0

    @property
    def bad(self) -> bool:
        return self.kind != "good"


def good_candidates(count: int, rng: np.random.Generator) -> list[Candidate]:
    """Good candidates: each agrees 97.5-99 % with stable, as accurate, as reliable, as fast."""
    return [Candidate("good", d / 2, d / 2) for d in rng.uniform(0.01, 0.025, count)]


def bad_candidates(count: int) -> list[Candidate]:
    """Bad candidates, the five kinds in turn."""
    kinds = [
        Candidate("agreement_85", 0.13, 0.02),
        Candidate("accuracy_-10pts", 0.10, 0.0),
        Candidate("class_3_as_5", 0.01, 0.01, remap=(3, 5)),
        Candidate("errors_5pct", 0.01, 0.01, error_rate=0.05),
        Candidate("latency_3x", 0.01, 0.01, latency_scale=3.0),
    ]  # fmt: skip
    return [kinds[i % len(kinds)] for i in range(count)]


class PhaseTraffic:
    """One phase's live requests at ``rps`` for up to ``bake_s``: answers, routing, mirroring, feedback."""

    def __init__(self, candidate: Candidate, canary_share: float, config: LiveCanaryConfig, rps: float,
                 rng: np.random.Generator) -> None:  # fmt: skip
        n = int(config.bake_s * rps)
        truth = rng.integers(0, 10, n)
        stable_right = rng.random(n) < _STABLE_ACCURACY
        stable = np.where(stable_right, truth, (truth + rng.integers(1, 10, n)) % 10)
        canary, draw = stable.copy(), rng.random(n)
        loses = stable_right & (draw < candidate.loses / _STABLE_ACCURACY)
        canary[loses] = (truth[loses] + rng.integers(1, 10, int(loses.sum()))) % 10
        gains = ~stable_right & (draw < candidate.gains / (1 - _STABLE_ACCURACY))
        canary[gains] = truth[gains]
        if candidate.remap is not None:
            canary[canary == candidate.remap[0]] = candidate.remap[1]
        self.rps, self.truth = rps, truth
        self.classes = {"stable": stable, "canary": canary}
        self.ok = {"stable": rng.random(n) >= _STABLE_ERROR_RATE, "canary": rng.random(n) >= candidate.error_rate}
        latency = _MEDIAN_LATENCY_MS * np.exp(rng.normal(0, _LATENCY_SIGMA, (2, n)))
        self.latency = {"stable": latency[0], "canary": latency[1] * candidate.latency_scale}
        self.served_by_canary = rng.random(n) < canary_share
        self.mirrored = rng.random(n) < config.mirror_share
        labelled = rng.random(n) < _LABEL_SHARE
        self.label_at_s = np.where(labelled, np.arange(n) / rps + rng.uniform(*_LABEL_DELAY_S, n), np.inf)
        self.first_canary_s = float(np.argmax(self.served_by_canary | self.mirrored) / rps)
        self._plain: dict[int, Observation] = {}
        self._labelled: dict[int, Observation] = {}

    def window(self, elapsed_s: float) -> list[Observation]:
        """The requests made by ``elapsed_s``, with the labels that have arrived by then."""
        count = min(len(self.truth), int(elapsed_s * self.rps))
        return [self._observation(i, bool(self.label_at_s[i] <= elapsed_s)) for i in range(count)]

    def _observation(self, i: int, with_label: bool) -> Observation:
        cache = self._labelled if with_label else self._plain
        if i not in cache:
            served: Variant = "canary" if self.served_by_canary[i] else "stable"
            other: Variant = "stable" if served == "canary" else "canary"
            classes = {v: int(self.classes[v][i]) if self.ok[v][i] else None for v in ("stable", "canary")}
            mirrored = bool(self.mirrored[i])
            cache[i] = Observation(
                request_id=f"r{i}", variant=served, ok=bool(self.ok[served][i]),
                latency_ms=float(self.latency[served][i]), predicted_class=classes[served],
                stable_class=classes["stable"] if mirrored or served == "stable" else None,
                canary_class=classes["canary"] if mirrored or served == "canary" else None,
                label=int(self.truth[i]) if with_label else None,
                mirror_ok=bool(self.ok[other][i]) if mirrored else None,
                mirror_latency_ms=float(self.latency[other][i]) if mirrored else None,
            )  # fmt: skip
        return cache[i]


def run_phase(candidate: Candidate, phase: str, canary_share: float, config: LiveCanaryConfig, rps: float,
              rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """Poll one phase's analysis until it decides; the decision, when, and why."""
    traffic = PhaseTraffic(candidate, canary_share, config, rps, rng)
    elapsed = 0.0
    while True:
        elapsed = min(elapsed + config.poll_s, config.bake_s)
        analysis = analyze(traffic.window(elapsed), config, phase=phase, elapsed_s=elapsed, class_names=_CLASS_NAMES)
        if analysis.decided:
            since_first = elapsed - traffic.first_canary_s
            return {"phase": phase, "decision": analysis.decision, "decided_at_s": elapsed,
                    "since_first_canary_answer_s": round(since_first, 2), "requests": int(round(since_first * rps)),
                    "paired": analysis.paired.requests, "reasons": list(analysis.reasons),
                    "failed_checks": [c.name for c in analysis.checks if c.passed is False and c.name != "paired_requests"]}  # fmt: skip


def run_candidate(candidate: Candidate, config: LiveCanaryConfig, rps: float, seed: int,
                  with_shadow: bool = True) -> dict[str, Any]:  # fmt: skip
    """The whole live canary for one candidate: its phases in order until one does not pass."""
    rng = np.random.default_rng(seed)
    phases = ([("shadow", 0.0)] if with_shadow else []) + [(f"{s}%", s / 100) for s in config.steps]
    results = []
    for phase, share in phases:
        results.append(run_phase(candidate, phase, share, config, rps, rng))
        if results[-1]["decision"] != "pass":
            break
    promoted = results[-1]["decision"] == "pass"
    return {"kind": candidate.kind, "seed": seed, "promoted": promoted, "phases": results,
            "decided": None if promoted else results[-1]}  # fmt: skip


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
        "max": round(max(values), 2),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """False rollbacks, misses, and decision times of the caught ones, per kind and overall."""
    good = [r for r in runs if r["kind"] == "good"]
    bad = [r for r in runs if r["kind"] != "good"]
    caught = [r["decided"] for r in bad if not r["promoted"]]
    by_kind = {}
    for kind in dict.fromkeys(r["kind"] for r in runs):
        mine = [r for r in runs if r["kind"] == kind]
        decided = [r["decided"] for r in mine if not r["promoted"]]
        by_kind[kind] = {
            "candidates": len(mine), "promoted": sum(r["promoted"] for r in mine),
            "failed_in": sorted({d["phase"] for d in decided}),
            "decision_s": _spread([d["since_first_canary_answer_s"] for d in decided]),
            "decision_requests": _spread([d["requests"] for d in decided]),
            "failed_checks": sorted({n for d in decided for n in d["failed_checks"] or [d["decision"]]}),
        }  # fmt: skip
    good_phase_s = [p["decided_at_s"] for r in good for p in r["phases"]]
    return {
        "good": len(good), "bad": len(bad),
        "false_rollbacks": sum(not r["promoted"] for r in good), "misses": sum(r["promoted"] for r in bad),
        "decision_s": _spread([d["since_first_canary_answer_s"] for d in caught]),
        "decision_requests": _spread([d["requests"] for d in caught]),
        "good_phase_s": _spread(good_phase_s), "by_kind": by_kind,
    }  # fmt: skip


def _pair(spread: dict[str, float | None]) -> str:
    return "-" if spread["p50"] is None else f"{spread['p50']:.4g}/{spread['p95']:.4g}/{spread['max']:.4g}"


def render_table(report: dict[str, Any]) -> str:
    """The summaries as a table, next to the targets."""
    rps = report["rps"]
    lines = [f"\nlive canary analysis, {report['config']['steps']} % steps after a shadow phase, mirror_share "
             f"{report['config']['mirror_share']}, {rps:.0f} requests/s (simulated)",
             f"{'scenario':<16}{'kind':<17}{'n':>3}{'promoted':>9}{'failed in':>12}"
             f"{'requests p50/p95/max':>22}{'seconds p50/p95/max':>22}  failed checks"]  # fmt: skip
    for scenario, summary in report["scenarios"].items():
        for kind, row in summary["by_kind"].items():
            cells = (_pair(row["decision_requests"]), _pair(row["decision_s"]))
            lines.append(f"{scenario:<16}{kind:<17}{row['candidates']:>3}{row['promoted']:>9}"
                         f"{','.join(row['failed_in']) or '-':>12}{cells[0]:>22}{cells[1]:>22}  "
                         f"{', '.join(row['failed_checks'])}")  # fmt: skip
    lines.append("")
    lines.append(f"{'scenario':<16}{'false rollbacks':>16}{'misses':>8}{'decision s p50/p95/max':>24}"
                 f"{'requests p50/p95/max':>22}{'good phase s p50/p95/max':>26}")  # fmt: skip
    for scenario, summary in report["scenarios"].items():
        s, r, g = (_pair(summary[key]) for key in ("decision_s", "decision_requests", "good_phase_s"))
        lines.append(f"{scenario:<16}{summary['false_rollbacks']:>9}/{summary['good']:<6}"
                     f"{summary['misses']:>5}/{summary['bad']:<3}{s:>23}{r:>22}{g:>26}")  # fmt: skip
    t = report["targets"]
    lines.append(f"{'target':<16}{t['false_rollbacks']:>9}{'':<7}{t['misses']:>5}{'':<4}"
                 f"{'max ' + t['decision_max_s'] + ' s':>23}")  # fmt: skip
    lines.append("(requests and seconds: from the first request the canary answered in the phase that failed to the "
                 "poll that decided)")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--good", type=int, default=20, help="good candidates")
    parser.add_argument("--bad", type=int, default=20, help="bad candidates (five kinds in turn)")
    parser.add_argument("--rps", type=float, default=50.0, help="live requests per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mirror-share", type=float, help="override the config's mirror_share")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = LiveCanaryConfig() if args.mirror_share is None else LiveCanaryConfig(mirror_share=args.mirror_share)
    rng = np.random.default_rng(args.seed)
    candidates = good_candidates(args.good, rng) + bad_candidates(args.bad)
    seeds = [args.seed * 10_000 + i for i in range(len(candidates))]
    full = [run_candidate(c, config, args.rps, s) for c, s in zip(candidates, seeds, strict=True)]
    bad_pairs = [(c, s) for c, s in zip(candidates, seeds, strict=True) if c.bad]
    no_shadow = [run_candidate(c, config, args.rps, s, with_shadow=False) for c, s in bad_pairs]
    report = {
        "bench": "canary_analysis", "rps": args.rps, "seed": args.seed,
        "config": config.model_dump(mode="json"), "targets": _TARGETS,
        "scenarios": {"shadow+steps": summarize(full), "bad at 5%": summarize(no_shadow)},
        "candidates": full + no_shadow,
    }  # fmt: skip
    document = json.dumps(report, indent=2)
    print(document)
    print(render_table(report))
    if args.json:
        args.json.write_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
