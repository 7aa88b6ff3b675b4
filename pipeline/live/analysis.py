"""The live canary's analysis: canary against stable on the same window, a sequential decision, a root cause.

:func:`analyze` judges one phase of the live canary (the shadow phase or one weighted step) on the live requests
seen so far. The phase loop calls it every ``poll_s`` on the growing window and stops at the first decision that
is not ``continue``: ``pass``, ``fail`` (with reasons and a root cause) or ``undecided`` (``bake_s`` is over
without enough evidence: a failure to decide, never a pass). Pure: no I/O, no servers, no clock.

Statistical design
------------------
Every test is on a Bernoulli "hit" and is sized from :class:`~pipeline.config.LiveCanaryConfig`:

* **Agreement** (decides a pass). Hit: the canary's class differs from stable's on the same inputs, over the
  *paired* requests (mirrored or captured, both answers known), unless the request's label has come back and
  shows the canary right: that disagreement is the canary *correcting* stable (as on drifted inputs a retrained
  candidate must) and counts as agreement, here and in the class-divergence guard. The bound below still holds:
  a request the canary gets wrong and stable right is never corrected, so it is still a hit. A disagreement whose
  label may still come (none yet, younger than ``label_wait_s``) is *pending*, and the doubt goes against the
  canary both ways: the test may fail the phase only on the resolved pairs (pending ones left out), and may pass it
  only with the pending ones counted as hits. ``label_wait_s`` 0 (the default) resolves every pair at once. Wald's SPRT, H0: disagreement
  ``p0 = expected_disagreement`` against H1: ``p0 + min_detectable_drop``; it rejects when the log likelihood
  ratio reaches ``log((1 - beta) / alpha')`` and accepts at ``log(beta / (1 - alpha'))``. ``p0`` defaults to 3 %:
  two copies of one deterministic model disagree on nothing, and a good candidate trained differently agrees
  97-99 % with stable on MNIST, so 3 % is the most disagreement a good candidate is expected to show.
* **Live accuracy** (fails a phase; its acceptance is needed for a pass only with ``require_accuracy``). Hit: a
  labelled canary answer is wrong. H0: the canary's wrong-answer rate is stable's on the same window; H1: it is
  ``min_detectable_drop`` higher. Chosen over the paired discordant outcomes (a McNemar-style SPRT) because that
  test's alternative depends on the unknown discordance rate (a drop ``d`` means ``P(canary is the wrong one |
  they differ) = 1/2 + d / (2 * discordance)``), so it cannot be sized from the drop alone, and because it can
  use only mirrored labelled requests, while this one uses every labelled canary answer, served or mirrored.
  Stable's rate enters at its one-sided 95 % Wilson upper bound (floored at 0.1 %), once stable has
  ``min_requests`` labelled answers: a stable that was lucky on a few labels must not make a canary exactly as
  good look worse (with the point estimate, 2 good canaries in 1000 were rolled back that way); the price is a
  slower catch while stable's labels are few (simulated with labels on served answers only, as many for stable
  as for the canary: a drop of exactly ``min_detectable_drop`` is caught 3 times in 4, twice that 99 %). By default a pass rests on the agreement test: labels arrive late
  and sparse, so waiting for ~200 of them would leave many phases undecided, and on the same inputs an accuracy
  drop can never exceed the disagreement (each request the canary gets wrong and stable right is a
  disagreement), so accepting the agreement test already bounds the drop below ``p0 + min_detectable_drop``.
* **Guard rails** fail at once, whatever the SPRTs say. Error rate and latency are one-sided (power-one)
  sequential tests: they reject when the likelihood ratio reaches ``1 / alpha'``, which by Ville's inequality
  happens under H0 with probability at most ``alpha'`` however often the window is looked at; they fail the
  phase only when the observed figure is over its limit too. Errors: hit = a canary answer failed, H0 stable's
  rate in the window (floored at 0.1 %), H1 that plus ``max_error_rate_increase``. Latency: hit = a canary
  answer slower than ``max_p95_latency_ratio`` times stable's p95; the canary's p95 is within that limit exactly
  when at most 5 % of its answers are over it, so H0 is 5 % and H1 10 % (its p90 over the limit). Class
  divergence fails once ``min_requests`` paired requests exist and the Jensen-Shannon divergence is over
  ``max_class_divergence``.

Error rates. The four tests that may fail a phase share ``false_rollback_rate`` equally (``alpha' = alpha / 4``,
Bonferroni), so a good canary is rolled back in a phase with probability at most ``alpha`` (up to Wald's
approximations; the rate is per phase, a release runs one phase per step plus the shadow). The class-divergence
guard takes no share: on paired answers a good canary's divergence is far below any sensible threshold. A bad
canary is let through only if the agreement SPRT accepts: at most ``beta`` for a disagreement of
``p0 + min_detectable_drop`` or more (and for an accuracy drop of ``min_detectable_drop`` with
``require_accuracy``). Looking at the window every poll rather than every request keeps these bounds: under H0
the likelihood ratio ever reaching ``A`` has probability at most ``1 / A`` (Ville). A pass also needs
``min_requests`` paired requests, no figure over its limit, and no failing test still open whose evidence leans
towards a failure (likelihood ratio over 1): that keeps a canary that fails 5 % of its requests from passing on
a lucky streak the moment the agreement test accepts (simulated: 2 in 1000 passed, 15 without the rule).

Class divergence is measured on the paired requests, canary answers against stable answers on the same inputs:
identical models give exactly 0 there, and neither the traffic mix nor the sampling noise of two independent
samples (at a 5 % step the canary serves a small random share) can fake a divergence.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from pipeline.config import LiveCanaryConfig
from pipeline.gates import Verdict

Variant = Literal["stable", "canary"]
Decision = Literal["continue", "pass", "fail", "undecided"]
Outcome = Literal["accept_h0", "reject_h0", "continue", "not_run"]

VARIANTS: tuple[Variant, ...] = ("stable", "canary")
DEFAULT_EXPECTED_DISAGREEMENT = 0.03  # the most a good retrained candidate disagrees with stable (MNIST: 1-3 %)
TESTS_SHARING_ALPHA = 4  # agreement, accuracy, error rate, latency: each may fail a phase
LATENCY_QUANTILE = 95.0
LATENCY_EXCEEDANCE_H0 = 0.05  # canary p95 within the limit <=> at most 5 % of its answers over it
LATENCY_EXCEEDANCE_H1 = 0.10  # its p90 over the limit
BASELINE_RATE_FLOOR = 0.001  # stable's error rates below this are noise no canary should be rolled back over
UPPER_BOUND_Z = 1.645  # stable's wrong-answer rate enters the accuracy test at its 95 % upper bound
MAX_EXAMPLES = 5
MAX_MOVERS = 5
MAX_CONFUSIONS = 5


# ---- inputs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One live request in the window, with what each version answered when that was captured.

    Attributes:
        request_id: The proxy's id of the request; feedback joins on it.
        variant: The version whose answer the client got.
        ok: Whether that answer came back without error.
        latency_ms: That answer's latency.
        predicted_class: The class index the client got (None on error).
        stable_class: Stable's class on these inputs when captured, else None.
        canary_class: The canary's class on these inputs when captured, else None.
        label: The true class index once feedback has arrived, else None.
        mirror_ok: When the request was mirrored to the other version, whether that copy succeeded; else None.
        mirror_latency_ms: That copy's latency, when known.
        excerpt: A short excerpt of the inputs, for the root cause's examples.
        age_s: Seconds from the request to this analysis, when known: a disagreement without a label younger
            than ``label_wait_s`` may still be corrected by its label (see the agreement test).
    """

    request_id: str
    variant: Variant
    ok: bool
    latency_ms: float
    predicted_class: int | None
    stable_class: int | None = None
    canary_class: int | None = None
    label: int | None = None
    mirror_ok: bool | None = None
    mirror_latency_ms: float | None = None
    excerpt: str = ""
    age_s: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"request {self.request_id}: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.latency_ms < 0 or (self.mirror_latency_ms is not None and self.mirror_latency_ms < 0):
            raise ValueError(f"request {self.request_id}: latencies cannot be negative")

    def class_of(self, variant: Variant) -> int | None:
        """``variant``'s class on these inputs: the captured one, else the client's answer when it served."""
        captured = self.stable_class if variant == "stable" else self.canary_class
        if captured is None and variant == self.variant and self.ok:
            return self.predicted_class
        return captured

    def answer_of(self, variant: Variant) -> tuple[bool, float | None, int | None] | None:
        """``(ok, latency_ms, class)`` of ``variant``'s answer to this request, None when it did not answer."""
        if variant == self.variant:
            return self.ok, self.latency_ms, self.class_of(variant) if self.ok else None
        captured = self.class_of(variant)
        if self.mirror_ok is None and captured is None:
            return None  # not mirrored
        ok = self.mirror_ok if self.mirror_ok is not None else True  # a captured class is an answer that came back
        return ok, self.mirror_latency_ms, captured if ok else None


# ---- the sequential tests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialTest:
    """One test's state on the window: its counts, hypotheses, log likelihood ratio, bounds and outcome."""

    name: str
    hit: str  # what one Bernoulli "hit" is
    hits: int
    trials: int
    p0: float | None
    p1: float | None
    alpha: float
    beta: float | None  # None for a one-sided test (it never accepts)
    log_likelihood_ratio: float
    log_lower: float | None
    log_upper: float | None
    outcome: Outcome
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.hits / self.trials if self.trials else None

    def describe(self) -> str:
        """One line: the counts, the hypotheses and where the ratio stands."""
        if self.outcome == "not_run":
            return f"{self.name}: not run ({self.note})"
        lower = f"{self.log_lower:.2f}" if self.log_lower is not None else "-inf"
        return (
            f"{self.name}: {self.hits}/{self.trials} {self.hit}; H0 {self.p0:.3f} vs H1 {self.p1:.3f}; "
            f"log LR {self.log_likelihood_ratio:.2f} in ({lower}, {self.log_upper:.2f}) -> {self.outcome}"
        )


@dataclass(frozen=True)
class SprtDesign:
    """Wald's sequential probability ratio test of a Bernoulli rate: H0 ``p = p0`` against H1 ``p = p1 > p0``.

    Two-sided it rejects H0 at ``log((1 - beta) / alpha)`` and accepts it at ``log(beta / (1 - alpha))``; one-sided
    (a guard rail) it only rejects, at ``log(1 / alpha)`` (Ville's inequality bounds its false alarms by alpha).
    """

    p0: float
    p1: float
    alpha: float
    beta: float
    one_sided: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0}, p1={self.p1}")
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError(f"alpha and beta must be in (0, 1), got {self.alpha}, {self.beta}")

    @property
    def log_upper(self) -> float:
        return math.log(1 / self.alpha) if self.one_sided else math.log((1 - self.beta) / self.alpha)

    @property
    def log_lower(self) -> float | None:
        return None if self.one_sided else math.log(self.beta / (1 - self.alpha))

    def log_likelihood_ratio(self, hits: int, trials: int) -> float:
        """log P(counts | H1) / P(counts | H0)."""
        return hits * math.log(self.p1 / self.p0) + (trials - hits) * math.log((1 - self.p1) / (1 - self.p0))

    def drift(self, p: float) -> float:
        """The expected log likelihood ratio one trial adds when the true rate is ``p``."""
        return p * math.log(self.p1 / self.p0) + (1 - p) * math.log((1 - self.p1) / (1 - self.p0))

    def expected_trials(self, p: float) -> float | None:
        """Wald's approximate trials to a decision at true rate ``p``, when ``p`` is well past one hypothesis.

        The boundary the drift heads for over the drift; it ignores the overshoot and the small chance of ending
        at the other boundary. None when the drift is 0 or heads for a boundary a one-sided test lacks.
        """
        drift = self.drift(p)
        if drift > 0:
            return self.log_upper / drift
        if drift < 0 and self.log_lower is not None:
            return self.log_lower / drift
        return None

    def judge(self, name: str, hit: str, hits: int, trials: int, note: str = "") -> SequentialTest:
        """The test's state after ``hits`` hits in ``trials`` trials."""
        llr = self.log_likelihood_ratio(hits, trials)
        lower = self.log_lower
        outcome: Outcome = "continue"
        if llr >= self.log_upper:
            outcome = "reject_h0"
        elif lower is not None and llr <= lower:
            outcome = "accept_h0"
        return SequentialTest(name, hit, hits, trials, self.p0, self.p1, self.alpha, None if self.one_sided else self.beta,
                              llr, lower, self.log_upper, outcome, note)  # fmt: skip


def _not_run(name: str, hit: str, hits: int, trials: int, alpha: float, why: str) -> SequentialTest:
    return SequentialTest(name, hit, hits, trials, None, None, alpha, None, 0.0, None, None, "not_run", why)


def alpha_per_test(config: LiveCanaryConfig) -> float:
    """Each failing test's share of the phase's false-rollback rate (Bonferroni)."""
    return config.false_rollback_rate / TESTS_SHARING_ALPHA


def agreement_design(
    config: LiveCanaryConfig, expected_disagreement: float = DEFAULT_EXPECTED_DISAGREEMENT
) -> SprtDesign:
    """The agreement SPRT: disagreement ``expected_disagreement`` against that plus ``min_detectable_drop``."""
    if not 0 < expected_disagreement < 1 - config.min_detectable_drop:
        raise ValueError(f"expected_disagreement must be in (0, {1 - config.min_detectable_drop}), "
                         f"got {expected_disagreement}")  # fmt: skip
    p1 = expected_disagreement + config.min_detectable_drop
    return SprtDesign(expected_disagreement, p1, alpha_per_test(config), config.miss_rate)


def latency_design(config: LiveCanaryConfig) -> SprtDesign:
    """The one-sided latency test: the share of canary answers over the limit, 5 % against 10 %."""
    return SprtDesign(LATENCY_EXCEEDANCE_H0, LATENCY_EXCEEDANCE_H1, alpha_per_test(config), config.miss_rate, True)


def baseline_rate(hits: int, trials: int) -> float:
    """Stable's rate of something bad, floored so a spotless stable does not make every canary slip a failure."""
    return max(BASELINE_RATE_FLOOR, hits / trials) if trials else BASELINE_RATE_FLOOR


def wilson_upper(hits: int, trials: int, z: float = UPPER_BOUND_Z) -> float:
    """The one-sided Wilson upper confidence bound of a rate (95 % with the default ``z``); 1 with no trials."""
    if not trials:
        return 1.0
    rate, z2 = hits / trials, z * z
    centre = rate + z2 / (2 * trials)
    spread = z * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials))
    return min(1.0, (centre + spread) / (1 + z2 / trials))


# ---- figures ---------------------------------------------------------------------------------------------------


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence, base 2, of two distributions (counts are normalised): 0 identical, 1 disjoint.

    Raises:
        ValueError: the two differ in length, have a negative entry or sum to 0.
    """
    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("need two non-negative distributions of the same length, each with some mass")
    a, b = a / a.sum(), b / b.sum()
    middle = (a + b) / 2

    def kl_to_middle(x: np.ndarray) -> float:
        kept = x > 0  # 0 log 0 = 0
        return float(np.sum(x[kept] * np.log2(x[kept] / middle[kept])))

    return min(1.0, max(0.0, 0.5 * kl_to_middle(a) + 0.5 * kl_to_middle(b)))


@dataclass(frozen=True)
class VariantFigures:
    """What one version did in the window: its answers to clients and to mirrored copies."""

    variant: str
    served: int  # answers the clients got
    mirrored: int  # answers to mirrored copies
    errors: int
    error_rate: float | None
    p95_latency_ms: float | None  # over its answers that succeeded and have a latency
    class_distribution: dict[str, float]  # share of its answers per class name
    labelled: int  # its answers to requests whose label has arrived
    correct: int
    accuracy: float | None

    @property
    def answers(self) -> int:
        return self.served + self.mirrored


@dataclass(frozen=True)
class PairedFigures:
    """Canary against stable on the same inputs: the requests where both answers are known."""

    requests: int
    disagreements: int  # the classes differ, corrections included (the raw figure)
    agreement: float | None  # 1 - (disagreements - corrected) / requests: what the agreement test judges
    class_divergence: float | None  # Jensen-Shannon, base 2, canary answers against stable answers (corrected)
    stable_distribution: dict[str, float]
    canary_distribution: dict[str, float]
    corrected: int = 0  # disagreements where the label came back and shows the canary right
    pending: int = 0  # disagreements without a label yet that may still get one (younger than label_wait_s)

    @property
    def uncorrected(self) -> int:
        """Disagreements no label shows the canary right on: the agreement test's hits."""
        return self.disagreements - self.corrected


@dataclass(frozen=True)
class Check:
    """One figure against its threshold; ``passed`` is None while there is not enough evidence to say."""

    name: str
    value: float | None
    comparison: str  # how value must stand to the limit: "<=" or ">="
    limit: float
    passed: bool | None
    note: str = ""

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        state = {True: "ok", False: "FAILED", None: "open"}[self.passed]
        return f"{self.name} {value} (must be {self.comparison} {self.limit:.4g}): {state}" + (
            f" - {self.note}" if self.note else ""
        )


@dataclass(frozen=True)
class ClassShift:
    """One class's share of the answers on the paired requests, stable's against the canary's."""

    class_name: str
    stable_share: float
    canary_share: float

    @property
    def change(self) -> float:
        return self.canary_share - self.stable_share


@dataclass(frozen=True)
class Confusion:
    """Paired requests where stable said one class and the canary another."""

    stable_class: str
    canary_class: str
    requests: int
    share: float  # of the paired requests


@dataclass(frozen=True)
class Example:
    """One request with both answers ("error" or "not captured" where a class is missing)."""

    request_id: str
    served_by: str
    stable_answer: str
    canary_answer: str
    label: str | None
    excerpt: str


@dataclass(frozen=True)
class RootCause:
    """Why a phase failed or could not decide: the classes that moved, the confusions, examples, every check."""

    class_shifts: tuple[ClassShift, ...]  # the biggest movers first
    confusions: tuple[Confusion, ...]  # "stable said a -> canary said b", the most frequent first
    examples: tuple[Example, ...]
    checks: tuple[Check, ...]

    def summary(self) -> str:
        """One line for a log or a verdict's reasons."""
        parts = [f"stable said {c.stable_class!r} -> canary said {c.canary_class!r} on {c.requests} requests "
                 f"({c.share:.1%})" for c in self.confusions[:3]]  # fmt: skip
        movers = [f"{s.class_name!r} {s.stable_share:.1%} -> {s.canary_share:.1%} ({s.change * 100:+.1f} pts)"
                  for s in self.class_shifts[:3]]  # fmt: skip
        if movers:
            parts.append("biggest movers: " + ", ".join(movers))
        failed = [c.describe() for c in self.checks if c.passed is False]
        parts.extend(failed)
        return "; ".join(parts) or "no class moved and no check failed"


# ---- the result --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """One phase's analysis on one window: both versions' figures, the tests, the checks and the decision."""

    phase: str
    elapsed_s: float
    bake_s: float
    decision: Decision
    reasons: tuple[str, ...]
    stable: VariantFigures
    canary: VariantFigures
    paired: PairedFigures
    tests: tuple[SequentialTest, ...]
    checks: tuple[Check, ...]
    root_cause: RootCause | None
    expected_disagreement: float
    require_accuracy: bool

    @property
    def decided(self) -> bool:
        """Whether the phase is over (passed, failed or undecided)."""
        return self.decision != "continue"

    def test(self, name: str) -> SequentialTest:
        """The test called ``name`` (agreement, accuracy, error_rate, latency)."""
        return next(t for t in self.tests if t.name == name)

    @property
    def figures(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (no NaN or infinity)."""
        return {
            "phase": self.phase, "elapsed_s": self.elapsed_s, "bake_s": self.bake_s, "decision": self.decision,
            "stable": asdict(self.stable), "canary": asdict(self.canary), "paired": asdict(self.paired),
            "divergence_basis": "paired requests: canary answers against stable answers on the same inputs",
            "tests": {t.name: asdict(t) for t in self.tests},
            "checks": [asdict(c) for c in self.checks],
            "root_cause": None if self.root_cause is None else {
                **asdict(self.root_cause), "summary": self.root_cause.summary()},
            "expected_disagreement": self.expected_disagreement, "require_accuracy": self.require_accuracy,
        }  # fmt: skip

    def to_verdict(self, gate: str = "live_canary") -> Verdict:
        """The phase as a gate verdict: blessed only on ``pass``; a root cause joins the reasons."""
        reasons = list(self.reasons)
        if self.root_cause is not None:
            reasons.append("root cause: " + self.root_cause.summary())
        return Verdict(gate, self.decision == "pass", reasons, self.figures)

    def summary_lines(self) -> list[str]:
        """A few lines for a task log."""
        lines = [f"live canary {self.phase} at {self.elapsed_s:.1f}s of {self.bake_s:.0f}s: {self.decision.upper()}"]
        for v in (self.stable, self.canary):
            p95 = "n/a" if v.p95_latency_ms is None else f"{v.p95_latency_ms:.1f} ms"
            errors = "n/a" if v.error_rate is None else f"{v.error_rate:.2%}"
            accuracy = "n/a" if v.accuracy is None else f"{v.accuracy:.2%} of {v.labelled}"
            lines.append(f"  {v.variant:<6} {v.served} served + {v.mirrored} mirrored, errors {errors}, "
                         f"p95 {p95}, accuracy {accuracy}")  # fmt: skip
        agreement = "n/a" if self.paired.agreement is None else f"{self.paired.agreement:.2%}"
        divergence = "n/a" if self.paired.class_divergence is None else f"{self.paired.class_divergence:.4f}"
        corrected = f" ({self.paired.corrected} disagreements corrected stable, by label)" if self.paired.corrected else ""
        lines.append(f"  paired {self.paired.requests}: agreement {agreement}{corrected}, class divergence (JS) "
                     f"{divergence}")
        lines.extend(f"  test {t.describe()}" for t in self.tests)
        lines.extend(f"  check {c.describe()}" for c in self.checks)
        lines.extend(f"  reason: {r}" for r in self.reasons)
        if self.root_cause is not None:
            lines.append(f"  root cause: {self.root_cause.summary()}")
            lines.extend(f"  example {e.request_id} (served by {e.served_by}): stable {e.stable_answer}, canary "
                         f"{e.canary_answer}, label {e.label or 'n/a'} {e.excerpt}".rstrip()
                         for e in self.root_cause.examples)  # fmt: skip
        return lines


# ---- the analysis ------------------------------------------------------------------------------------------------


class _Tally:
    """One version's answers in the window, counted."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.served = self.mirrored = self.errors = self.labelled = self.correct = 0
        self.latencies: list[float] = []
        self.classes: Counter[int] = Counter()

    def add(self, observation: Observation) -> None:
        answer = observation.answer_of(self.variant)
        if answer is None:
            return
        ok, latency_ms, predicted = answer
        if observation.variant == self.variant:
            self.served += 1
        else:
            self.mirrored += 1
        if not ok:
            self.errors += 1
            return
        if latency_ms is not None:
            self.latencies.append(latency_ms)
        if predicted is not None:
            self.classes[predicted] += 1
            if observation.label is not None:
                self.labelled += 1
                self.correct += predicted == observation.label

    @property
    def answers(self) -> int:
        return self.served + self.mirrored

    def p95(self) -> float | None:
        return float(np.percentile(self.latencies, LATENCY_QUANTILE)) if self.latencies else None

    def figures(self, name: _Namer) -> VariantFigures:
        total = sum(self.classes.values())
        return VariantFigures(
            self.variant, self.served, self.mirrored, self.errors,
            self.errors / self.answers if self.answers else None, self.p95(),
            {name(c): n / total for c, n in sorted(self.classes.items())},
            self.labelled, self.correct, self.correct / self.labelled if self.labelled else None,
        )  # fmt: skip


class _Namer:
    """Class index -> class name (the index itself when out of range)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)

    def __call__(self, index: int | None) -> str:
        if index is None:
            return "n/a"
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


def analyze(
    observations: Iterable[Observation],
    config: LiveCanaryConfig,
    *,
    phase: str,
    elapsed_s: float,
    class_names: Sequence[str],
    expected_disagreement: float = DEFAULT_EXPECTED_DISAGREEMENT,
    require_accuracy: bool = False,
) -> Analysis:
    """Judge one phase of the live canary on the window seen so far.

    Args:
        observations: Every live request of the phase so far, with the labels that have arrived joined in.
        config: The live canary's config (test sizes, thresholds, ``bake_s``, ``min_requests``).
        phase: The phase's name, for the record ("shadow", "5%", ...).
        elapsed_s: How long the phase has run; at ``bake_s`` or later, missing evidence is ``undecided``.
        class_names: Class index -> name, for distributions and the root cause.
        expected_disagreement: The agreement test's H0 (see the module's docstring).
        require_accuracy: Whether a pass also needs the live-accuracy test to accept (fast, plentiful labels).

    Returns:
        The figures of both versions, the tests, the checks and the decision (with a root cause unless passed
        or still running).
    """
    name = _Namer(class_names)
    window = list(observations)
    tallies = {variant: _Tally(variant) for variant in VARIANTS}
    pairs: list[tuple[Observation, int, int]] = []
    for observation in window:
        for tally in tallies.values():
            tally.add(observation)
        stable_class, canary_class = observation.class_of("stable"), observation.class_of("canary")
        if stable_class is not None and canary_class is not None:
            pairs.append((observation, stable_class, canary_class))
    stable, canary = tallies["stable"], tallies["canary"]
    paired = _paired_figures(pairs, name, config.label_wait_s)
    tests = (
        _agreement_test(paired, config, expected_disagreement),
        _accuracy_test(stable, canary, config),
        _error_test(stable, canary, config),
        _latency_test(stable, canary, config),
    )
    checks = _checks(stable, canary, paired, tests, config)
    decision, reasons = _decide(tests, checks, paired, config, elapsed_s, require_accuracy)
    root_cause = None
    if decision in ("fail", "undecided"):
        root_cause = _root_cause(window, pairs, name, checks)
    return Analysis(phase, elapsed_s, config.bake_s, decision, tuple(reasons), stable.figures(name),
                    canary.figures(name), paired, tests, checks, root_cause, expected_disagreement,
                    require_accuracy)  # fmt: skip


def corrects_stable(observation: Observation, stable_class: int, canary_class: int) -> bool:
    """The classes differ and the label that came back is the canary's: the canary corrected stable."""
    return stable_class != canary_class and observation.label is not None and observation.label == canary_class


def _paired_figures(pairs: list[tuple[Observation, int, int]], name: _Namer, label_wait_s: float = 0.0
                    ) -> PairedFigures:  # fmt: skip
    n = len(pairs)
    disagreements = sum(s != c for _, s, c in pairs)
    corrected = sum(corrects_stable(o, s, c) for o, s, c in pairs)
    waiting = [s != c and o.label is None and o.age_s is not None and o.age_s < label_wait_s for o, s, c in pairs]
    pending = sum(waiting)
    # The class-divergence guard judges resolved pairs only, with stable's answer as judged: where the label showed
    # the canary right, the canary's (a correction, not a shift).
    resolved = [(o, s, c) for (o, s, c), wait in zip(pairs, waiting, strict=True) if not wait]
    stable_counts = Counter(c if corrects_stable(o, s, c) else s for o, s, c in resolved)
    canary_counts = Counter(c for _, _, c in resolved)
    classes = sorted(set(stable_counts) | set(canary_counts))
    divergence = None
    if resolved:
        divergence = js_divergence([stable_counts[c] for c in classes], [canary_counts[c] for c in classes])
    shares = max(len(resolved), 1)
    return PairedFigures(
        n, disagreements, 1 - (disagreements - corrected) / n if n else None, divergence,
        {name(c): stable_counts[c] / shares for c in classes}, {name(c): canary_counts[c] / shares for c in classes},
        corrected, pending,
    )  # fmt: skip


def _agreement_test(paired: PairedFigures, config: LiveCanaryConfig, expected_disagreement: float) -> SequentialTest:
    design = agreement_design(config, expected_disagreement)
    hit = "mirrored requests where the canary disagrees with stable and no label shows the canary right"
    resolved = design.judge("agreement", hit, paired.uncorrected - paired.pending, paired.requests - paired.pending)
    if not paired.pending or resolved.outcome == "reject_h0":
        return resolved  # a failure stands on resolved pairs alone
    doubtful = design.judge("agreement", hit, paired.uncorrected, paired.requests,
                            note=f"{paired.pending} disagreement(s) waiting up to {config.label_wait_s:g} s for "
                                 "their labels, counted as hits")  # fmt: skip
    return doubtful if doubtful.outcome == "accept_h0" else replace(doubtful, outcome="continue")


def _accuracy_test(stable: _Tally, canary: _Tally, config: LiveCanaryConfig) -> SequentialTest:
    hit, wrong = "labelled canary answers that are wrong", canary.labelled - canary.correct
    alpha = alpha_per_test(config)
    if stable.labelled < config.min_requests:
        why = f"stable has {stable.labelled} labelled answers, {config.min_requests} needed to compare with"
        return _not_run("accuracy", hit, wrong, canary.labelled, alpha, why)
    # At its upper bound: a stable lucky on a few labels must not make a canary as good as it look worse.
    p0 = max(BASELINE_RATE_FLOOR, wilson_upper(stable.labelled - stable.correct, stable.labelled))
    p1 = p0 + config.min_detectable_drop
    if p1 >= 1:
        return _not_run(
            "accuracy", hit, wrong, canary.labelled, alpha, f"stable's wrong-answer rate {p0:.2f} is too high"
        )
    design = SprtDesign(p0, p1, alpha, config.miss_rate)
    note = f"H0: stable's wrong-answer rate, 95 % upper bound, on {stable.labelled} labelled answers"
    return design.judge("accuracy", hit, wrong, canary.labelled, note)


def _error_test(stable: _Tally, canary: _Tally, config: LiveCanaryConfig) -> SequentialTest:
    hit, alpha = "canary answers that failed", alpha_per_test(config)
    if not stable.answers:
        return _not_run("error_rate", hit, canary.errors, canary.answers, alpha, "stable answered nothing")
    p0 = baseline_rate(stable.errors, stable.answers)
    # With no increase allowed, a doubling of stable's rate is the smallest one the test can be sized for.
    p1 = p0 + config.max_error_rate_increase if config.max_error_rate_increase > 0 else 2 * p0
    if p1 >= 1:
        return _not_run("error_rate", hit, canary.errors, canary.answers, alpha, f"stable fails {p0:.0%}")
    design = SprtDesign(p0, p1, alpha, config.miss_rate, one_sided=True)
    return design.judge("error_rate", hit, canary.errors, canary.answers, f"H0: stable's rate on {stable.answers}")


def _latency_test(stable: _Tally, canary: _Tally, config: LiveCanaryConfig) -> SequentialTest:
    hit, alpha = "canary answers over the latency limit", alpha_per_test(config)
    stable_p95 = stable.p95()
    if stable_p95 is None or len(stable.latencies) < config.min_requests:
        why = f"stable has {len(stable.latencies)} timed answers, {config.min_requests} needed for its p95"
        return _not_run("latency", hit, 0, len(canary.latencies), alpha, why)
    limit_ms = config.max_p95_latency_ratio * stable_p95
    slow = sum(latency > limit_ms for latency in canary.latencies)
    note = f"limit {limit_ms:.1f} ms = {config.max_p95_latency_ratio}x stable's p95 {stable_p95:.1f} ms"
    return latency_design(config).judge("latency", hit, slow, len(canary.latencies), note)


def _checks(stable: _Tally, canary: _Tally, paired: PairedFigures, tests: Sequence[SequentialTest],
            config: LiveCanaryConfig) -> tuple[Check, ...]:  # fmt: skip
    """Every figure against its threshold."""
    agreement, accuracy, errors, latency = tests
    checks = [Check("paired_requests", paired.requests, ">=", config.min_requests,
                    paired.requests >= config.min_requests, "a pass needs this many")]  # fmt: skip

    sprt_verdict = {"accept_h0": True, "reject_h0": False}
    checks.append(Check("agreement", paired.agreement, ">=", 1 - (agreement.p1 or 0),
                        sprt_verdict.get(agreement.outcome), "H1 of the agreement test; its SPRT decides"))  # fmt: skip

    drop = None  # judged only once stable has enough labels to compare with: a few labels hold nothing up
    if accuracy.outcome != "not_run" and canary.labelled:
        drop = stable.correct / stable.labelled - canary.correct / canary.labelled
    checks.append(Check("accuracy_drop", drop, "<=", config.min_detectable_drop, sprt_verdict.get(accuracy.outcome),
                        "canary against stable, labelled answers; its SPRT decides"))  # fmt: skip

    increase = None
    if stable.answers and canary.answers:
        increase = canary.errors / canary.answers - stable.errors / stable.answers
    checks.append(_guard_check("error_rate_increase", increase, config.max_error_rate_increase, errors))

    ratio = None
    stable_p95, canary_p95 = stable.p95(), canary.p95()
    if stable_p95 and canary_p95 is not None:
        ratio = canary_p95 / stable_p95
    checks.append(_guard_check("p95_latency_ratio", ratio, config.max_p95_latency_ratio, latency))

    divergence, enough = paired.class_divergence, paired.requests - paired.pending >= config.min_requests
    passed = None if divergence is None or not enough else divergence <= config.max_class_divergence
    checks.append(Check("class_divergence", divergence, "<=", config.max_class_divergence, passed,
                        f"Jensen-Shannon on paired requests; judged from {config.min_requests}"))  # fmt: skip
    return tuple(checks)


def _guard_check(name: str, value: float | None, limit: float, test: SequentialTest) -> Check:
    """A guard rail: fails when its one-sided test rejects and the figure is over the limit; open while over."""
    if value is None:
        return Check(name, None, "<=", limit, None, "no data")
    if value <= limit:
        return Check(name, value, "<=", limit, True)
    if test.outcome == "reject_h0":
        return Check(name, value, "<=", limit, False, f"conclusive: {test.describe()}")
    return Check(name, value, "<=", limit, None, "over the limit, not yet conclusive")


def _decide(tests: Sequence[SequentialTest], checks: Sequence[Check], paired: PairedFigures,
            config: LiveCanaryConfig, elapsed_s: float, require_accuracy: bool) -> tuple[Decision, list[str]]:  # fmt: skip
    """Fail on any rejection or failed guard; pass on enough evidence; else wait, or give up at ``bake_s``."""
    agreement, accuracy, _, _ = tests
    by_name = {c.name: c for c in checks}
    failures = []
    if agreement.outcome == "reject_h0":
        failures.append(f"the canary disagrees with stable on {agreement.hits} of {agreement.trials} mirrored "
                        f"requests ({agreement.rate:.1%}): the sequential test rejects disagreement "
                        f"{agreement.p0:.1%} in favour of {agreement.p1:.1%}")  # fmt: skip
    if accuracy.outcome == "reject_h0":
        drop = by_name["accuracy_drop"].value
        failures.append(f"live accuracy drops {drop:.1%} against stable on {accuracy.trials} labelled canary "
                        f"answers: the sequential test finds a drop of {config.min_detectable_drop:.0%}")  # fmt: skip
    for check in checks:
        if check.passed is False and check.name in ("error_rate_increase", "p95_latency_ratio", "class_divergence"):
            failures.append(f"{check.name} {check.value:.4g} is over its limit {check.limit:.4g}")
    if failures:
        return "fail", failures

    missing = []
    if paired.requests < config.min_requests:
        missing.append(f"{paired.requests} of the {config.min_requests} mirrored requests a pass needs")
    if agreement.outcome != "accept_h0":
        missing.append(f"the agreement test is still open ({agreement.describe()})")
    if require_accuracy and accuracy.outcome != "accept_h0":
        missing.append(f"the accuracy test is still open ({accuracy.describe()})")
    # A failing test still open holds a pass while its evidence leans towards a failure: without this a canary
    # failing 5 % of requests could pass on a lucky streak the moment the agreement test accepts.
    missing.extend(f"the {t.name} test leans towards a failure ({t.describe()})" for t in tests[1:]
                   if t.outcome == "continue" and t.log_likelihood_ratio > 0)  # fmt: skip
    missing.extend(f"{c.name} {c.value:.4g} is over its limit {c.limit:.4g}, not yet conclusively"
                   for c in checks if c.passed is None and c.value is not None and c.value > c.limit
                   and c.comparison == "<=")  # fmt: skip
    if not missing:
        return "pass", []
    if elapsed_s >= config.bake_s:
        return "undecided", [f"no decision after {elapsed_s:.0f}s (limit {config.bake_s:.0f}s): " + "; ".join(missing)]
    return "continue", [f"waiting: {m}" for m in missing]


def _root_cause(window: list[Observation], pairs: list[tuple[Observation, int, int]], name: _Namer,
                checks: tuple[Check, ...]) -> RootCause:  # fmt: skip
    n = len(pairs)
    stable_counts = Counter(s for _, s, _ in pairs)
    canary_counts = Counter(c for _, _, c in pairs)
    shifts = [ClassShift(name(c), stable_counts[c] / n, canary_counts[c] / n)
              for c in sorted(set(stable_counts) | set(canary_counts))]  # fmt: skip
    movers = sorted((s for s in shifts if s.change), key=lambda s: (-abs(s.change), s.class_name))[:MAX_MOVERS]
    confused = Counter((s, c) for _, s, c in pairs if s != c)
    ranked = sorted(confused.items(), key=lambda item: (-item[1], item[0]))[:MAX_CONFUSIONS]
    confusions = tuple(Confusion(name(s), name(c), k, k / n) for (s, c), k in ranked)
    return RootCause(tuple(movers), confusions, _examples(window, pairs, [pair for pair, _ in ranked], name), checks)


def _examples(window: list[Observation], pairs: list[tuple[Observation, int, int]], ranked: list[tuple[int, int]],
              name: _Namer) -> tuple[Example, ...]:  # fmt: skip
    """Disagreements, one per top confusion in turn, then requests the canary failed; at most MAX_EXAMPLES."""
    by_confusion: dict[tuple[int, int], list[Observation]] = {pair: [] for pair in ranked}
    for observation, s, c in pairs:
        if (s, c) in by_confusion:
            by_confusion[(s, c)].append(observation)
    chosen: list[Observation] = []
    for depth in range(MAX_EXAMPLES):
        chosen.extend(group[depth] for group in by_confusion.values() if depth < len(group))
    failed = [o for o in window if (a := o.answer_of("canary")) is not None and not a[0]]
    chosen = (chosen + failed)[:MAX_EXAMPLES]
    return tuple(Example(o.request_id, o.variant, _answer_text(o, "stable", name), _answer_text(o, "canary", name),
                         None if o.label is None else name(o.label), o.excerpt) for o in chosen)  # fmt: skip


def _answer_text(observation: Observation, variant: Variant, name: _Namer) -> str:
    answer = observation.answer_of(variant)
    if answer is None:
        return "not captured"
    return name(answer[2]) if answer[0] else "error"
