import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.monitoring.shifts import SHIFTS, shift_share
from tests.monitoring.streams import real_digits


def test_a_share_of_real_digits_is_shifted_and_the_rest_left_alone() -> None:
    _, held_out = real_digits()
    inputs = held_out.x[:500].reshape(500, -1) / 255.0
    for name in SHIFTS:
        out, mask = shift_share(inputs, name, 0.2, seed=3)
        assert mask.sum() == 100 and out.shape == inputs.shape and out.dtype == inputs.dtype
        assert np.array_equal(out[~mask], inputs[~mask])
        assert (out[mask] != inputs[mask]).any(axis=1).mean() > 0.95, name  # nearly every shifted digit changed
        assert out.max() <= 1.0 and out.min() >= 0.0


def test_integer_pixels_stay_integers_and_the_input_is_not_changed() -> None:
    _, held_out = real_digits()
    images = held_out.x[:10].copy()
    out, _ = shift_share(images, "faint", 1.0, seed=0)
    assert out.dtype == np.uint8 and np.array_equal(images, held_out.x[:10])


def test_unknown_shifts_shares_and_non_digits_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown shift 'blur'.*thicken"):
        shift_share(np.zeros((2, 784)), "blur", 0.2)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        shift_share(np.zeros((2, 784)), "thicken", 1.5)
    with pytest.raises(ConfigError, match="28x28 digits"):
        shift_share(np.array(["an e-mail"] * 2, dtype=object), "thicken", 0.5)
