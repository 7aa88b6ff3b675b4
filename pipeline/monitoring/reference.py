"""The reference a live window is judged against: the stable version's training snapshot, as features.

Which snapshot: the one the registry's lineage names for the version (``data_sha256``), else the one its export
metadata names; ``data/<model>/<sha>/``. From it: the features of up to ``reference_size`` training examples (a
seeded sample), e-mails' vocabulary and token shares; from the version's recorded metrics: its test accuracy and
the classes it predicted on the test split (the confusion matrix's columns), else the training labels' shares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import MonitoringConfig
from pipeline.errors import NotFound
from pipeline.monitoring.features import OTHER_TOKEN, features_of, token_counts, tokens_of
from pipeline.settings import Paths

if TYPE_CHECKING:
    import numpy as np

    from pipeline.data.dataset import Examples
    from pipeline.release.registry import VersionRecord

_SEED = 0


@dataclass(frozen=True)
class Reference:
    """What live windows of one stable version are compared with."""

    model: str
    version: int | None
    snapshot: str  # the snapshot's sha256
    kind: str  # image | text
    class_names: tuple[str, ...]
    features: dict[str, np.ndarray]
    prediction_shares: dict[str, float]  # class index (as text) -> share of the reference's predictions
    prediction_source: str
    expected_accuracy: float | None
    vocabulary: frozenset[str] = frozenset()
    token_shares: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(next(iter(self.features.values()))) if self.features else 0


def snapshot_dir(model: str, record: VersionRecord | None, paths: Paths) -> Path:
    """The snapshot directory the version was trained on.

    Raises:
        NotFound: the version records none, or it is no longer on disk.
    """
    sha = record.data_sha256 if record is not None else None
    if not sha and record is not None:
        sha = _metadata_sha(model, record.version, paths)
    if not sha:
        raise NotFound(f"{model}: the stable version records no training snapshot; nothing to compare live "
                       "traffic with")
    directory = paths.data_dir / model / sha
    if not (directory / "manifest.json").is_file():
        raise NotFound(f"{model}: the training snapshot {sha[:12]} is no longer under {paths.data_dir / model}; "
                       f"run `pipeline data {model}` for the same source to prepare it again")
    return directory


def _metadata_sha(model: str, version: int, paths: Paths) -> str | None:
    from pipeline.wire.version_dirs import read_metadata, version_dir

    try:
        return str(read_metadata(version_dir(paths.model_base_path(model), version))["data_snapshot_sha256"])
    except (NotFound, KeyError, ValueError):
        return None


def build_reference(model: str, record: VersionRecord | None, paths: Paths, config: MonitoringConfig
                    ) -> Reference:
    """The reference of ``record`` (production's stable version) from its snapshot and metrics."""
    from pipeline.data.dataset import Snapshot

    snapshot = Snapshot.open(snapshot_dir(model, record, paths))
    train = snapshot.split("train")
    if len(train) == 0:
        raise NotFound(f"{model}: the snapshot {snapshot.path} has no training examples")
    return reference_from_examples(model, None if record is None else record.version, snapshot.sha256, train,
                                   {} if record is None else record.metrics, config)


def reference_from_examples(model: str, version: int | None, sha: str, train: Examples,
                            metrics: Mapping[str, Any], config: MonitoringConfig) -> Reference:
    """The reference from training examples and the version's metrics (the tests build it from their own)."""
    import numpy as np

    sample = train.subset(np.sort(np.random.default_rng(_SEED).permutation(len(train))[:config.reference_size]))
    vocabulary: frozenset[str] = frozenset()
    token_shares: dict[str, float] = {}
    if train.kind == "text":
        counts: Counter[str] = Counter()
        for text in train.x:
            counts.update(tokens_of(str(text)))
        vocabulary = frozenset(token for token, _ in counts.most_common(config.vocabulary_size))
        top = [token for token, _ in counts.most_common(config.top_tokens)]
        shares = token_counts((str(t) for t in train.x), top)
        total = max(sum(shares.values()), 1)
        token_shares = {token: count / total for token, count in shares.items()}
        assert OTHER_TOKEN in token_shares
    features = features_of(train.kind, sample.x, vocabulary)
    predicted, source = _prediction_shares(metrics, train)
    accuracy = metrics.get("accuracy")
    return Reference(model, version, sha, train.kind, tuple(train.class_names), features, predicted, source,
                     float(accuracy) if isinstance(accuracy, (int, float)) else None, vocabulary, token_shares)


def _prediction_shares(metrics: Mapping[str, Any], train: Examples) -> tuple[dict[str, float], str]:
    """The shares of the classes the version predicted on its test split, else of the training labels."""
    import numpy as np

    classes = len(train.class_names)
    matrix = metrics.get("confusion_matrix")
    try:
        columns = np.asarray(matrix, dtype=np.float64).sum(axis=0) if matrix is not None else None
    except (TypeError, ValueError):
        columns = None
    if columns is not None and columns.shape == (classes,) and columns.sum() > 0:
        return {str(c): float(v / columns.sum()) for c, v in enumerate(columns)}, "the version's test predictions"
    labels = np.bincount(np.asarray(train.y, dtype=np.int64), minlength=classes)[:classes]
    return {str(c): float(v / labels.sum()) for c, v in enumerate(labels)}, "the training labels"
