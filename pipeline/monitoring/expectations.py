"""The live window through Great Expectations: a suite built from the reference, run on the window's features.

For each feature: ``expect_column_mean_to_be_between`` with the reference mean ± ``z`` standard errors of a
window this size (``z`` from ``alpha`` split over the features, two-sided: Bonferroni), and
``expect_column_values_to_be_between`` the reference's 0.1 %-99.9 % range, widened by half its span, for 99 % of
the rows (values no training example came near). The results are figures of the run and lines of its report;
the drift verdict is the divergence tests' (:mod:`.divergence`), which also weigh the size of a shift.

Great Expectations is imported when a suite runs (it takes seconds to load), in the same ephemeral context and
under the same process lock as the data validation's (:mod:`pipeline.data.validate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.config import MonitoringConfig

_RANGE_QUANTILES = (0.001, 0.999)
_RANGE_WIDEN = 0.5
_VALUES_MOSTLY = 0.99


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation on one feature: what it asked, what it saw, whether it held."""

    feature: str
    expectation: str
    low: float
    high: float
    observed: float | None
    success: bool


def mean_bounds(reference: Any, window_size: int, alpha: float, features: int) -> tuple[float, float]:
    """Reference mean ± z·sd/√n, z the two-sided Bonferroni quantile of ``alpha`` over ``features`` tests."""
    import numpy as np
    from scipy import stats

    values = np.asarray(reference, dtype=np.float64)
    z = float(stats.norm.isf(alpha / (2 * max(features, 1))))
    half = z * float(values.std(ddof=1)) / math.sqrt(max(window_size, 1))
    return float(values.mean()) - half, float(values.mean()) + half


def value_bounds(reference: Any) -> tuple[float, float]:
    import numpy as np

    low, high = (float(q) for q in np.quantile(np.asarray(reference, dtype=np.float64), _RANGE_QUANTILES))
    widen = (high - low) * _RANGE_WIDEN or 1.0
    return low - widen, high + widen


def build_suite(reference: Mapping[str, Any], window_size: int, config: MonitoringConfig) -> list[Any]:
    """The GX expectations of a window of ``window_size`` rows (see the module docstring)."""
    from pipeline.data.validate import quiet_gx_logging

    quiet_gx_logging()
    import great_expectations as gx

    quiet_gx_logging()
    expectations: list[Any] = []
    for feature, values in reference.items():
        low, high = mean_bounds(values, window_size, config.alpha, len(reference))
        expectations.append(gx.expectations.ExpectColumnMeanToBeBetween(column=feature, min_value=low,
                                                                        max_value=high))
        low, high = value_bounds(values)
        expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(column=feature, min_value=low,
                                                                          max_value=high, mostly=_VALUES_MOSTLY))
    return expectations


def run_suite(reference: Mapping[str, Any], window: Mapping[str, Any], config: MonitoringConfig
              ) -> list[ExpectationResult]:
    """Validate the window's features (one column each) against the suite built from ``reference``."""
    import pandas as pd

    from pipeline.data.validate import _GX_LOCK, _ephemeral_context  # one GX context at a time per process

    table = pd.DataFrame({name: window[name] for name in reference if name in window})
    if table.empty:
        return []
    import great_expectations as gx

    with _GX_LOCK:
        context = _ephemeral_context(None)
        batch = (context.data_sources.add_pandas("live").add_dataframe_asset("window")
                 .add_batch_definition_whole_dataframe("window").get_batch(batch_parameters={"dataframe": table}))
        suite = gx.ExpectationSuite(name="live_window", expectations=build_suite(reference, len(table), config))
        validation = batch.validate(suite)
    results = []
    for result in validation.results:
        kwargs = result.expectation_config.kwargs
        observed = result.result.get("observed_value")
        if observed is None and "unexpected_percent" in result.result:
            observed = float(result.result["unexpected_percent"]) / 100.0
        results.append(ExpectationResult(kwargs["column"], result.expectation_config.type,
                                         float(kwargs["min_value"]), float(kwargs["max_value"]),
                                         None if observed is None else float(observed), bool(result.success)))
    return results


def as_dicts(results: list[ExpectationResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
