import numpy as np
import pytest

from pipeline.config import MonitoringConfig
from pipeline.monitoring.divergence import accuracy_test, distribution_test, feature_tests, holm, js_divergence
from pipeline.monitoring.features import digit_features
from tests.monitoring.streams import real_digits, window

CONFIG = MonitoringConfig()
SEEDS = 60


@pytest.fixture(scope="module")
def reference_and_held_out():
    train, held_out = real_digits()
    return digit_features(train.x[:CONFIG.reference_size]), held_out


def _drifted(reference, held_out, seed: int, shift: str | None = None, share: float = 0.2) -> bool:
    inputs, _ = window(held_out, CONFIG.window_requests, seed, shift, share)
    return any(test.drifted for test in feature_tests(reference, digit_features(inputs), CONFIG))


def test_unshifted_windows_of_real_digits_raise_no_alarm_across_many_seeds(reference_and_held_out) -> None:
    reference, held_out = reference_and_held_out
    drifted = [_drifted(reference, held_out, seed) for seed in range(SEEDS)]
    sustained = [a and b for a, b in zip(drifted, drifted[1:], strict=False)]  # sustained_windows = 2
    assert not any(sustained), f"sustained false alarm at windows {np.flatnonzero(sustained).tolist()}"
    assert sum(drifted) <= 3, f"{sum(drifted)} of {SEEDS} clean windows drifted (alpha {CONFIG.alpha})"


@pytest.mark.parametrize("shift", ["thicken", "translate"])
def test_a_twenty_percent_share_of_shifted_digits_drifts_every_window(reference_and_held_out, shift) -> None:
    reference, held_out = reference_and_held_out
    missed = [seed for seed in range(20) if not _drifted(reference, held_out, seed, shift, 0.2)]
    assert not missed, f"{shift} at 20 % missed in windows {missed}"


def test_a_shift_too_small_to_matter_is_not_called_drift(reference_and_held_out) -> None:
    reference, held_out = reference_and_held_out
    assert sum(_drifted(reference, held_out, seed, "thicken", 0.02) for seed in range(10)) == 0


def test_holm_adjusts_in_rank_order_and_stays_monotone() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_predicted_classes_are_judged_by_significance_and_size() -> None:
    reference = {str(c): 0.1 for c in range(10)}
    even = {str(c): 30 for c in range(10)}
    assert not distribution_test("predicted classes", even, reference, 0.05, 0.01).drifted
    skewed = {**even, "8": 150}  # a new scanner's thick 1s read as 8s
    test = distribution_test("predicted classes", skewed, reference, 0.05, 0.01)
    assert test.drifted and test.p_value < 1e-6 and test.js >= 0.05
    assert js_divergence([1, 0], [1, 0]) == 0 and js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_live_accuracy_drops_only_when_significant_and_past_the_threshold() -> None:
    assert accuracy_test(170, 200, 0.98, CONFIG).dropped  # 0.85: 13 points down over 200 labels
    assert not accuracy_test(190, 200, 0.98, CONFIG).dropped  # 0.95: down 3 points, under max_accuracy_drop
    assert not accuracy_test(8, 10, 0.98, CONFIG).dropped  # too few labels to judge
    assert accuracy_test(8, 10, 0.98, CONFIG).accuracy == 0.8
    assert accuracy_test(0, 0, 0.98, CONFIG).accuracy is None
