"""Blocking data validation of a snapshot's splits with Great Expectations 1.x.

Two tidy tables are validated, each as its own batch through its own checkpoint:

* ``examples``: one row per example (see :mod:`pipeline.data.tidy`): value ranges, known labels,
  no nulls, enough rows, and no example in two places (``example_sha`` unique);
* ``class_balance``: one row per (split, class): each class's fraction of its split within the
  configured bounds, and every split large enough. A table of its own so a failure names the
  split and class and the fraction found, rather than a ``mostly`` ratio.

Each checkpoint updates a local Data Docs site under ``docs_dir``; a ``validation.json`` report is
written beside it. On failure :class:`~pipeline.errors.ValidationFailed` lists every broken rule in
plain words with what was found. Only task code imports this module: great_expectations is heavy
(3 to 7 s to import on a busy 2-core machine) and is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import DataValidationConfig
from pipeline.data.dataset import SPLITS, Examples, Snapshot
from pipeline.errors import ValidationFailed

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.checkpoint.actions import ValidationAction

_DEFAULT_PIXEL_RANGE = (0, 255)
# Mean pixel over the whole set: MNIST-like digits are light ink on black (about 33). Images
# scaled to 0..1 (mean < 1) or inverted (mean > 200) fall outside.
_DEFAULT_MEAN_PIXEL_RANGE = (10.0, 100.0)
# Share of half-bright pixels per image: 0 is a blank image, a large share an inverted one
# (real MNIST: 0.03 to 0.35).
_DEFAULT_INK_FRACTION_RANGE = (0.01, 0.6)
_DEFAULT_MAX_NONPRINTABLE_FRACTION = 0.1  # control characters: binary junk or a bad decode
_DEFAULT_MIN_MEAN_ALPHA_FRACTION = 0.25  # below this the "text" is ids, numbers or base64
# Each split needs this share of min_rows (a config field min_split_rows would override).
_DEFAULT_MIN_SPLIT_SHARE = 0.05
_DEFAULT_RESULT_FORMAT = "SUMMARY"
_DEFAULT_REPORT_NAME = "validation.json"
_DEFAULT_DOCS_SUBDIR = "validation"
_DEFAULT_RUN_NAME = "data_validation"
_SITE_NAME = "local_site"
_MAX_VALUES_SHOWN = 5
_LOG = logging.getLogger(__name__)
_GX_LOCK = threading.Lock()


@dataclass
class FailedExpectation:
    """One broken rule: which expectation, on what, with which bounds, and what was found."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    observed: Any
    message: str


@dataclass
class ValidationReport:
    """The verdict of one validation, as written to ``validation.json``."""

    success: bool
    statistics: dict[str, Any]
    failures: list[FailedExpectation] = field(default_factory=list)
    docs_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["docs_path"] = str(self.docs_path) if self.docs_path else None
        return data

    def write(self, path: Path) -> Path:
        """Write the report as JSON to ``path`` and return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        return path

    def summary(self) -> str:
        """The failures, one plain line each."""
        return "\n".join(f"- {failure.message}" for failure in self.failures)


@dataclass(frozen=True)
class _Batch:
    """A table to validate and the rules it must meet."""

    name: str
    table: pd.DataFrame
    expectations: list[Any]
    index_columns: list[str]  # name a bad row in results: split and class, or split and hash


def validate_snapshot(
    snapshot: Snapshot, config: DataValidationConfig, docs_dir: Path | None = None
) -> ValidationReport:
    """Validate every split of a snapshot; docs and report go to ``<snapshot>/validation/``.

    Raises:
        ValidationFailed: A rule is broken; the report and docs are written first.
    """
    splits = {name: snapshot.split(name) for name in SPLITS if _has_split(snapshot, name)}
    docs_dir = Path(docs_dir or snapshot.path / _DEFAULT_DOCS_SUBDIR).resolve()  # GX wants absolute paths
    return validate_splits(splits, config, docs_dir, run_name=f"snapshot-{snapshot.sha256[:12]}")


def _has_split(snapshot: Snapshot, name: str) -> bool:
    return any((snapshot.path / f"{name}{suffix}").is_file() for suffix in (".npz", ".jsonl"))


def validate_splits(
    splits: Mapping[str, Examples],
    config: DataValidationConfig,
    docs_dir: Path | None = None,
    *,
    run_name: str = _DEFAULT_RUN_NAME,
) -> ValidationReport:
    """Validate examples split by name (``train``, ``val``, ``test``) against ``config``.

    Args:
        splits: The examples of each split, all of one kind and one set of classes.
        config: Bounds on rows and class balance (and text length).
        docs_dir: Where Data Docs and ``validation.json`` go; nothing is written when None.
        run_name: Names this run in Data Docs (e.g. the snapshot it checks).

    Returns:
        The report of a passing validation (``docs_path`` is the Data Docs index.html).

    Raises:
        ValidationFailed: A rule is broken; the report and docs are written first.
    """
    from pipeline.data.tidy import class_balance_table, example_table

    quiet_gx_logging()  # before great_expectations is imported: its import alone logs 214 lines at INFO
    kind, class_names = _kind_and_classes(splits)
    examples = example_table(splits)
    balance = class_balance_table(examples, class_names, list(splits))
    batches = [
        _Batch(
            "examples",
            examples,
            _example_expectations(kind, len(class_names), list(examples.columns), config),
            ["split", "example_sha"],
        ),
        _Batch("class_balance", balance, _balance_expectations(config), ["split", "label_name"]),
    ]
    report = _run_checkpoints(batches, docs_dir, run_name)
    report.statistics.update({"kind": kind, "rows": len(examples), "split_rows": _split_rows(examples)})
    if docs_dir is not None:
        report.write(Path(docs_dir) / _DEFAULT_REPORT_NAME)
    _raise_unless_passed(report)
    _LOG.info("data validation passed: %d rows in %s; Data Docs at %s", len(examples), list(splits), docs_dir)
    return report


def _raise_unless_passed(report: ValidationReport) -> None:
    if not report.success:
        raise ValidationFailed(
            f"data validation failed, {len(report.failures)} rule(s) broken; fix the data or the bounds "
            f"in data_validation and run again (Data Docs: {report.docs_path or 'not written'}):\n"
            + report.summary()
        )


def _kind_and_classes(splits: Mapping[str, Examples]) -> tuple[str, tuple[str, ...]]:
    if not splits:
        raise ValidationFailed("no splits to validate")
    first = next(iter(splits.values()))
    for name, examples in splits.items():
        if examples.kind != first.kind or tuple(examples.class_names) != tuple(first.class_names):
            raise ValidationFailed(f"split {name!r} differs in kind or classes from the others")
    return first.kind, tuple(first.class_names)


def _split_rows(examples: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in examples.groupby("split", sort=False).size().items()}


# --- the rules -------------------------------------------------------------------------------


def _example_expectations(
    kind: str, n_classes: int, columns: list[str], config: DataValidationConfig
) -> list[Any]:
    """Rules for the per-example table of one data kind with ``columns``."""
    gxe = _gx_expectations()
    common = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=config.min_rows, meta=_rule(f"at least {config.min_rows} rows in all")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(range(n_classes)), meta=_rule(f"labels must be 0..{n_classes - 1}")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="example_sha", meta=_rule("each example must appear once")),
    ]
    not_null = [
        gxe.ExpectColumnValuesToNotBeNull(column=column, meta=_rule("values must not be null or NaN"))
        for column in columns
    ]
    features = _image_expectations() if kind == "image" else _text_expectations(config)
    return common + not_null + features


def _image_expectations() -> list[Any]:
    gxe = _gx_expectations()
    low, high = _DEFAULT_PIXEL_RANGE
    mean_low, mean_high = _DEFAULT_MEAN_PIXEL_RANGE
    ink_low, ink_high = _DEFAULT_INK_FRACTION_RANGE
    return [
        _between("pixel_min", f"values must be between {low} and {high}", min_value=low, max_value=high),
        _between("pixel_max", f"values must be between {low} and {high}", min_value=low, max_value=high),
        gxe.ExpectColumnMeanToBeBetween(
            column="pixel_mean", min_value=mean_low, max_value=mean_high,
            meta=_rule(f"the mean pixel must be between {mean_low} and {mean_high}"),
        ),
        _between(
            "ink_fraction",
            f"share of bright pixels must be between {ink_low} and {ink_high} (blank or inverted images)",
            min_value=ink_low,
            max_value=ink_high,
        ),
    ]


def _text_expectations(config: DataValidationConfig) -> list[Any]:
    gxe = _gx_expectations()
    longest, max_junk = config.max_text_length, _DEFAULT_MAX_NONPRINTABLE_FRACTION
    min_alpha = _DEFAULT_MIN_MEAN_ALPHA_FRACTION
    return [
        _between("length", f"texts must have 1 to {longest} characters", min_value=1, max_value=longest),
        _between("whitespace_fraction", "texts must not be only whitespace", min_value=0, max_value=1, strict_max=True),
        _between("nonprintable_fraction", f"at most {max_junk:.0%} control characters per text", max_value=max_junk),
        gxe.ExpectColumnMeanToBeBetween(
            column="alpha_fraction", min_value=min_alpha,
            meta=_rule(f"on average at least {min_alpha:.0%} of characters must be letters"),
        ),
    ]


def _balance_expectations(config: DataValidationConfig) -> list[Any]:
    """Rules for the per-(split, class) table."""
    low, high = config.min_class_fraction, config.max_class_fraction
    min_split_rows = _min_split_rows(config)
    return [
        _between("fraction", f"each class must be {low:.0%} to {high:.0%} of its split", min_value=low, max_value=high),
        _between("split_rows", f"each split needs at least {min_split_rows} rows", min_value=min_split_rows),
    ]


def _between(column: str, rule: str, **bounds: Any) -> Any:
    """Every value of ``column`` within ``bounds`` (min_value, max_value, strict_max, ...)."""
    return _gx_expectations().ExpectColumnValuesToBeBetween(column=column, meta=_rule(rule), **bounds)


def _gx_expectations() -> Any:
    quiet_gx_logging()
    import great_expectations as gx

    return gx.expectations


def _min_split_rows(config: DataValidationConfig) -> int:
    explicit = getattr(config, "min_split_rows", None)  # not in DataValidationConfig yet
    return int(explicit) if explicit else max(1, round(config.min_rows * _DEFAULT_MIN_SPLIT_SHARE))


def _rule(text: str) -> dict[str, str]:
    """Expectation ``meta`` holding the rule in plain words, for failure messages."""
    return {"rule": text}


# --- running GX ------------------------------------------------------------------------------

# What great_expectations logs below WARNING is its own bookkeeping, not news about the data: importing it logs
# "Skipping registering function ..." once per public-API closure (214 lines), then "Multiple declarations of
# metric ..." and "Created temporary directory ...". Our verdict is logged by this module; GX's warnings stay.
_GX_LOGGER = "great_expectations"
_GX_LOG_LEVEL = logging.WARNING


def quiet_gx_logging() -> None:
    """Keep great_expectations' loggers at WARNING and above.

    Call it before GX is imported (most of the noise is logged while its modules load) and again after (one of
    its modules sets its own logger to INFO on import). Only GX's logger tree is touched; the root logger and
    ours are left alone.
    """
    names = [_GX_LOGGER, *(name for name in logging.Logger.manager.loggerDict if name.startswith(f"{_GX_LOGGER}."))]
    for name in names:
        gx_logger = logging.getLogger(name)
        if name == _GX_LOGGER or gx_logger.level != logging.NOTSET:  # the others inherit the top one's level
            gx_logger.setLevel(max(gx_logger.level, _GX_LOG_LEVEL))


def _run_checkpoints(batches: list[_Batch], docs_dir: Path | None, run_name: str) -> ValidationReport:
    """Validate each batch through its own checkpoint in one ephemeral GX context."""
    with _GX_LOCK:  # GX keeps process-wide state: two contexts built at once in threads break each other
        return _run_checkpoints_unlocked(batches, docs_dir, run_name)


def _run_checkpoints_unlocked(batches: list[_Batch], docs_dir: Path | None, run_name: str) -> ValidationReport:
    from great_expectations.core.run_identifier import RunIdentifier

    context = _ephemeral_context(docs_dir)
    run_id = RunIdentifier(run_name=run_name)
    failures: list[FailedExpectation] = []
    statistics: dict[str, Any] = {}
    for batch in batches:
        checkpoint = _checkpoint(context, batch, with_docs=docs_dir is not None)
        result = checkpoint.run(batch_parameters={"dataframe": batch.table}, run_id=run_id)
        for validation in result.run_results.values():
            statistics[batch.name] = dict(validation.statistics)
            failures += [_failure(r, batch.table) for r in validation.results if not r.success]
    docs_path = Path(docs_dir) / "index.html" if docs_dir is not None else None
    return ValidationReport(not failures, statistics, failures, docs_path)


def _ephemeral_context(docs_dir: Path | None) -> Any:
    """A GX context kept in memory, quiet, with one local Data Docs site at ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    quiet_gx_logging()  # data_context.types.base set its logger to INFO when it loaded
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(site)
    if docs_dir is not None:
        context.add_data_docs_site(_SITE_NAME, {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        })
    return context


def _checkpoint(context: Any, batch: _Batch, with_docs: bool) -> Any:
    """A checkpoint validating ``batch``'s table (passed at run time) against its rules."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    asset = context.data_sources.add_pandas(batch.name).add_dataframe_asset(batch.name)
    batch_definition = asset.add_batch_definition_whole_dataframe(batch.name)
    suite = context.suites.add(gx.ExpectationSuite(name=f"{batch.name}_suite", expectations=batch.expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{batch.name}_validation", data=batch_definition, suite=suite)
    )
    actions: list[ValidationAction] = (
        [UpdateDataDocsAction(name="update_data_docs", site_names=[_SITE_NAME])] if with_docs else [])
    return context.checkpoints.add(gx.Checkpoint(
        name=f"{batch.name}_checkpoint", validation_definitions=[definition], actions=actions,
        result_format={"result_format": _DEFAULT_RESULT_FORMAT, "unexpected_index_column_names": batch.index_columns},
    ))


# --- failures in plain words -----------------------------------------------------------------


def _failure(result: Any, table: pd.DataFrame) -> FailedExpectation:
    """A failed expectation's result as a :class:`FailedExpectation` with a plain message."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    rule = (config.meta or {}).get("rule") or config.type.replace("_", " ")
    if config.type == "expect_column_values_to_be_in_set" and column == "label":
        message = f"label: unknown label {_found(result.result)}"
    else:
        message = f"{column or 'rows'}: {rule}, found {_what_was_found(result, table)}"
    return FailedExpectation(config.type, column, kwargs, _observed(result.result), message)


def _what_was_found(result: Any, table: pd.DataFrame) -> str:
    """The evidence of one failure in a few words: bad values, counts, splits or classes."""
    kind, column = result.expectation_config.type, result.expectation_config.kwargs.get("column")
    found = result.result
    error = _exception_message(result.exception_info)
    if error:
        return f"an error instead of a verdict: {error}"
    if kind == "expect_column_values_to_be_unique" and column == "example_sha":
        return _shared_examples(table)
    if kind == "expect_column_values_to_not_be_null":
        count = found.get("unexpected_count", 0)
        return f"{count} null{'s' if count != 1 else ''}"
    if column == "fraction":
        return _unexpected_classes(found)
    if column == "split_rows":
        return _small_splits(found)
    return _found(found)


def _exception_message(info: Any) -> str | None:
    """The error GX caught while checking, if any (flat or keyed by metric, by GX version)."""
    if not isinstance(info, dict):
        return None
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    errors = [c.get("exception_message") or "unknown error" for c in candidates if c.get("raised_exception")]
    return "; ".join(errors) or None


def _observed(result: dict[str, Any]) -> Any:
    """The figure a failure is judged on: an aggregate's value or a count of bad rows."""
    if "observed_value" in result:
        return result["observed_value"]
    keys = ("unexpected_count", "unexpected_percent", "partial_unexpected_list", "partial_unexpected_index_list")
    return {k: result[k] for k in keys if k in result}


def _found(result: dict[str, Any]) -> str:
    """An aggregate's value, or the distinct bad values and how many rows had them."""
    if "observed_value" in result:
        return _short(result["observed_value"])
    count = result.get("unexpected_count", 0)
    values = list(dict.fromkeys(_short(v) for v in result.get("partial_unexpected_list", [])))
    shown = ", ".join(values[:_MAX_VALUES_SHOWN]) + (", ..." if len(values) > _MAX_VALUES_SHOWN else "")
    return f"{shown} ({count} row{'s' if count != 1 else ''})"


def _unexpected_classes(result: dict[str, Any]) -> str:
    rows = result.get("partial_unexpected_index_list") or []
    parts = [f"{r['split']}/{r['label_name']}={float(r['fraction']):.3f}" for r in rows if "fraction" in r]
    if not parts:
        parts = [_short(v) for v in result.get("partial_unexpected_list", [])]
    return ", ".join(parts[: 2 * _MAX_VALUES_SHOWN])


def _small_splits(result: dict[str, Any]) -> str:
    rows = result.get("partial_unexpected_index_list") or []
    splits = {r["split"]: r.get("split_rows") for r in rows}
    return ", ".join(f"{split}={_short(n)}" for split, n in splits.items()) or _found(result)


def _shared_examples(table: pd.DataFrame) -> str:
    """Say which splits share examples, e.g. ``3 examples shared between splits train/test``."""
    order = {split: i for i, split in enumerate(table["split"].unique())}  # train/test, not test/train
    repeated = table[table["example_sha"].duplicated(keep=False) & table["example_sha"].notna()]
    where = repeated.groupby("example_sha")["split"].agg(lambda s: "/".join(sorted(set(s), key=lambda split: order[split])))
    parts = []
    for splits, count in where.value_counts().sort_index().items():
        noun = "example" if count == 1 else "examples"
        if "/" in splits:
            parts.append(f"{count} {noun} shared between splits {splits}")
        else:
            parts.append(f"{count} {noun} repeated within split {splits}")
    return "; ".join(parts) or "repeated examples"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars, paths and anything else GX hands back."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
