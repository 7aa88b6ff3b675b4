"""The live canary's analysis on synthetic streams with known answers.

A stream is one phase's live requests: each has a true class, stable's answer (right with probability
``STABLE_ACCURACY``), the canary's answer (differing as its :class:`Candidate` says), errors, latencies, the variant
that served it, whether it was mirrored, and whether its label has arrived. The phase is analysed every
``POLL_EVERY`` requests, the way the phase loop polls, until it decides. Error rates are counted over ``RUNS`` seeds
and held to the configured ones with room for sampling; speeds are held to Wald's expected sample sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pytest

from pipeline.config import LiveCanaryConfig
from pipeline.live.analysis import (
    DEFAULT_EXPECTED_DISAGREEMENT,
    LATENCY_QUANTILE,
    Analysis,
    Observation,
    SprtDesign,
    Variant,
    agreement_design,
    alpha_per_test,
    analyze,
    js_divergence,
    latency_design,
)

CLASS_NAMES = tuple(str(d) for d in range(10))
CONFIG = LiveCanaryConfig()
RUNS = 200  # seeds per kind
RATE_RPS = 50.0  # simulated live traffic: a window of n requests has run n / RATE_RPS seconds
POLL_EVERY = 20  # requests between two analyses
MAX_REQUESTS = int(CONFIG.bake_s * RATE_RPS)
STABLE_ACCURACY = 0.95
STABLE_ERROR_RATE = 0.001
LATENCY_SIGMA = 0.3  # log-normal latencies around 20 ms


@dataclass(frozen=True)
class Candidate:
    """How a simulated canary differs from stable (probabilities are per request)."""

    name: str
    loses: float = 0.01  # stable right, the canary wrong
    gains: float = 0.01  # stable wrong, the canary right
    remap: tuple[int, int] | None = None  # the canary answers b wherever it would have answered a
    error_rate: float = STABLE_ERROR_RATE
    latency_scale: float = 1.0
    label_share: float = 0.5  # requests whose label arrives within the phase

    @property
    def disagreement(self) -> float:
        """At least this share of paired requests disagree (a remap adds its class's ~10 %)."""
        return self.loses + self.gains + (0.1 if self.remap else 0.0)


GOOD = Candidate("good")  # agrees 98 %, stable's accuracy, error rate and latency
BAD = (
    Candidate("low_agreement", loses=0.10, gains=0.05, label_share=0.0),  # agrees 85 %, no labels at all
    Candidate("accuracy_drop", loses=0.10, gains=0.0, label_share=0.5),  # 10 points less accurate, half labelled
    Candidate("class_shift", remap=(3, 5), label_share=0.0),  # says 5 wherever it would say 3
    Candidate("errors", error_rate=0.05),
    Candidate("latency", latency_scale=3.0),
)


class Stream:
    """One seeded phase of live requests; observations are built only as far as they are read."""

    def __init__(self, candidate: Candidate, seed: int, *, canary_weight: float = 0.25, mirror_share: float = 1.0,
                 n: int = MAX_REQUESTS) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        truth = rng.integers(0, 10, n)
        stable_right = rng.random(n) < STABLE_ACCURACY
        stable = np.where(stable_right, truth, (truth + rng.integers(1, 10, n)) % 10)
        canary, draw = stable.copy(), rng.random(n)
        loses = stable_right & (draw < candidate.loses / STABLE_ACCURACY)
        canary[loses] = (truth[loses] + rng.integers(1, 10, int(loses.sum()))) % 10
        canary[~stable_right & (draw < candidate.gains / (1 - STABLE_ACCURACY))] = truth[~stable_right & (
            draw < candidate.gains / (1 - STABLE_ACCURACY))]  # fmt: skip
        if candidate.remap is not None:
            canary[canary == candidate.remap[0]] = candidate.remap[1]
        self.truth, self.classes = truth, {"stable": stable, "canary": canary}
        self.ok = {"stable": rng.random(n) >= STABLE_ERROR_RATE, "canary": rng.random(n) >= candidate.error_rate}
        base = 20.0 * np.exp(rng.normal(0, LATENCY_SIGMA, (2, n)))
        self.latency = {"stable": base[0], "canary": base[1] * candidate.latency_scale}
        self.served_by_canary = rng.random(n) < canary_weight
        self.mirrored = rng.random(n) < mirror_share
        self.labelled = rng.random(n) < candidate.label_share
        self.built: list[Observation] = []

    def take(self, count: int) -> list[Observation]:
        """The first ``count`` requests as observations."""
        while len(self.built) < count:
            self.built.append(self._observation(len(self.built)))
        return self.built[:count]

    def _observation(self, i: int) -> Observation:
        served: Variant = "canary" if self.served_by_canary[i] else "stable"
        other: Variant = "stable" if served == "canary" else "canary"
        ok = bool(self.ok[served][i])
        classes = {v: int(self.classes[v][i]) if self.ok[v][i] else None for v in ("stable", "canary")}
        mirrored = bool(self.mirrored[i])
        return Observation(
            request_id=f"r{i}", variant=served, ok=ok, latency_ms=float(self.latency[served][i]),
            predicted_class=classes[served],
            stable_class=classes["stable"] if mirrored or served == "stable" else None,
            canary_class=classes["canary"] if mirrored or served == "canary" else None,
            label=int(self.truth[i]) if self.labelled[i] else None,
            mirror_ok=bool(self.ok[other][i]) if mirrored else None,
            mirror_latency_ms=float(self.latency[other][i]) if mirrored else None,
            excerpt=f"image #{i}",
        )  # fmt: skip


def run_phase(
    stream: Stream, config: LiveCanaryConfig = CONFIG, max_requests: int = MAX_REQUESTS
) -> tuple[Analysis, int]:
    """Analyse every POLL_EVERY requests until a decision; the last analysis and the requests it saw."""
    n = 0
    while True:
        n = min(n + POLL_EVERY, max_requests)
        analysis = analyze(stream.take(n), config, phase="25%", elapsed_s=n / RATE_RPS, class_names=CLASS_NAMES)
        if analysis.decided or n == max_requests:
            return analysis, n


def outcomes(candidate: Candidate, runs: int = RUNS) -> list[tuple[Analysis, int]]:
    return [run_phase(Stream(candidate, seed)) for seed in range(runs)]


def allowed(rate: float, runs: int = RUNS) -> float:
    """The most events a rate allows in ``runs`` trials, with three standard deviations of sampling room."""
    return rate * runs + 3 * math.sqrt(rate * runs) + 1


def expected_requests_to_catch(candidate: Candidate) -> float:
    """Wald's expected sample size of the fastest test that applies, in requests (every request is paired).

    The accuracy and latency tests start once stable has ``min_requests`` labelled or timed answers to compare
    with (then they count every canary answer so far), so theirs is at least that many requests.
    """
    alpha, beta = alpha_per_test(CONFIG), CONFIG.miss_rate
    candidates = []
    agreement = agreement_design(CONFIG).expected_trials(candidate.disagreement)
    if agreement is not None and agreement > 0 and candidate.disagreement > agreement_design(CONFIG).p1:
        candidates.append(agreement)
    if candidate.label_share and candidate.loses - candidate.gains >= CONFIG.min_detectable_drop:
        stable_wrong = 1 - STABLE_ACCURACY
        accuracy = SprtDesign(stable_wrong, stable_wrong + CONFIG.min_detectable_drop, alpha, beta)
        trials = accuracy.expected_trials(stable_wrong + candidate.loses - candidate.gains)
        assert trials is not None
        candidates.append(max(trials, CONFIG.min_requests) / candidate.label_share)
    if candidate.error_rate > STABLE_ERROR_RATE + CONFIG.max_error_rate_increase:
        errors = SprtDesign(STABLE_ERROR_RATE, STABLE_ERROR_RATE + CONFIG.max_error_rate_increase, alpha, beta, True)
        trials = errors.expected_trials(candidate.error_rate)
        assert trials is not None
        candidates.append(trials)
    if candidate.latency_scale > CONFIG.max_p95_latency_ratio:
        # A canary answer is over the limit when its log-latency exceeds stable's p95 times the limit's ratio.
        z95 = NormalDist().inv_cdf(LATENCY_QUANTILE / 100)
        shift = math.log(CONFIG.max_p95_latency_ratio / candidate.latency_scale) / LATENCY_SIGMA
        trials = latency_design(CONFIG).expected_trials(1 - NormalDist().cdf(z95 + shift))
        assert trials is not None
        candidates.append(max(trials, CONFIG.min_requests))
    assert candidates, f"{candidate.name} is not bad by any test"
    return min(candidates)


# ---- error rates and speed -------------------------------------------------------------------------------------


@pytest.mark.slow  # many seeded streams: the statistical error rates
def test_good_candidates_are_rarely_rolled_back() -> None:
    results = outcomes(GOOD)
    decisions = [a.decision for a, _ in results]
    false_rollbacks = sum(d in ("fail", "undecided") for d in decisions)
    assert false_rollbacks <= allowed(CONFIG.false_rollback_rate), decisions
    assert decisions.count("pass") >= RUNS - allowed(CONFIG.false_rollback_rate)
    # A pass comes when the agreement test accepts: about Wald's expected sample size for 2 % disagreement.
    expected = agreement_design(CONFIG).expected_trials(GOOD.disagreement)
    assert expected is not None
    assert np.mean([n for a, n in results if a.decision == "pass"]) <= 1.5 * expected + POLL_EVERY


@pytest.mark.slow  # many seeded streams: the statistical error rates
@pytest.mark.parametrize("candidate", BAD, ids=lambda c: c.name)
def test_bad_candidates_are_caught_within_the_expected_sample_size(candidate: Candidate) -> None:
    results = outcomes(candidate)
    decisions = [a.decision for a, _ in results]
    assert decisions.count("pass") <= allowed(CONFIG.miss_rate), "misses"
    assert decisions.count("fail") >= RUNS - allowed(CONFIG.miss_rate)
    requests = [n for a, n in results if a.decision == "fail"]
    assert np.mean(requests) <= 1.5 * expected_requests_to_catch(candidate) + POLL_EVERY


def test_the_guard_rails_name_what_failed() -> None:
    errors, _ = run_phase(Stream(BAD[3], seed=1))
    latency, _ = run_phase(Stream(BAD[4], seed=1))
    assert errors.decision == latency.decision == "fail"
    assert any("error_rate_increase" in r for r in errors.reasons)
    assert any("p95_latency_ratio" in r for r in latency.reasons)
    assert latency.test("latency").outcome == "reject_h0"


@pytest.mark.slow  # many seeded streams: the statistical error rates
def test_error_rates_at_the_hypotheses_are_the_configured_ones() -> None:
    """At H0's disagreement exactly, rollbacks stay within alpha; at H1's, passes stay within beta."""
    design = agreement_design(CONFIG)
    at_h0 = Candidate("at_h0", loses=design.p0 / 2, gains=design.p0 / 2, label_share=0.0)
    at_h1 = Candidate("at_h1", loses=design.p1 / 2, gains=design.p1 / 2, label_share=0.0)
    rollbacks = sum(a.decision != "pass" for a, _ in outcomes(at_h0))
    misses = sum(a.decision == "pass" for a, _ in outcomes(at_h1))
    assert rollbacks <= allowed(alpha_per_test(CONFIG))
    assert misses <= allowed(CONFIG.miss_rate)


# ---- deciding, and never passing without evidence ----------------------------------------------------------------


def agreeing(n: int, *, mirrored: bool = True, start: int = 0) -> list[Observation]:
    """``n`` stable-served requests where both versions agree (mirrored) or only stable's answer is known."""
    return [Observation(f"r{i}", "stable", True, 20.0, i % 10, canary_class=i % 10 if mirrored else None,
                        mirror_ok=True if mirrored else None, mirror_latency_ms=20.0 if mirrored else None)
            for i in range(start, start + n)]  # fmt: skip


def test_too_little_traffic_waits_then_is_undecided_never_a_pass() -> None:
    few = agreeing(30)
    waiting = analyze(few, CONFIG, phase="5%", elapsed_s=CONFIG.bake_s - 1, class_names=CLASS_NAMES)
    timed_out = analyze(few, CONFIG, phase="5%", elapsed_s=CONFIG.bake_s, class_names=CLASS_NAMES)
    assert waiting.decision == "continue"
    assert timed_out.decision == "undecided"
    assert "30 of the 50 mirrored requests" in timed_out.reasons[0]
    assert not timed_out.to_verdict("live_canary_5").blessed
    assert timed_out.root_cause is not None


def test_without_mirrored_requests_a_phase_never_passes() -> None:
    unpaired = agreeing(2000, mirrored=False)
    assert (
        analyze(unpaired, CONFIG, phase="5%", elapsed_s=CONFIG.bake_s, class_names=CLASS_NAMES).decision == "undecided"
    )


def test_a_pass_needs_min_requests_even_when_the_test_has_accepted() -> None:
    config = LiveCanaryConfig(min_requests=200)
    early = analyze(agreeing(150), config, phase="25%", elapsed_s=3.0, class_names=CLASS_NAMES)
    assert early.test("agreement").outcome == "accept_h0"
    assert early.decision == "continue"
    later = analyze(agreeing(200), config, phase="25%", elapsed_s=4.0, class_names=CLASS_NAMES)
    assert later.decision == "pass"
    assert later.to_verdict("live_canary_25").blessed


def test_a_stray_canary_error_does_not_roll_back() -> None:
    window = agreeing(100)
    window[10] = Observation("r10", "canary", False, 20.0, None, stable_class=0, mirror_ok=True)
    analysis = analyze(window, CONFIG, phase="5%", elapsed_s=2.0, class_names=CLASS_NAMES)
    assert analysis.decision != "fail"
    assert analysis.canary.errors == 1


def test_the_accuracy_test_fails_a_canary_on_served_answers_alone() -> None:
    """No mirroring at all: the labelled answers each version served still judge live accuracy."""
    rng = np.random.default_rng(7)
    window = []
    for i in range(1200):
        variant: Variant = "canary" if i % 2 else "stable"
        truth = int(rng.integers(10))
        right = rng.random() < (0.80 if variant == "canary" else 0.95)
        answer = truth if right else (truth + 1) % 10
        window.append(Observation(f"r{i}", variant, True, 20.0, answer, label=truth))
    analysis = analyze(window, CONFIG, phase="50%", elapsed_s=20.0, class_names=CLASS_NAMES)
    assert analysis.paired.requests == 0
    assert analysis.test("accuracy").outcome == "reject_h0"
    assert analysis.decision == "fail"
    assert any("live accuracy" in r for r in analysis.reasons)


def test_a_stable_lucky_on_few_labels_does_not_roll_back_a_canary_as_good() -> None:
    """Stable right on all 60 labels (5 % wrong is its usual), the canary wrong on 3: no evidence of a drop."""
    window = [Observation(f"r{i}", "stable", True, 20.0, i % 10, canary_class=(i + 1) % 10 if i < 3 else i % 10,
                          mirror_ok=True, label=i % 10) for i in range(60)]  # fmt: skip
    analysis = analyze(window, CONFIG, phase="25%", elapsed_s=2.0, class_names=CLASS_NAMES)
    assert analysis.stable.accuracy == 1.0 and analysis.canary.accuracy == pytest.approx(0.95)
    assert analysis.test("accuracy").outcome != "reject_h0"
    assert analysis.decision != "fail"


def test_feedback_joins_only_the_requests_whose_labels_arrived() -> None:
    window = [
        Observation("a", "canary", True, 10.0, 1, label=1),  # canary served, labelled, right
        Observation("b", "canary", True, 10.0, 2),  # canary served, no label yet
        Observation("c", "stable", True, 10.0, 4, canary_class=5, mirror_ok=True, label=4),  # both; canary wrong
        Observation("d", "stable", True, 10.0, 6, label=7),  # stable only, wrong
        Observation("e", "stable", False, 10.0, None, label=3),  # stable failed: an error, not a wrong answer
    ]
    analysis = analyze(window, CONFIG, phase="5%", elapsed_s=1.0, class_names=CLASS_NAMES)
    assert (analysis.canary.labelled, analysis.canary.correct) == (2, 1)
    assert (analysis.stable.labelled, analysis.stable.correct) == (2, 1)
    assert (analysis.stable.errors, analysis.canary.served, analysis.canary.mirrored) == (1, 2, 1)
    assert analysis.paired.requests == 1 and analysis.paired.disagreements == 1


def test_the_shadow_phase_counts_mirrored_copies_for_the_canary() -> None:
    stream = Stream(BAD[3], seed=3, canary_weight=0.0, mirror_share=0.2)
    analysis, _ = run_phase(stream)
    assert analysis.canary.served == 0 and analysis.canary.mirrored > 0
    assert analysis.decision == "fail"


# ---- divergence and the root cause ------------------------------------------------------------------------------


def test_js_divergence_is_0_for_identical_and_1_for_disjoint_distributions() -> None:
    assert js_divergence([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert js_divergence([2, 3, 5], [20, 30, 50]) == pytest.approx(0.0, abs=1e-12)  # counts are normalised
    assert js_divergence([1, 0, 0], [0, 1, 1]) == pytest.approx(1.0)
    assert js_divergence([0.9, 0.1], [0.5, 0.5]) == pytest.approx(js_divergence([0.5, 0.5], [0.9, 0.1]))
    assert 0 < js_divergence([0.9, 0.1], [0.5, 0.5]) < 1
    with pytest.raises(ValueError):
        js_divergence([1, 0], [0, 0])


def test_identical_models_show_no_divergence_whatever_the_traffic_mix() -> None:
    analysis = analyze(agreeing(300), CONFIG, phase="5%", elapsed_s=6.0, class_names=CLASS_NAMES)
    assert analysis.paired.class_divergence == 0.0 and analysis.paired.agreement == 1.0


def test_a_large_class_divergence_fails_at_once() -> None:
    window = [Observation(f"r{i}", "stable", True, 20.0, i % 2, canary_class=2 + i % 2, mirror_ok=True)
              for i in range(CONFIG.min_requests)]  # fmt: skip
    analysis = analyze(window, CONFIG, phase="shadow", elapsed_s=1.0, class_names=CLASS_NAMES)
    assert analysis.decision == "fail"
    assert any("class_divergence" in r for r in analysis.reasons)


def test_the_root_cause_names_the_shifted_class() -> None:
    analysis, _ = run_phase(Stream(BAD[2], seed=11))
    assert analysis.decision == "fail" and analysis.root_cause is not None
    cause = analysis.root_cause
    top = cause.confusions[0]
    assert (top.stable_class, top.canary_class) == ("3", "5")
    assert top.share > 0.05
    movers = {s.class_name: s.change for s in cause.class_shifts[:2]}
    assert movers["3"] < -0.05 and movers["5"] > 0.05
    assert 1 <= len(cause.examples) <= 5
    assert (cause.examples[0].stable_answer, cause.examples[0].canary_answer) == ("3", "5")
    assert {c.name for c in cause.checks} >= {
        "agreement",
        "class_divergence",
        "error_rate_increase",
        "p95_latency_ratio",
        "accuracy_drop",
        "paired_requests",
    }
    assert "stable said '3' -> canary said '5'" in cause.summary()


# ---- the record --------------------------------------------------------------------------------------------------


def test_figures_are_json_and_the_verdict_carries_them() -> None:
    failed, _ = run_phase(Stream(BAD[0], seed=5))
    passed, _ = run_phase(Stream(GOOD, seed=5))
    for analysis in (failed, passed):
        document = json.loads(json.dumps(analysis.figures, allow_nan=False))
        assert document["decision"] == analysis.decision
        assert set(document["tests"]) == {"agreement", "accuracy", "error_rate", "latency"}
        verdict = analysis.to_verdict("live_canary_25")
        assert verdict.blessed == (analysis.decision == "pass")
        assert verdict.figures["paired"]["requests"] == analysis.paired.requests
        assert analysis.summary_lines()[0].endswith(analysis.decision.upper())
    assert failed.decision == "fail" and passed.decision == "pass"
    assert any(r.startswith("root cause: ") for r in failed.to_verdict("g").reasons)


def test_an_observation_must_name_a_variant_and_a_sane_latency() -> None:
    with pytest.raises(ValueError):
        Observation("x", "other", True, 1.0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Observation("x", "stable", True, -1.0, 0)


def test_the_expected_disagreement_must_leave_room_for_the_drop() -> None:
    with pytest.raises(ValueError):
        agreement_design(CONFIG, 1 - CONFIG.min_detectable_drop)
    assert agreement_design(CONFIG).p0 == DEFAULT_EXPECTED_DISAGREEMENT


# ---- a canary that corrects stable (drifted inputs, a retrained candidate) ---------------------------------------


def _pairs(stable: list[int], canary: list[int], labels: list[int | None]) -> list[Observation]:
    return [Observation(request_id=f"r{i}", variant="stable", ok=True, latency_ms=20.0, predicted_class=s,
                        stable_class=s, canary_class=c, label=y, mirror_ok=True, mirror_latency_ms=20.0)
            for i, (s, c, y) in enumerate(zip(stable, canary, labels, strict=True))]


def test_a_disagreement_the_label_shows_the_canary_right_on_counts_as_agreement() -> None:
    truth = [i % 10 for i in range(100)]
    stable = [(y + 1) % 10 if i < 20 else y for i, y in enumerate(truth)]  # stable wrong on the first 20
    labelled = analyze(_pairs(stable, truth, list(truth)), CONFIG, phase="shadow", elapsed_s=10,
                       class_names=CLASS_NAMES).paired
    unlabelled = analyze(_pairs(stable, truth, [None] * 100), CONFIG, phase="shadow", elapsed_s=10,
                         class_names=CLASS_NAMES).paired
    assert (labelled.disagreements, labelled.corrected, labelled.agreement) == (20, 20, 1.0)
    assert labelled.class_divergence == 0.0  # the canary's answers are stable's, corrected
    assert (unlabelled.disagreements, unlabelled.corrected, unlabelled.agreement) == (20, 0, 0.8)


def test_a_canary_wrong_where_stable_is_right_is_never_corrected() -> None:
    truth = [i % 10 for i in range(100)]
    canary = [(y + 1) % 10 if i < 20 else y for i, y in enumerate(truth)]  # the canary wrong on the first 20
    paired = analyze(_pairs(truth, canary, list(truth)), CONFIG, phase="shadow", elapsed_s=10,
                     class_names=CLASS_NAMES).paired
    assert (paired.disagreements, paired.corrected, paired.agreement) == (20, 0, 0.8)


CORRECTOR = Candidate("corrects_stable", loses=0.002, gains=0.05, label_share=0.9)  # right on all stable misses


def test_a_canary_that_corrects_stable_passes_once_labels_show_it_and_is_held_without_them() -> None:
    runs = RUNS // 2
    labelled = [analysis.decision for analysis, _ in outcomes(CORRECTOR, runs)]
    unlabelled = [analysis.decision for analysis, _ in outcomes(
        Candidate("corrects_stable_unlabelled", loses=0.002, gains=0.05, label_share=0.0), runs)]
    assert labelled.count("pass") >= runs - allowed(CONFIG.false_rollback_rate, runs), labelled
    assert unlabelled.count("pass") < labelled.count("pass")  # without labels 5 % disagreement is no agreement


def _aged(observations: list[Observation], age_s: float) -> list[Observation]:
    from dataclasses import replace

    return [replace(o, age_s=age_s) for o in observations]


WAITING = LiveCanaryConfig(label_wait_s=10)


def test_young_unlabelled_disagreements_cannot_fail_a_phase_while_their_labels_may_come() -> None:
    truth = [i % 10 for i in range(9)]
    stable = [(y + 1) % 10 if i < 7 else y for i, y in enumerate(truth)]  # 7 of 9 disagree, no label yet
    young = _aged(_pairs(stable, truth, [None] * 9), age_s=1.0)
    assert analyze(young, CONFIG, phase="shadow", elapsed_s=2, class_names=CLASS_NAMES).decision == "fail"
    waiting = analyze(young, WAITING, phase="shadow", elapsed_s=2, class_names=CLASS_NAMES)
    assert waiting.decision == "continue" and waiting.paired.pending == 7
    old = analyze(_aged(_pairs(stable, truth, [None] * 9), age_s=30.0), WAITING, phase="shadow", elapsed_s=31,
                  class_names=CLASS_NAMES)
    assert old.decision == "fail"  # no label came within the wait: they count
    shown_wrong = analyze(_aged(_pairs(truth, stable, list(truth)), age_s=1.0), WAITING, phase="shadow",
                          elapsed_s=2, class_names=CLASS_NAMES)
    assert shown_wrong.decision == "fail"  # labels that show the canary wrong fail it at once


def test_pending_disagreements_count_against_a_pass_until_their_labels_show_the_canary_right() -> None:
    truth = [i % 10 for i in range(156)]
    stable = [(y + 1) % 10 if i < 6 else y for i, y in enumerate(truth)]  # 6 disagreements in 156
    labels: list[int | None] = [None] * 6 + truth[6:]
    pending = analyze(_aged(_pairs(stable, truth, labels), age_s=1.0), WAITING, phase="shadow", elapsed_s=20,
                      class_names=CLASS_NAMES)
    assert pending.decision == "continue" and pending.test("agreement").note.startswith("6 disagreement")
    corrected = analyze(_aged(_pairs(stable, truth, list(truth)), age_s=1.0), WAITING, phase="shadow",
                        elapsed_s=20, class_names=CLASS_NAMES)
    assert corrected.decision == "pass" and corrected.paired.corrected == 6
