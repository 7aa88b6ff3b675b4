"""New labelled data as data: files a user drops in and live requests whose labels came back, ingested as parts of
a new content-addressed data version (layout: :mod:`pipeline.data.parts`), announced on ``<model>_raw_data``.

Each ingest, under the model's landing lock:

1. reads the input (a file is copied first, and refused if it changed while read or does not end cleanly: a
   half-written file never counts), decodes it with the same loaders as the ``npz`` / ``csv`` / ``jsonl`` sources;
2. validates it with the same Great Expectations rules as a snapshot (labels in the class set, pixel ranges, text
   sanity), with the row-count and class-balance bounds left to the whole snapshot's validation in the release;
   a broken rule refuses the whole input, with the reason;
3. drops the examples already there (the prepared source and every committed part, by example digest); a file
   already ingested, or holding nothing new, is refused as a duplicate;
4. writes the new examples as a part and commits it (atomically: nothing half-ingested is ever visible);
5. announces the new data version with an event on ``<model>_raw_data`` (counts in its ``extra``) once at least
   ``data.retrain_min_new_examples`` ingested examples are not in any announced version yet. Without an Airflow to
   post to, the data is kept and the reason says so: the next release (scheduled or by hand) trains on it.

Refusals of a file raise :class:`IngestRefused`; :func:`ingest_live_labels` never raises for bad data (it is
called by monitors): its result says ``refused`` and why.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig, DataValidationConfig, ModelConfig, load_model_config
from pipeline.data.dataset import Examples, Kind
from pipeline.data.live_examples import LabelledRequest, decode_requests
from pipeline.data.parts import (
    Part,
    commit_parts,
    committed_parts,
    landing_dir,
    landing_lock,
    record_announced,
    remove_leftovers,
    unannounced_examples,
    write_part,
    write_version_manifest,
)
from pipeline.data.prepare import base_data, find_prepared, source_key
from pipeline.data.snapshot import drop_duplicates, example_digests
from pipeline.data.sources import load_examples
from pipeline.errors import PipelineError, ValidationFailed
from pipeline.settings import Paths, get_paths

log = logging.getLogger(__name__)

FILE_FORMATS: dict[Kind, tuple[str, ...]] = {"image": ("npz",), "text": ("csv", "jsonl")}
# Names of files still being written by common tools: refused, never read.
_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart")
_INGESTED_SPLIT = "ingested"


class IngestRefused(PipelineError):
    """An input was refused whole (bad schema, a broken data rule, a duplicate, a half-written file)."""


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did.

    Attributes:
        model: the model.
        origin: ``file:<name>`` or ``live``.
        new_examples: examples this ingest added (0 when refused or nothing new).
        announced: whether an event was posted on ``<model>_raw_data`` now.
        data_version: the newest data version after this ingest (None before any part exists).
        reason: why it announced or not, or why it was refused, in one line.
        refused: the input was refused whole (nothing was added).
        part: the part written (sha256), if any.
        duplicates: input examples already there (or repeated in the input).
        skipped: live requests that could not be examples, by reason.
        parts: committed parts now.
        ingested_total: examples in all committed parts.
        total_examples: the prepared source's examples plus ``ingested_total`` (None when the source was never
            prepared in this home).
        pending_examples: ingested examples no announced data version holds yet.
        threshold: ``data.retrain_min_new_examples``.
        event: Airflow's answer to the posted event, when announced.
    """

    model: str
    origin: str
    new_examples: int
    announced: bool
    data_version: str | None
    reason: str
    refused: bool = False
    part: str | None = None
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    parts: int = 0
    ingested_total: int = 0
    total_examples: int | None = None
    pending_examples: int = 0
    threshold: int = 0
    event: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One paragraph for people."""
        if self.refused:
            return f"{self.model}: {self.origin} refused: {self.reason}"
        version = self.data_version[:12] if self.data_version else "none"
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return (f"{self.model}: {self.origin}: {self.new_examples} new example(s), {self.duplicates} already there"
                + (f", skipped {skipped}" if skipped else "")
                + f"; data version {version} ({self.parts} part(s), {self.ingested_total} ingested example(s)); "
                + ("announced" if self.announced else "not announced") + f": {self.reason}")


# ---- entry points ---------------------------------------------------------------------------------------------


def ingest_file(model: str, path: str | Path, *, paths: Paths | None = None, config: ModelConfig | None = None,
                file_format: str | None = None) -> IngestResult:
    """Ingest a user's ``.npz`` (images) or ``.csv`` / ``.jsonl`` (texts) file (``pipeline ingest <model> PATH``).

    Raises:
        IngestRefused: the file was refused whole; the message says why.
    """
    paths = paths or get_paths()
    config = config or load_model_config(model)
    source = Path(path).expanduser()
    fmt = _file_format(source, file_format, config)
    with landing_lock(paths.data_dir, model):
        remove_leftovers(paths.data_dir, model)
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-in-", dir=landing_dir(paths.data_dir, model)))
        try:
            copy, file_sha = _stable_copy(source, scratch / f"input.{fmt}")
            parts = committed_parts(paths.data_dir, model)
            earlier = [p for p in parts if p.meta.get("file_sha256") == file_sha]
            if earlier:
                raise IngestRefused(f"{source}: duplicate file, already ingested as part {earlier[0].sha256[:12]} "
                                    f"on {earlier[0].meta.get('created_at')}")
            examples = _load_file(config, fmt, copy, source)
            origin = {"kind": "file", "name": source.name, "format": fmt}
            result = _ingest(config, paths, parts, examples, origin=f"file:{source.name}",
                             meta={"origin": origin, "file_sha256": file_sha}, input_name=str(source))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if result.refused:
        raise IngestRefused(result.reason)
    return result


def ingest_live_labels(model: str, *, paths: Paths | None = None, config: ModelConfig | None = None
                       ) -> IngestResult:
    """Ingest the captured live requests whose labels came back and that no part holds yet.

    Never raises for bad data (a monitor calls it): the result says ``refused`` and why. Requests that cannot be
    examples are skipped and counted (:mod:`pipeline.data.live_examples`); each request is considered once.
    """
    from pipeline.live.store import CaptureStore, capture_db_path

    paths = paths or get_paths()
    config = config or load_model_config(model)
    db = capture_db_path(model, paths)
    with landing_lock(paths.data_dir, model):
        remove_leftovers(paths.data_dir, model)
        parts = committed_parts(paths.data_dir, model)
        if not db.is_file():
            return _nothing(config, paths, parts, "live", f"no capture store at {db}: no live labels yet")
        consumed = {rid for part in parts for rid in part.meta.get("request_ids", [])}
        with CaptureStore(db) as store:
            rows = [row for row in store.captured() if row.label is not None and row.request_id not in consumed]
            requests = [LabelledRequest(row.request_id, store.inputs_of(row.request_id) if row.inputs_kept else None,
                                        int(row.label or 0), row.batch_size)
                        for row in reversed(rows)]  # oldest first (every row here has a label)
        decoded = decode_requests(requests, _kind(config), _class_names(config))
        if not len(decoded.examples):
            why = "no new labelled live requests" if not requests else "no labelled request could be an example"
            return _nothing(config, paths, parts, "live", why, skipped=dict(decoded.skipped))
        meta = {"origin": {"kind": "live", "requests": len(requests)},
                "request_ids": [r.request_id for r in requests], "skipped": dict(decoded.skipped)}
        return _ingest(config, paths, parts, decoded.examples, origin="live", meta=meta, input_name="live labels",
                       skipped=dict(decoded.skipped))


# ---- one ingest -------------------------------------------------------------------------------------------------


def _ingest(config: ModelConfig, paths: Paths, parts: list[Part], examples: Examples, *, origin: str,
            meta: dict[str, Any], input_name: str, skipped: dict[str, int] | None = None) -> IngestResult:
    """Validate, dedupe, write and commit ``examples`` as a new part, then announce (under the landing lock)."""
    model = config.name
    try:
        _check_kind(config, examples, input_name)
        examples, repeated = drop_duplicates(examples)
        validate_part(examples, config)
    except (IngestRefused, ValidationFailed) as exc:
        return _refused(config, paths, parts, origin, str(exc), skipped)
    there = _digests_there(config, paths, parts)
    keep = np.array([i for i, d in enumerate(example_digests(examples)) if d not in there], dtype=np.int64)
    duplicates = repeated + len(examples) - len(keep)
    if not len(keep):
        why = f"{input_name}: nothing new, all {len(examples) + repeated} example(s) are already there"
        if origin.startswith("file:"):
            return _refused(config, paths, parts, origin, f"duplicate data: {why}", skipped, duplicates=duplicates)
        return _nothing(config, paths, parts, origin, why, skipped=skipped or {}, duplicates=duplicates)
    new = examples.subset(keep)
    if new.kind == "image":
        new = Examples(new.kind, new.x.astype(np.uint8), new.y, new.class_names, new.source)  # validated 0..255
    part = write_part(paths.data_dir, model, new, {**meta, "duplicates": duplicates})
    committed = [*parts, part]
    commit_parts(paths.data_dir, model, committed)
    log.info("%s: ingested %d new example(s) from %s as part %s", model, len(new), input_name, part.sha256[:12])
    return _finish(config, paths, committed, origin, len(new), part=part.sha256, duplicates=duplicates,
                   skipped=skipped or {})


def validate_part(examples: Examples, config: ModelConfig) -> None:
    """The snapshot's Great Expectations rules on an ingested part: labels, pixels, texts; raises ValidationFailed.

    Row counts and class balance are judged on the whole snapshot by the release's validate_data (a part may be
    small, or all of one class).
    """
    from pipeline.data.validate import validate_splits

    bounds = DataValidationConfig(min_rows=1, min_class_fraction=0.0, max_class_fraction=1.0,
                                  max_text_length=config.data_validation.max_text_length)
    validate_splits({_INGESTED_SPLIT: examples}, bounds, run_name=f"ingest-{config.name}")


def _digests_there(config: ModelConfig, paths: Paths, parts: list[Part]) -> set[str]:
    """Digests of every example already there: the prepared source (when prepared here) and the committed parts."""
    there: set[str] = set()
    base = find_prepared(config, paths)
    if base is not None:
        for name in ("train", "val", "test"):
            there.update(example_digests(base.split(name)))
    for part in parts:
        there.update(example_digests(part.examples()))
    return there


# ---- results and the announcement -----------------------------------------------------------------------------


def _finish(config: ModelConfig, paths: Paths, parts: list[Part], origin: str, new_examples: int, *,
            part: str | None = None, duplicates: int = 0, skipped: dict[str, int] | None = None) -> IngestResult:
    """The data version after this ingest, announced when enough ingested examples wait."""
    model = config.name
    version = None
    if parts:
        version = write_version_manifest(paths.data_dir, model, source_key(config), base_data(config),
                                         parts)["data_version"]
    pending = unannounced_examples(paths.data_dir, model, parts)
    threshold = config.data.retrain_min_new_examples
    ingested = sum(p.examples_count for p in parts)
    base = find_prepared(config, paths)
    total = None if base is None else sum(int(c["total"]) for c in base.manifest["counts"].values()) + ingested
    counts = {"model": model, "data_version": version, "new_examples": pending, "ingested_now": new_examples,
              "ingested_total": ingested, "total_examples": total, "parts": len(parts), "origin": origin}
    announced, reason, event = _announce(config, paths, parts, version, pending, threshold, counts)
    return IngestResult(model, origin, new_examples, announced, version, reason, part=part, duplicates=duplicates,
                        skipped=dict(skipped or {}), parts=len(parts), ingested_total=ingested, total_examples=total,
                        pending_examples=0 if announced else pending, threshold=threshold, event=event)


def _announce(config: ModelConfig, paths: Paths, parts: list[Part], version: str | None, pending: int,
              threshold: int, extra: dict[str, Any]) -> tuple[bool, str, dict[str, Any] | None]:
    from pipeline.airflow_rest import URL_ENV, api_access, post_asset_event
    from pipeline.assets import raw_data_asset_name, raw_data_asset_uri

    model = config.name
    if version is None or pending == 0:
        return False, "no ingested example waits to be announced", None
    if pending < threshold:
        return False, (f"{pending} ingested example(s) since the last announced data version, "
                       f"{threshold} needed (data.retrain_min_new_examples)"), None
    if api_access(paths) is None:
        return False, (f"Airflow is not configured (set ${URL_ENV} or start the stack): data version {version[:12]} "
                       f"is kept, and the next run of {model}_release trains on it"), None
    event = post_asset_event(raw_data_asset_name(model), raw_data_asset_uri(model), extra, paths)
    if event is None:
        return False, (f"Airflow did not take the event of {raw_data_asset_name(model)} (see the warning above): "
                       f"data version {version[:12]} is kept and announced with the next ingest"), None
    record_announced(paths.data_dir, model, version, parts, event)
    log.info("%s: announced data version %s on %s", model, version[:12], raw_data_asset_name(model))
    return True, (f"{pending} new example(s) >= {threshold}: data version {version[:12]} announced on "
                  f"{raw_data_asset_name(model)}"), event


def _nothing(config: ModelConfig, paths: Paths, parts: list[Part], origin: str, why: str, *,
             skipped: dict[str, int] | None = None, duplicates: int = 0) -> IngestResult:
    """Nothing added; a version waiting to be announced still is, when the threshold allows."""
    result = _finish(config, paths, parts, origin, 0, duplicates=duplicates, skipped=skipped)
    reason = why if not result.announced else f"{why}; {result.reason}"
    return IngestResult(**{**result.as_dict(), "reason": reason})


def _refused(config: ModelConfig, paths: Paths, parts: list[Part], origin: str, why: str,
             skipped: dict[str, int] | None = None, duplicates: int = 0) -> IngestResult:
    ingested = sum(p.examples_count for p in parts)
    version = (write_version_manifest(paths.data_dir, config.name, source_key(config), base_data(config),
                                      parts)["data_version"] if parts else None)
    log.warning("%s: %s refused: %s", config.name, origin, why)
    return IngestResult(config.name, origin, 0, False, version, why, refused=True, duplicates=duplicates,
                        skipped=dict(skipped or {}), parts=len(parts), ingested_total=ingested,
                        threshold=config.data.retrain_min_new_examples)


# ---- reading a file -------------------------------------------------------------------------------------------


def _kind(config: ModelConfig) -> Kind:
    return "image" if config.task == "image_classification" else "text"


def _class_names(config: ModelConfig) -> tuple[str, ...]:
    if config.class_names:
        return tuple(config.class_names)
    return tuple(str(d) for d in range(10)) if _kind(config) == "image" else ("ham", "spam")


def _file_format(path: Path, given: str | None, config: ModelConfig) -> str:
    allowed = FILE_FORMATS[_kind(config)]
    if path.name.startswith(".") or path.name.lower().endswith(_PARTIAL_SUFFIXES):
        raise IngestRefused(f"{path}: the name says it is still being written (hidden or {_PARTIAL_SUFFIXES}); "
                            "ingest the finished file")
    fmt = (given or path.suffix.lstrip(".")).lower()
    if fmt not in allowed:
        raise IngestRefused(f"{path}: {config.name} takes {' or '.join('.' + f for f in allowed)} files "
                            f"({_kind(config)} examples), not {fmt or 'a file without a suffix'!r}")
    return fmt


def _stable_copy(source: Path, target: Path) -> tuple[Path, str]:
    """Copy ``source`` to ``target``; refused if it is missing or changed while it was read (still being written)."""
    try:
        before = source.stat()
        data = source.read_bytes()
        after = source.stat()
    except OSError as exc:
        raise IngestRefused(f"{source}: cannot be read ({exc.strerror or exc})") from None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise IngestRefused(f"{source}: the file changed while it was read (still being written?); "
                            "ingest it once it is complete")
    if not data:
        raise IngestRefused(f"{source}: the file is empty")
    target.write_bytes(data)
    return target, hashlib.sha256(data).hexdigest()


def _load_file(config: ModelConfig, fmt: str, copy: Path, source: Path) -> Examples:
    """The file's examples through the source loaders; a file they cannot read is refused, naming ``source``."""
    data = copy.read_bytes()
    if fmt in ("csv", "jsonl") and not data.endswith(b"\n"):
        raise IngestRefused(f"{source}: the last line does not end with a newline: a half-written file? "
                            "(a complete file ends its last line)")
    if fmt == "npz" and not zipfile.is_zipfile(copy):
        raise IngestRefused(f"{source}: not a complete .npz (zip) file: a half-written file?")
    spec = DataConfig(source=fmt, path=str(copy))
    try:
        examples = load_examples(spec, _class_names(config), copy.parent)
    except (PipelineError, ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise IngestRefused(str(exc).replace(str(copy), str(source))) from None
    if examples.kind == "text" and not len(examples):
        raise IngestRefused(f"{source}: no examples in the file")
    return examples


def _check_kind(config: ModelConfig, examples: Examples, input_name: str) -> None:
    if examples.kind != _kind(config):
        raise IngestRefused(f"{input_name}: {examples.kind} examples, but {config.name} takes {_kind(config)} ones")
    if not len(examples):
        raise IngestRefused(f"{input_name}: no examples")
    if examples.kind == "image" and examples.x.ndim != 3:
        raise IngestRefused(f"{input_name}: images must be (n, 28, 28)")
    if examples.kind == "image" and examples.x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            fractional = int((np.isfinite(examples.x) & (examples.x != np.round(examples.x))).any(axis=(1, 2)).sum())
        if fractional:
            raise IngestRefused(f"{input_name}: pixels must be whole grey levels 0..255; {fractional} image(s) hold "
                                "fractions (scaled to 0..1? multiply by 255 first)")
