"""The tests of one live window against the reference.

Each test needs both significance and size before it calls a window drifted, so that a big window does not flag
a shift too small to matter, and a small one does not flag noise:

- each input feature: a two-sample Kolmogorov-Smirnov test against the reference sample; the p-values of the
  model's features are corrected together (Holm, family-wise error ``alpha``), and a feature drifts when its
  corrected p-value is under ``alpha`` and its KS statistic at least ``min_ks_statistic``;
- e-mails' token distribution (top tokens + the rest): chi-square against the reference frequencies, and
  Jensen-Shannon divergence (base 2) at least ``max_token_js``;
- predicted classes: chi-square goodness of fit against the reference predictions (the stable version's
  predictions on its test split), and Jensen-Shannon divergence at least ``max_prediction_js``;
- live accuracy of the labelled requests: one-sided binomial test against the version's recorded test accuracy
  (p under ``alpha``), and a drop of at least ``max_accuracy_drop``.

numpy and scipy only (imported when called); no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import MonitoringConfig


@dataclass(frozen=True)
class FeatureTest:
    """One feature's KS test: statistic, raw and Holm-corrected p-value, both means, and the verdict."""

    name: str
    statistic: float
    p_value: float
    p_corrected: float
    reference_mean: float
    window_mean: float
    drifted: bool


@dataclass(frozen=True)
class DistributionTest:
    """A categorical distribution (predicted classes, tokens) against the reference's."""

    name: str
    js: float
    p_value: float
    count: int
    drifted: bool
    window: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AccuracyTest:
    """Live accuracy of the labelled requests against the version's recorded test accuracy."""

    labelled: int
    accuracy: float | None
    expected: float | None
    p_value: float | None
    dropped: bool


@dataclass(frozen=True)
class WindowVerdict:
    """Every test of one window; ``drifted`` when any input or prediction test drifted."""

    requests: int
    judged: bool  # False: fewer requests than the config's min_requests; nothing was tested
    features: tuple[FeatureTest, ...] = ()
    distributions: tuple[DistributionTest, ...] = ()
    accuracy: AccuracyTest | None = None

    @property
    def drifted(self) -> bool:
        return self.judged and (any(f.drifted for f in self.features) or any(d.drifted for d in self.distributions))

    @property
    def accuracy_dropped(self) -> bool:
        return self.accuracy is not None and self.accuracy.dropped

    def reasons(self) -> list[str]:
        """One phrase per failed test."""
        reasons = [f"{f.name} drifted (KS {f.statistic:.3f}, p {f.p_corrected:.2g}; mean {f.reference_mean:.3g} "
                   f"-> {f.window_mean:.3g})" for f in self.features if f.drifted]
        reasons += [f"{d.name} drifted (JS {d.js:.3f}, p {d.p_value:.2g})" for d in self.distributions if d.drifted]
        if self.accuracy is not None and self.accuracy.dropped:
            reasons.append(f"live accuracy {self.accuracy.accuracy:.3f} over {self.accuracy.labelled} labels, "
                           f"expected {self.accuracy.expected:.3f} (p {self.accuracy.p_value:.2g})")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "judged": self.judged, "drifted": self.drifted,
                "accuracy_dropped": self.accuracy_dropped, "features": [asdict(f) for f in self.features],
                "distributions": [asdict(d) for d in self.distributions],
                "accuracy": None if self.accuracy is None else asdict(self.accuracy)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given), monotone and capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def feature_tests(reference: Mapping[str, Any], window: Mapping[str, Any], config: MonitoringConfig
                  ) -> tuple[FeatureTest, ...]:
    """KS per feature, Holm-corrected over the features (see the module docstring)."""
    import numpy as np
    from scipy import stats

    names = [name for name in reference if len(window.get(name, ())) > 0]
    raw = [stats.ks_2samp(np.asarray(reference[n], dtype=np.float64), np.asarray(window[n], dtype=np.float64))
           for n in names]
    corrected = holm([float(r.pvalue) for r in raw])
    return tuple(FeatureTest(name, float(r.statistic), float(r.pvalue), p,
                             float(np.mean(reference[name])), float(np.mean(window[name])),
                             p < config.alpha and float(r.statistic) >= config.min_ks_statistic)
                 for name, r, p in zip(names, raw, corrected, strict=True))


def js_divergence(p: Any, q: Any) -> float:
    """Jensen-Shannon divergence (base 2, 0..1) of two distributions over the same categories."""
    import numpy as np

    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    a, b = a / max(a.sum(), 1e-300), b / max(b.sum(), 1e-300)
    mixture = (a + b) / 2

    def kl(x: Any) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / mixture[mask])))

    return max(0.0, (kl(a) + kl(b)) / 2)


def distribution_test(name: str, counts: Mapping[str, int], reference: Mapping[str, float], max_js: float,
                      alpha: float) -> DistributionTest:
    """Window counts over categories against the reference shares: chi-square p-value and JS (module docstring).

    Reference shares are floored (a category the reference never saw must not make any sighting infinitely
    unlikely) and renormalised.
    """
    import numpy as np
    from scipy import stats

    categories = list(reference)
    observed = np.asarray([counts.get(c, 0) for c in categories], dtype=np.float64)
    total = float(observed.sum())
    shares = np.maximum(np.asarray([reference[c] for c in categories], dtype=np.float64), 1e-4)
    shares /= shares.sum()
    if total == 0:
        return DistributionTest(name, 0.0, 1.0, 0, False)
    p_value = float(stats.chisquare(observed, shares * total).pvalue)
    js = js_divergence(observed, shares)
    window = {c: round(float(o) / total, 6) for c, o in zip(categories, observed, strict=True)}
    return DistributionTest(name, js, p_value, int(total), p_value < alpha and js >= max_js, window,
                            {c: round(float(s), 6) for c, s in zip(categories, shares, strict=True)})


def accuracy_test(correct: int, labelled: int, expected: float | None, config: MonitoringConfig) -> AccuracyTest:
    """Live accuracy against ``expected``: a drop when significant (binomial, one-sided) and past the threshold."""
    if labelled == 0:
        return AccuracyTest(0, None, expected, None, False)
    accuracy = correct / labelled
    if expected is None or labelled < config.min_labels:
        return AccuracyTest(labelled, accuracy, expected, None, False)
    from scipy import stats

    p_value = float(stats.binomtest(correct, labelled, min(max(expected, 1e-9), 1.0), alternative="less").pvalue)
    dropped = p_value < config.alpha and expected - accuracy >= config.max_accuracy_drop
    return AccuracyTest(labelled, accuracy, expected, p_value, dropped)


def judge_window(reference_features: Mapping[str, Any], window_features: Mapping[str, Any],
                 distributions: Sequence[DistributionTest], accuracy: AccuracyTest | None, requests: int,
                 config: MonitoringConfig) -> WindowVerdict:
    """All tests of one window; a window under ``min_requests`` is not judged (no verdict either way)."""
    if requests < config.min_requests:
        return WindowVerdict(requests, False, accuracy=accuracy)
    return WindowVerdict(requests, True, feature_tests(reference_features, window_features, config),
                         tuple(distributions), accuracy)


def finite(value: float) -> float | None:
    """JSON-safe float (None for NaN/inf)."""
    return value if math.isfinite(value) else None
